"""Where the client finds its server and token: MODELYARD_URL / MODELYARD_TOKEN, else the file
``modelyard login`` wrote (``~/.config/modelyard/config.json``, mode 0600, like docker login)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional


def config_path() -> Path:
    override = os.environ.get("MODELYARD_CONFIG")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "modelyard" / "config.json"


def load() -> dict:
    path = config_path()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save(url: str, token: str) -> Path:
    """Write the file readable by its owner only (created 0600, never world-readable in between)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    os.chmod(path, 0o600)
    return path


def resolve(url: Optional[str] = None, token: Optional[str] = None) -> tuple:
    stored = load()
    return (url or os.environ.get("MODELYARD_URL") or stored.get("url") or "http://127.0.0.1:8000",
            token or os.environ.get("MODELYARD_TOKEN") or stored.get("token") or "")
