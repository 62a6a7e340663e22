"""`modelyard push` against `curl -F` for the same large artifact, on a real gunicorn + Modelyard.

    .venv/bin/python bench/cli_push.py [--size-mib 100] [--runs 3] [--modelyard PATH] [--tmp-dir DIR]

Sets up a private app instance and the artifact with bench/upload.py's public helpers (a tiny
SavedModel padded with incompressible bytes to --size-mib, stored uncompressed), installs the
client into a fresh virtualenv (unless --modelyard names an installed `modelyard`), then, --runs
times interleaved, uploads the artifact with

    curl -sS -f -H 'Authorization: Bearer …' -F artifact=@FILE URL
    modelyard push FILE --model M --json        (streamed body, Idempotency-Key, progress off)

wall clock for each, from process start to exit (so the CLI's interpreter start-up and its extra
GET of the model are included). Medians are printed as a table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upload import MODEL, MiB, app_env, build_archives, log, setup_app, start_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def install_client(root: Path) -> Path:
    venv = root / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(REPO / "client")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return venv / "bin" / "modelyard"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modelyard", help="an installed modelyard executable (default: install into a fresh venv)")
    parser.add_argument("--tmp-dir", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelyard-clibench-", dir=args.tmp_dir))
    server = None
    try:
        env = app_env(root, args.size_mib * MiB)
        legacy = setup_app(env)
        small, big = build_archives(root, env, args.size_mib * MiB, "asset")
        started = time.monotonic()
        modelyard = Path(args.modelyard) if args.modelyard else install_client(root)
        install_s = time.monotonic() - started
        server = start_server(root, env, "config.wsgi:application", None)
        url = server.base_url
        token = requests.post(f"{url}/api/v1/tokens/", headers={"Authorization": f"Token {legacy}"}, timeout=30,
                              json={"name": "bench", "scopes": ["registry:read", "registry:write"]}).json()["token"]
        auth = f"Authorization: Bearer {token}"
        requests.post(f"{url}/api/v1/models/", json={"name": MODEL, "task": "classification"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30).raise_for_status()
        versions = f"{url}/api/v1/models/{MODEL}/versions/"
        timed(["curl", "-sS", "-f", "-H", auth, "-F", f"artifact=@{small}", versions])  # warm-up: TF import
        cli_env = {"PATH": "/usr/bin:/bin", "MODELYARD_URL": url, "MODELYARD_TOKEN": token,
                   "MODELYARD_CONFIG": str(root / "none.json")}
        curl_s, cli_s = [], []
        for run in range(1, args.runs + 1):
            seconds, out = timed(["curl", "-sS", "-f", "-H", auth, "-F", f"artifact=@{big}", versions])
            curl_s.append(seconds)
            sha_curl = json.loads(out)["sha256"]
            seconds, out = timed([str(modelyard), "push", str(big), "--model", MODEL, "--json"], cli_env)
            cli_s.append(seconds)
            if json.loads(out)["sha256"] != sha_curl:
                raise RuntimeError("the CLI and curl uploads have different digests")
            log(f"run {run}: curl {curl_s[-1]:.2f} s, modelyard push {cli_s[-1]:.2f} s")
        size = big.stat().st_size
        print(f"\n`modelyard push` vs `curl -F`, {size / MiB:.0f} MiB artifact, {args.runs} runs, medians "
              f"(client install into a fresh venv: {install_s:.1f} s)\n")
        print(f"| {'tool':<16} | {'seconds':>8} | {'MiB/s':>7} |")
        print(f"|{'-' * 18}|{'-' * 10}|{'-' * 9}|")
        for name, values in (("curl -F", curl_s), ("modelyard push", cli_s)):
            median = statistics.median(values)
            print(f"| {name:<16} | {median:>8.2f} | {size / MiB / median:>7.1f} |")
        ratio = statistics.median(cli_s) / statistics.median(curl_s)
        print(f"\nmodelyard push / curl: {ratio:.2f}x the time")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
