"""A web process never imports TensorFlow (issue 14): not at start-up, not to inspect an upload
(see tests/registry/test_inspector_isolation.py for the latter)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tflite_runtime")


def test_loading_the_wsgi_application_does_not_import_tensorflow(tmp_path) -> None:
    code = (
        "import sys\n"
        "import config.wsgi\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "MODELYARD_VAR_DIR": str(tmp_path / "var")}
    env.pop("MODELYARD_STORAGE_ROOT", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
