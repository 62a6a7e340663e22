"""Stand-in TF Serving base images, for tests, benchmarks and machines without the real image
(production builds FROM the TF Serving GPU image: ``MODELYARD_SERVING_BASE_IMAGE``). Django-free.

* ``ensure_standin_base_image``: a busybox image with TF Serving's entrypoint path, ENV and ports,
  whose entrypoint only prints the command it would run: enough to build and inspect release
  images (``releases/deploy/image_build.py``).
* ``ensure_harness_base_image``: that image plus an entrypoint with TF Serving's command line that
  execs *this host's* Python with our ``serving`` module instead of tensorflow_model_server. Python,
  its libraries and the code are not in the image: each container bind-mounts them read-only
  (``harness_mounts()``, given as the endpoint profile's ``mounts``). Release images built FROM it
  really load and serve their model over the TF Serving protocol, with host networking.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import docker

from releases.deploy.docker_engine import ENGINE_ERRORS, api_of, engine_error
from releases.deploy.image_context import ImageBuildError, tar_member

STANDIN_ENTRYPOINT = "/usr/bin/tf_serving_entrypoint.sh"
REPO_ROOT = Path(__file__).resolve().parents[2]
HARNESS_SERVING_DIR = "/opt/modelyard-harness"
HARNESS_ENTRYPOINT = """#!/bin/sh
# Modelyard's serving harness, standing in for tensorflow/serving's tf_serving_entrypoint.sh: same
# command line, but `python -m serving` (the host's Python and virtualenv, bind-mounted read-only)
# instead of tensorflow_model_server. Extra args (the image's CMD, then the ports) are appended.
exec "$MODELYARD_HARNESS_PYTHON" -m serving --port=8500 --rest_api_port=8501 \\
  --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"
"""

STANDIN_APPLETS = ("sh", "ls", "cat", "echo", "env", "find", "sha256sum", "sleep", "test", "true")
STANDIN_SCRIPT = (
    "#!/bin/sh\n"
    "# Modelyard stand-in for tensorflow/serving's entrypoint: prints the command it would run.\n"
    "echo tensorflow_model_server --port=8500 --rest_api_port=8501 "
    "--model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} \"$@\"\n"
)


def standin_rootfs(busybox: str | os.PathLike[str] = "/bin/busybox") -> bytes:
    """A tiny rootfs tar: static busybox, applet symlinks, the fake serving entrypoint."""
    busybox_bytes = Path(busybox).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d in ("bin", "models", "tmp", "usr", "usr/bin"):
            info = tar_member(d, tarfile.DIRTYPE)
            if d == "tmp":
                info.mode = 0o1777
            tar.addfile(info)
        info = tar_member("bin/busybox", tarfile.REGTYPE, len(busybox_bytes))
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(busybox_bytes))
        for applet in STANDIN_APPLETS:
            link = tar_member(f"bin/{applet}", tarfile.SYMTYPE)
            link.linkname = "busybox"
            link.mode = 0o777
            tar.addfile(link)
        script = STANDIN_SCRIPT.encode()
        info = tar_member(STANDIN_ENTRYPOINT.lstrip("/"), tarfile.REGTYPE, len(script))
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(script))
    return buf.getvalue()


def ensure_standin_base_image(client: Any, tag: str, *,
                              busybox: str | os.PathLike[str] = "/bin/busybox") -> str:
    """Make sure ``tag`` is the stand-in TF Serving base image; return its image id.

    Imported (``docker import`` semantics) from ``standin_rootfs()`` with the real image's
    ENTRYPOINT/ENV/EXPOSE; reused when ``tag`` already holds the same rootfs (label
    ``io.modelyard.standin-rootfs``)."""
    api = api_of(client)
    rootfs = standin_rootfs(busybox)
    fingerprint = hashlib.sha256(rootfs + STANDIN_SCRIPT.encode()).hexdigest()
    try:
        try:
            info = api.inspect_image(tag)
            if ((info.get("Config") or {}).get("Labels") or {}).get("io.modelyard.standin-rootfs") == fingerprint:
                return str(info["Id"])
        except docker.errors.ImageNotFound:
            pass
        repository, _, image_tag = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        api.import_image_from_data(rootfs, repository=repository, tag=image_tag, changes=[
            f'ENTRYPOINT ["{STANDIN_ENTRYPOINT}"]',
            "ENV MODEL_BASE_PATH=/models MODEL_NAME=model",
            "EXPOSE 8500 8501",
            f"LABEL io.modelyard.standin-rootfs={fingerprint}",
        ])
        return str(api.inspect_image(tag)["Id"])
    except ENGINE_ERRORS as exc:
        raise engine_error(client, exc, f"importing the stand-in base image {tag}", ImageBuildError) from exc


# --- the serving harness: the stand-in base running this host's `python -m serving` ----------------

def harness_mount_specs() -> list[dict[str, Any]]:
    """The read-only bind mounts that let the busybox base run this host's Python + TensorFlow, as
    a docker endpoint's profile takes them (``{"source", "target", "read_only"}``)."""
    base_prefix = Path(os.path.realpath(sys.executable)).parents[1]  # e.g. ~/.pyenv/versions/3.11.7
    pairs: dict[str, str] = {}
    for target in ("/usr/lib", "/lib", "/lib64", "/usr/lib64"):
        if os.path.exists(target):
            pairs[target] = os.path.realpath(target)
    pairs[str(base_prefix)] = str(base_prefix)
    pairs[sys.prefix] = sys.prefix  # the virtualenv
    pairs[f"{HARNESS_SERVING_DIR}/serving"] = str(REPO_ROOT / "serving")
    return [{"source": source, "target": target, "read_only": True} for target, source in pairs.items()]


