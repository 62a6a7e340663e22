"""Serving-image build benchmark: Modelyard's ``releases.deploy.image_build.build_image`` against a plain
``docker build`` of an equivalent hand-written context, side by side on the same engine.

    .venv/bin/python bench/image_build.py [--runs 5] [--payload-mib 16] [--keep]

Both builders start from the same stand-in TF Serving base image
(``releases.deploy.standin_image.ensure_standin_base_image``) and build the same files: a tiny
tf_keras SavedModel (built here: benches import nothing from tests/) plus
``--payload-mib`` of incompressible bytes in its ``assets/`` (so the model layer has a size worth
copying), the warmup file, models.config and batching_parameters.txt. The hand-written side is a
directory on disk with those files and a Dockerfile written by hand with the same instructions;
it is built with ``DOCKER_BUILDKIT=0 docker build --network none`` (the engine's classic builder,
which is also what the API's /build uses; no buildx here).

Modelyard's time is the whole ``build_image`` call: validating the spec, generating the config
files and the warmup TFRecord, streaming the deterministic tar to the engine while it is written,
the build, and the inspect. ``docker build``'s time is the CLI process (it tars the directory itself).

Scenarios, ``--runs`` times each, the two builders interleaved (order alternating per run):

* cold: ``--no-cache`` (``nocache=True``);
* identical rebuild: same inputs again, build cache on;
* model-only change: other model bytes, same version and serving profile;
* profile-only change: other batching parameters, same model.

Each warm scenario builds fresh content per run and per builder (the padding is seeded by both),
so neither builder finds the other's layers in the cache. Layer reuse is read from the build log
("Using cache") and from ``inspect_image()['RootFS']['Layers']`` against the primed image.
Medians are printed as a table. Target: Modelyard ≤ 1.2x the plain build.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
import numpy as np  # noqa: E402

from releases.deploy.image_build import build_image  # noqa: E402
from releases.deploy.image_context import (  # noqa: E402
    ImageSpec, batching_parameters_text, image_labels, model_server_config_text, serving_args)
from releases.deploy.standin_image import ensure_standin_base_image  # noqa: E402

TARGET_RATIO = 1.2
MiB = 1024 * 1024
HANDWRITTEN_DOCKERFILE = """\
FROM {base}
ENV MODEL_NAME={name}
COPY models/{name}/{version}/ /models/{name}/{version}/
COPY models/models.config models/batching_parameters.txt /models/
CMD {cmd}
LABEL {labels}
"""


def small_saved_model(directory: Path) -> Path:
    """A small tf_keras SavedModel (input ``features``: float32 [None, 8]) to carry the padding."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input(shape=(8,), name="features")
    outputs = tf_keras.layers.Dense(3, activation="softmax")(tf_keras.layers.Dense(16, activation="relu")(inputs))
    tf_keras.Model(inputs, outputs).save(str(directory), save_format="tf")
    return directory


