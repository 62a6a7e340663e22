"""deploy/docker-compose.yml is a valid Compose file of the fleet's shape, checked by Debian's
`docker-compose config` (.ci/run installs it); where that is missing the file is read with PyYAML
and the same shape is asserted (say so: the Compose schema itself is then not checked)."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import yaml

from tests.processes import ROOT

COMPOSE = ROOT / "deploy" / "docker-compose.yml"
ENV = {"POSTGRES_PASSWORD": "pw-for-the-test", "MODELYARD_SECRET_KEY": "key-for-the-test"}


def resolved() -> dict[str, Any]:
    """`docker-compose config`: the schema checked, anchors merged, variables substituted."""
    binary = shutil.which("docker-compose")
    if binary is None:  # PyYAML merges the anchors; variables stay unsubstituted
        return yaml.safe_load(COMPOSE.read_text())
    done = subprocess.run([binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def gpu_request(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def test_the_compose_file_has_the_fleet_shape():
    services = resolved()["services"]
    assert {"web-1", "web-2", "worker-cpu", "worker-gpu", "worker-deploy", "scheduler", "postgres", "registry",
            "serving-gpu", "migrate"} == set(services)
    queues = {name: s["command"][s["command"].index("--queue-name") + 1]
              for name, s in services.items() if "db_worker" in s.get("command", [])}
    assert queues == {"worker-cpu": "cpu,default", "worker-gpu": "gpu", "worker-deploy": "deploy"}
    for name in ("worker-gpu", "serving-gpu"):
        assert gpu_request(services[name]) == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["serving-gpu"]["image"].endswith("tensorflow/serving:2.21.0-gpu")
    assert any(v.endswith(":/models") or "/models" in str(v) for v in services["serving-gpu"]["volumes"])
    # web and workers share only the database and the artifact store
    for name in ("web-1", "web-2", "worker-cpu", "worker-gpu", "worker-deploy", "scheduler"):
        env = services[name]["environment"]
        assert env["MODELYARD_STORAGE_ROOT"] == "/shared/storage" and "postgres" in env["DATABASE_URL"]
    assert services["web-1"]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert "reap_jobs" in " ".join(services["scheduler"]["command"])


def test_no_image_names_a_registry_host():
    for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items():
        image = service.get("image", "")
        first = image.split("/")[0]
        assert "." not in first.split(":")[0] or first.startswith("${"), (name, image)