def harness_mounts() -> list[Any]:
    """``harness_mount_specs()`` as docker SDK mounts (for ``containers.promote_container``)."""
    return [docker.types.Mount(target=m["target"], source=m["source"], type="bind", read_only=True)
            for m in harness_mount_specs()]


def harness_context(standin: str) -> bytes:
    """The build context of the harness image FROM the stand-in base ``standin``."""
    venv_python = str(Path(sys.prefix) / "bin" / "python")
    dockerfile = "\n".join([
        "# Modelyard serving harness: stands in for tensorflow/serving (releases/deploy/standin_image.py)",
        f"FROM {standin}",
        "COPY tf_serving_entrypoint.sh /usr/bin/tf_serving_entrypoint.sh",
        f"ENV MODELYARD_HARNESS_PYTHON={venv_python} PYTHONPATH={HARNESS_SERVING_DIR} "
        "PYTHONDONTWRITEBYTECODE=1 TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 HOME=/tmp",
        "LABEL io.modelyard.test-harness=true",
        "",
    ]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in (("Dockerfile", dockerfile, 0o644),
                                 ("tf_serving_entrypoint.sh", HARNESS_ENTRYPOINT.encode(), 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_harness_base_image(client: Any, tag: str, *, standin: str) -> str:
    """Build ``tag``, the serving harness FROM the stand-in base ``standin`` (imported first if
    needed); return its image id. Containers of release images built FROM it need
    ``harness_mounts()``."""
    api = api_of(client)
    ensure_standin_base_image(client, standin)
    try:
        for chunk in api.build(fileobj=io.BytesIO(harness_context(standin)), custom_context=True, tag=tag, rm=True,
                               forcerm=True, pull=False, decode=True, network_mode="none"):
            if "error" in chunk:
                raise ImageBuildError(f"Building the serving harness image {tag} failed: {chunk['error']}")
        return str(api.inspect_image(tag)["Id"])
    except ENGINE_ERRORS as exc:
        raise engine_error(client, exc, f"building the serving harness image {tag}", ImageBuildError) from exc