@dataclass
class Sample:
    seconds: float
    cache_hits: int
    layers_reused: int  # RootFS layers identical (by position) to the primed image's
    layers_total: int


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, scenario: str, builder: str, sample: Sample) -> None:
        self.samples.setdefault((scenario, builder), []).append(sample)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.api = docker.APIClient(version="auto", timeout=600)
        self.run_id = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-image-", dir=args.tmp_dir))
        self.base = f"modelyard-bench/serving-standin:{self.run_id}"
        self.repo = f"modelyard-bench/m{self.run_id}"
        self.tags: list[str] = []
        self.saved_model: Path | None = None

    # ------------------------------------------------------------------ inputs

    def setup(self) -> None:
        ensure_standin_base_image(self.api, self.base)
        self.tags.append(self.base)
        self.saved_model = small_saved_model(self.tmp / "saved_model")

    def model_dir(self, seed: str) -> Path:
        """The SavedModel plus ``--payload-mib`` of bytes seeded by ``seed``."""
        assert self.saved_model is not None
        d = self.tmp / f"model-{seed}"
        if not d.exists():
            shutil.copytree(self.saved_model, d)
            rng = random.Random(seed)
            (d / "assets" / "bench-padding.bin").write_bytes(rng.randbytes(self.args.payload_mib * MiB))
        return d

    def spec(self, seed: str, tag: str, batching: dict | None = None) -> ImageSpec:
        return ImageSpec(
            model_name="bench", version=1, release_id=1, saved_model_dir=self.model_dir(seed),
            model_sha256="0" * 64, base_image=self.base, repository=self.repo, tag=tag,
            created="2024-05-01T12:00:00+00:00", source_url="https://git.example/bench",
            revision="bench", version_labels={"stable": 1},
            batching=batching or {"max_batch_size": 8, "batch_timeout_micros": 1000,
                                  "allowed_batch_sizes": [4, 8]},
            warmup_requests=[{"features": np.zeros((1, 8), np.float32)}])

    def handwritten_context(self, spec: ImageSpec) -> Path:
        """The same files as Modelyard's context, as a directory, with a hand-written Dockerfile."""
        import json

        from releases import warmup

        d = self.tmp / f"ctx-{spec.tag}"
        if d.exists():
            shutil.rmtree(d)
        version_dir = d / "models" / spec.model_name / str(spec.version)
        shutil.copytree(spec.saved_model_dir, version_dir)
        warmup.write_warmup_file(version_dir / "assets.extra" / "tf_serving_warmup_requests",
                                 spec.model_name, spec.warmup_requests or [])
        (d / "models" / "models.config").write_text(model_server_config_text(spec))
        (d / "models" / "batching_parameters.txt").write_text(batching_parameters_text(spec.batching or {}))
        labels = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in image_labels(spec).items())
        (d / "Dockerfile").write_text(HANDWRITTEN_DOCKERFILE.format(
            base=spec.base_image, name=spec.model_name, version=spec.version,
            cmd=json.dumps(serving_args(spec)), labels=labels))
        return d

    # ------------------------------------------------------------------ builders

    def build_modelyard(self, spec: ImageSpec, nocache: bool) -> tuple[float, int, str]:
        self.tags.append(spec.image_ref)
        start = time.perf_counter()
        built = build_image(spec, client=self.api, on_log=lambda line: None, nocache=nocache)
        return time.perf_counter() - start, built.cache_hits, built.tag_ref

    def build_plain(self, spec: ImageSpec, nocache: bool) -> tuple[float, int, str]:
        ctx = self.handwritten_context(spec)  # not timed: the files exist before `docker build`
        ref = f"{self.repo}:{spec.tag}"
        self.tags.append(ref)
        cmd = ["docker", "build", "--network", "none", "-t", ref, str(ctx)]
        if nocache:
            cmd.insert(2, "--no-cache")
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "DOCKER_BUILDKIT": "0"})
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"docker build failed:\n{proc.stdout}\n{proc.stderr}")
        return elapsed, proc.stdout.count("Using cache"), ref

    def layers(self, ref: str) -> list[str]:
        return list(self.api.inspect_image(ref)["RootFS"]["Layers"])

    # ------------------------------------------------------------------ scenarios

    def run(self) -> Results:
        results = Results()
        builders = {"modelyard": self.build_modelyard, "docker build": self.build_plain}
        for run in range(self.args.runs):
            order = list(builders) if run % 2 == 0 else list(reversed(builders))
            for name in order:
                build = builders[name]
                key = f"{'my' if name == 'modelyard' else 'dk'}{run}"
                # cold
                seconds, hits, ref = build(self.spec(f"{key}-cold", f"{key}-cold"), True)
                results.add("cold (--no-cache)", name, Sample(seconds, hits, 0, len(self.layers(ref))))
                primed = self.layers(ref)
                # identical rebuild (cache on)
                seconds, hits, ref = build(self.spec(f"{key}-cold", f"{key}-same"), False)
                results.add("identical rebuild", name, self._sample(seconds, hits, primed, ref))
                # model-only change
                seconds, hits, ref = build(self.spec(f"{key}-model", f"{key}-model"), False)
                results.add("model-only change", name, self._sample(seconds, hits, primed, ref))
                # profile-only change
                seconds, hits, ref = build(self.spec(f"{key}-cold", f"{key}-profile", batching={
                    "max_batch_size": 16, "allowed_batch_sizes": [8, 16]}), False)
                results.add("profile-only change", name, self._sample(seconds, hits, primed, ref))
                self.cleanup_images(keep_base=True)
            print(f"run {run + 1}/{self.args.runs} done", file=sys.stderr, flush=True)
        return results

    def _sample(self, seconds: float, hits: int, primed: list[str], ref: str) -> Sample:
        layers = self.layers(ref)
        reused = sum(1 for a, b in zip(primed, layers) if a == b)
        return Sample(seconds, hits, reused, len(layers))

    def cleanup_images(self, keep_base: bool = False) -> None:
        for ref in reversed(self.tags):
            if keep_base and ref == self.base:
                continue
            try:
                self.api.remove_image(ref, force=True)
            except docker.errors.APIError:
                pass
        self.tags = [self.base] if keep_base else []

    def close(self) -> None:
        self.cleanup_images()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def report(results: Results, runs: int, payload_mib: int) -> bool:
    scenarios = ["cold (--no-cache)", "identical rebuild", "model-only change", "profile-only change"]
    print(f"\nServing image build: Modelyard build_image vs docker build (classic builder, vfs), "
          f"median of {runs}, model ≈ {payload_mib} MiB\n")
    header = (f"{'scenario':<22} {'modelyard s':>11} {'docker build s':>14} {'ratio':>6}  "
              f"{'cache hits (my/dk)':>18}  {'layers reused vs primed (my/dk)':>31}")
    print(header)
    print("-" * len(header))
    ok = True
    for scenario in scenarios:
        my = results.samples[(scenario, "modelyard")]
        dk = results.samples[(scenario, "docker build")]
        my_s = statistics.median(s.seconds for s in my)
        dk_s = statistics.median(s.seconds for s in dk)
        ratio = my_s / dk_s
        ok = ok and ratio <= TARGET_RATIO
        hits = f"{my[0].cache_hits}/{dk[0].cache_hits}"
        reused = ("-" if scenario.startswith("cold")
                  else f"{my[0].layers_reused}/{my[0].layers_total} / {dk[0].layers_reused}/{dk[0].layers_total}")
        print(f"{scenario:<22} {my_s:>11.2f} {dk_s:>14.2f} {ratio:>6.2f}  {hits:>18}  {reused:>31}")
    print("\nlayers: [base, model, config]; steps after FROM: ENV, COPY model, COPY config, CMD, LABEL")
    print(f"target ratio ≤ {TARGET_RATIO}: {'met' if ok else 'NOT met'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--payload-mib", type=int, default=16)
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        bench.setup()
        results = bench.run()
    finally:
        bench.close()
    return 0 if report(results, args.runs, args.payload_mib) else 1


if __name__ == "__main__":
    sys.exit(main())
