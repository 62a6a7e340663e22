"""Upload benchmark: a large SavedModel archive over HTTP to a real gunicorn + Modelyard.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--runs 2] [--payload asset|weights]
                                     [--tmp-dir DIR] [--wsgi-app MODULE:APP --pythonpath DIR] [--keep]

What it does, all inside one private temporary directory that is removed at the end:

1. sets up a fresh app instance (MODELYARD_VAR_DIR, migrate, a superuser and its API token) and
   starts ``gunicorn config.wsgi:application`` with one sync worker on a free local port;
2. builds a real artifact the registry accepts: a tiny tf_keras SavedModel (8 features,
   3 classes) zipped together with ``assets/bench-padding.bin``, incompressible random
   bytes stored uncompressed (ZIP_STORED), for a total of ``--size-mib`` (``--payload weights``
   puts the bulk in the model's variables instead, which inspection's TensorFlow load reads);
3. uploads a small model once, so the worker's warm inspector (the process that imports TensorFlow
   and reads artifacts, ``registry/inspector.py``) is running before anything is measured;
4. ``--runs`` times, interleaved: the baseline (``sha256sum FILE && cp FILE COPY`` on the same
   filesystem, wall clock) and the HTTP upload (a streaming multipart body with a fixed
   Content-Length; the file is never read into memory), wall clock from the first byte sent to the
   201 response. The server's sha256 is checked against sha256sum's.

While an upload runs, a sampler thread watches the worker and its inspector (/proc/PID/status,
/proc/PID/stat) and the storage root's tmp/ directory, which splits the request into phases
without touching the application: body streamed to the staging file, inspection (unpack what
loading reads, read the rest through, TensorFlow load), then blob store + database + response.
The worker's peak RSS is its VmHWM, reset through /proc/PID/clear_refs right before each upload
(the sampled VmRSS maximum is the fallback).

Medians over the runs are printed as a table. Targets (issue 14): the upload takes at most 1.5x
the baseline's time, and the worker's RSS grows by at most 64 MB during it. The inspector's own
memory (TensorFlow) is reported apart: it is another process.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import requests

REPO = Path(__file__).resolve().parent.parent
PY = REPO / ".venv" / "bin" / "python"
GUNICORN = REPO / ".venv" / "bin" / "gunicorn"
MiB = 1024 * 1024
MB = 1000 * 1000
SEND_CHUNK = 1 * MiB
PADDING_NAME = "assets/bench-padding.bin"
TARGET_RATIO = 1.5  # upload seconds / baseline seconds, at most
TARGET_RSS_BYTES = 64 * MB
MODEL = "bench-upload"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- The app under test ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(root: Path, size: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MODELYARD_VAR_DIR": str(root / "var"),
        "MODELYARD_LOG_LEVEL": "WARNING",
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("MODELYARD_STORAGE_ROOT", None)  # keep storage inside the private var dir
    env.pop("DATABASE_URL", None)
    # The default limit (2 GiB) is kept unless the artifact would not fit under it.
    default_limit = 2 * 1024**3
    if size + MiB > default_limit:
        env["MODELYARD_MAX_ARTIFACT_BYTES"] = str(size + 64 * MiB)
    else:
        env.pop("MODELYARD_MAX_ARTIFACT_BYTES", None)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(PY), "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def setup_app(env: dict[str, str]) -> str:
    """Migrate the private database; return the API token of a fresh superuser."""
    manage(env, "migrate", "--noinput", "-v0")
    out = manage(env, "shell", "-c", (
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        "u = get_user_model().objects.create_superuser('bench', 'bench@example.invalid', 'bench-password')\n"
        "print('TOKEN=' + Token.objects.create(user=u).key)\n"
    ))
    match = re.search(r"TOKEN=(\w+)", out)
    if not match:
        raise RuntimeError(f"no token in the shell output: {out!r}")
    return match.group(1)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    access_log: Path
    error_log: Path

    def worker_pid(self) -> int:
        pids = children(self.proc.pid)
        if len(pids) != 1:
            raise RuntimeError(f"expected one gunicorn worker under {self.proc.pid}, found {pids}")
        return pids[0]

    def uploads_logged(self) -> list[str]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [line for line in lines if line.startswith("POST ") and "/versions/ " in line]

    def upload_seconds(self, nth: int) -> float | None:
        """Server-side time of the nth logged upload (0-based), from gunicorn's %(D)s."""
        deadline = time.monotonic() + 5  # gunicorn logs the request just after sending the response
        while True:
            lines = self.uploads_logged()
            if nth < len(lines):
                return int(lines[nth].rsplit(" ", 1)[1]) / 1e6
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        workers = children(self.proc.pid)
        self.proc.terminate()  # gunicorn master: graceful shutdown of its workers
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(timeout=10)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return sorted(set(found))


def start_server(root: Path, env: dict[str, str], app: str, pythonpath: str | None) -> Server:
    port = free_port()
    access_log, error_log = root / "gunicorn-access.log", root / "gunicorn.log"
    out = open(error_log, "ab")
    proc = subprocess.Popen(
        [str(GUNICORN), app, *(["--pythonpath", pythonpath] if pythonpath else []),
         "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--timeout", "900", "--graceful-timeout", "5",
         "--access-logfile", str(access_log), "--access-logformat", "%(m)s %(U)s %(s)s %(D)s"],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    out.close()
    server = Server(proc, f"http://127.0.0.1:{port}", access_log, error_log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{error_log.read_text()[-3000:]}")
        try:
            if requests.get(server.base_url + "/healthz", timeout=2).status_code == 200:
                return server
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still importing
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer /healthz within 90 s:\n{error_log.read_text()[-3000:]}")


# --- The artifact ----------------------------------------------------------------------------

SAVE_MODELS = """
import sys

import tf_keras as keras

keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(8,), name="features")  # a tiny classifier: 8 features -> 3 classes
hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(hidden), name="tiny").save(
    sys.argv[1], save_format="tf")
if len(sys.argv) > 2:  # a model whose weights are the bulk: an Embedding table of rows x 256 float32
    inputs = keras.Input(shape=(1,), dtype="int32", name="ids")
    table = keras.layers.Embedding(int(sys.argv[3]), 256, name="table")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probs")(keras.layers.Flatten()(table))
    keras.Model(inputs, outputs, name="wide").save(sys.argv[2], save_format="tf")
"""


def save_models(env: dict[str, str], *args: str) -> None:
    """tf_keras SavedModels built with TensorFlow directly (nothing from tests/), saved in a
    subprocess so this process never loads TensorFlow."""
    done = subprocess.run([str(PY), "-c", SAVE_MODELS, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not save the SavedModel(s):\n{done.stderr[-3000:]}")


def zip_dir(directory: Path, archive: Path, compression: int) -> None:
    with zipfile.ZipFile(archive, "w", compression, allowZip64=True) as zf:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            zf.write(path, str(path.relative_to(directory)))


def build_archives(root: Path, env: dict[str, str], size: int, payload: str) -> tuple[Path, Path]:
    """small.zip (the tiny model) and the big archive of about ``size`` bytes, stored uncompressed.

    payload "asset": the tiny model plus ``assets/bench-padding.bin`` of random bytes (exactly
    ``size``); TensorFlow never reads that file. payload "weights": a model whose variables are
    the bulk, so inspection's tf.saved_model.load really reads them (size is approximate).
    """
    tiny, wide = root / "tiny_model", root / "wide_model"
    if payload == "weights":
        save_models(env, str(tiny), str(wide), str(max(1, (size - MiB) // 1024)))
    else:
        save_models(env, str(tiny))
    small = root / "bench-small.zip"
    zip_dir(tiny, small, zipfile.ZIP_DEFLATED)
    big = root / f"bench-{size // MiB}mib-{payload}.zip"
    if payload == "weights":
        zip_dir(wide, big, zipfile.ZIP_STORED)
    else:
        zip_dir(tiny, big, zipfile.ZIP_STORED)
        # Pad to exactly ``size`` bytes: measure what a 1-byte padding member costs, then write it.
        probe = root / "probe.zip"
        shutil.copy(big, probe)
        with zipfile.ZipFile(probe, "a", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo(PADDING_NAME), "w", force_zip64=True) as out:
                out.write(b"\0")
        padding = size - (probe.stat().st_size - 1)
        probe.unlink()
        if padding <= 0:
            raise SystemExit(f"--size-mib is too small for the model alone ({big.stat().st_size} bytes)")
        import numpy as np

        rng = np.random.default_rng(0)
        with zipfile.ZipFile(big, "a", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo(PADDING_NAME, date_time=(2024, 1, 1, 0, 0, 0)), "w",
                         force_zip64=True) as out:
                for offset in range(0, padding, 64 * MiB):
                    out.write(rng.bytes(min(64 * MiB, padding - offset)))
    shutil.rmtree(tiny)
    shutil.rmtree(wide, ignore_errors=True)
    return small, big


# --- Measurements ----------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def reset_peak_rss(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class MultipartFile:
    """A multipart/form-data body with one file field, streamed from disk in SEND_CHUNK pieces.

    It has a length, so requests sends Content-Length (not chunked encoding, which Django cannot
    read), and it is an iterable without ``read``, so urllib3 sends the chunks as they come.
    """

    boundary = "modelyard-bench-boundary-7f3a9c"

    def __init__(self, field_name: str, path: Path) -> None:
        self.path = path
        self.head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field_name}"; filename="{path.name}"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.started: float | None = None
        self.finished: float | None = None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self.head) + self.path.stat().st_size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        self.started = time.perf_counter()
        yield self.head
        with open(self.path, "rb") as fh:
            while chunk := fh.read(SEND_CHUNK):
                yield chunk
        yield self.tail
        self.finished = time.perf_counter()  # the last chunk has been handed to the socket


PHASES = {  # the sampler's phase keys, in order, and how the report names them
    "body": "body streamed, hashed, staged (multipart parse)",
    "inspect": "inspection (inspector: unpack, verify, tf.saved_model.load)",
    "store": "blob store + database + response",
}


@dataclass
class Sampler:
    """Polls the worker's RSS and the staging directory while one upload is in flight.

    The phases are read off the filesystem, without touching the app: an ``inspect-*`` directory
    appears in the staging dir once the body is on disk and inspection starts; its removal ends
    inspection. Each boundary records the wall clock and the CPU time of the worker and of its
    inspector (``inspector_pid``).
    """

    pid: int
    inspector_pid: int | None
    staging: Path
    interval: float = 0.01
    phase: str = "body"
    # phase -> (start wall, start worker CPU, start inspector CPU)
    marks: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)  # phase -> largest VmRSS seen
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Sampler":
        self._enter("body")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._enter("end")

    def _enter(self, phase: str) -> None:
        if phase not in self.marks:
            inspector = cpu_seconds(self.inspector_pid) if self.inspector_pid else 0.0
            self.marks[phase] = (time.perf_counter(), cpu_seconds(self.pid), inspector)
            self.phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = proc_status(self.pid)["VmRSS"]
                self.peak_rss[self.phase] = max(self.peak_rss.get(self.phase, 0), rss)
            except (OSError, KeyError):
                pass
            try:
                work = [p for p in self.staging.iterdir() if p.name.startswith("inspect-")]
            except OSError:
                work = []
            if work:
                self._enter("inspect")
            elif "inspect" in self.marks:
                self._enter("store")
            self._stop.wait(self.interval)

    def phases(self) -> dict[str, tuple[float, float, float, int | None]]:
        """phase -> (wall s, worker CPU s, inspector CPU s, worker peak VmRSS), for the phases seen."""
        seen = [p for p in [*PHASES, "end"] if p in self.marks]
        return {p: (*(self.marks[q][i] - self.marks[p][i] for i in range(3)), self.peak_rss.get(p))
                for p, q in zip(seen, seen[1:])}


@dataclass
class UploadResult:
    seconds: float
    send_seconds: float
    server_seconds: float | None
    phases: dict[str, tuple[float, float, float, int | None]]
    rss_before: int
    rss_peak: int
    rss_after: int
    worker_cpu: float
    inspector_cpu: float
    inspector_rss: int | None  # the inspector's VmRSS after the upload (TensorFlow lives there)
    sha256: str
    peak_source: str

    @property
    def rss_growth(self) -> int:
        return self.rss_peak - self.rss_before


def upload(server: Server, token: str, path: Path, staging: Path) -> UploadResult:
    pid = server.worker_pid()
    nth = len(server.uploads_logged())
    body = MultipartFile("artifact", path)
    headers = {"Authorization": f"Token {token}", "Content-Type": body.content_type}
    os.sync()  # start with no dirty pages, like the baseline
    hwm_reset = reset_peak_rss(pid)
    before = proc_status(pid)["VmRSS"]
    inspectors = children(pid)  # none before the first upload; then the warm one
    inspector = inspectors[0] if inspectors else None
    with Sampler(pid, inspector, staging) as sampler:
        resp = requests.post(f"{server.base_url}/api/v1/models/{MODEL}/versions/", data=body,
                             headers=headers, timeout=1800)
    t_start, cpu_start, inspector_start = sampler.marks["body"]
    t_end, cpu_end, inspector_end = sampler.marks["end"]
    status = proc_status(pid)
    inspector_rss = proc_status(inspector)["VmRSS"] if inspector and inspector in children(pid) else None
    if resp.status_code != 201:
        raise RuntimeError(f"upload of {path.name} answered {resp.status_code}: {resp.text[:2000]}")
    doc = resp.json()
    if doc["size_bytes"] != path.stat().st_size:
        raise RuntimeError(f"server recorded {doc['size_bytes']} bytes, sent {path.stat().st_size}")
    peak = status["VmHWM"] if hwm_reset else max([status["VmRSS"], *sampler.peak_rss.values()])
    return UploadResult(
        seconds=t_end - t_start, send_seconds=(body.finished or t_end) - t_start,
        server_seconds=server.upload_seconds(nth), phases=sampler.phases(),
        rss_before=before, rss_peak=peak, rss_after=status["VmRSS"], worker_cpu=cpu_end - cpu_start,
        inspector_cpu=inspector_end - inspector_start, inspector_rss=inspector_rss, sha256=doc["sha256"], peak_source="VmHWM (reset via clear_refs)" if hwm_reset else "sampled VmRSS",
    )


def baseline(path: Path, copy: Path) -> tuple[float, str]:
    """sha256sum FILE && cp FILE COPY, wall clock; returns (seconds, digest)."""
    os.sync()
    t0 = time.perf_counter()
    done = subprocess.run(f'sha256sum "{path}" && cp "{path}" "{copy}"', shell=True,
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    copy.unlink()
    return seconds, done.stdout.split()[0]


# --- Report ----------------------------------------------------------------------------------

def mib_s(size: int, seconds: float) -> float:
    return size / MiB / seconds


def report(size: int, payload: str, base: list[float], ups: list[UploadResult], warm: dict[str, int],
           load: list[float]) -> bool:
    med = statistics.median
    b_s = med(base)
    u_s = med(u.seconds for u in ups)
    growth = med(u.rss_growth for u in ups)
    # Each upload ran right after its baseline: the median of the pairs' ratios cancels most of
    # what other processes do to both (the ratio of the medians is printed too).
    ratio = med(u.seconds / b for u, b in zip(ups, base))
    print()
    print(f"Upload benchmark: {size / MiB:.0f} MiB SavedModel zip (bulk in the {payload}), {len(ups)} run(s), "
          f"medians; worker RSS peak from {ups[0].peak_source}; {os.cpu_count()} CPUs, "
          f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end (other processes skew results)")
    print()
    print("| measurement                        | seconds | MiB/s  | worker RSS growth |")
    print("|------------------------------------|--------:|-------:|------------------:|")
    print(f"| baseline: sha256sum + cp           | {b_s:7.2f} | {mib_s(size, b_s):6.0f} |                 - |")
    print(f"| HTTP upload, end to end (201)      | {u_s:7.2f} | {mib_s(size, u_s):6.0f} | {growth / MB:14.1f} MB |")
    print(f"| ratio of the medians               | {u_s / b_s:6.2f}x |        |                   |")
    print(f"| median ratio of the pairs (target) | {ratio:6.2f}x |        |                   |")
    print()
    rss_ok = growth <= TARGET_RSS_BYTES
    print(f"Targets: upload <= {TARGET_RATIO}x the baseline's time: {'PASS' if ratio <= TARGET_RATIO else 'FAIL'} "
          f"({ratio:.2f}x); worker RSS growth during the upload <= {TARGET_RSS_BYTES / MB:.0f} MB: "
          f"{'PASS' if rss_ok else 'FAIL'} ({growth / MB:.1f} MB)")
    inspector = [u.inspector_rss for u in ups if u.inspector_rss is not None]
    print(f"Warm-up upload (starts the inspector): worker RSS {warm['before'] / MB:.0f} -> {warm['after'] / MB:.0f} MB; "
          f"the inspector process (TensorFlow, not the worker) holds "
          f"{med(inspector) / MB:.0f} MB after the large uploads" if inspector else "")
    print()
    print("Per run:")
    print("| run | baseline s | upload s | ratio | body sent s | server s (access log) | worker CPU s | inspector CPU s "
          "| worker RSS before -> peak -> after (MB) |")
    print("|----:|-----------:|---------:|------:|------------:|----------------------:|-------------:|----------------:"
          "|---------------------------------:|")
    for i, (b, u) in enumerate(zip(base, ups), 1):
        srv = f"{u.server_seconds:.2f}" if u.server_seconds is not None else "-"
        print(f"| {i} | {b:.2f} | {u.seconds:.2f} | {u.seconds / b:.2f}x | {u.send_seconds:.2f} | {srv} | {u.worker_cpu:.2f} | "
              f"{u.inspector_cpu:.2f} | {u.rss_before / MB:.0f} -> {u.rss_peak / MB:.0f} -> {u.rss_after / MB:.0f} |")
    seen = [p for p in PHASES if any(p in u.phases for u in ups)]
    if seen:
        print()
        print("Where the upload's time goes (medians; phase boundaries seen by polling the staging dir every 10 ms):")
        print("| phase | wall s | share | worker CPU s | inspector CPU s | worker peak RSS growth (MB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for p in seen:
            rows = [u.phases[p] for u in ups if p in u.phases]
            wall, cpu, icpu = (med(r[i] for r in rows) for i in range(3))
            peaks = [u.phases[p][3] - u.rss_before for u in ups if p in u.phases and u.phases[p][3] is not None]
            peak = f"{med(peaks) / MB:.0f}" if peaks else "-"
            print(f"| {PHASES[p]} | {wall:.2f} | {wall / u_s:.0%} | {cpu:.2f} | {icpu:.2f} | {peak} |")
    return ratio <= TARGET_RATIO and rss_ok


# --- Main ------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="artifact size (default 1024)")
    parser.add_argument("--runs", type=int, default=2, help="baseline/upload pairs, interleaved (default 2)")
    parser.add_argument("--tmp-dir", default=None,
                        help="where the private directory goes (default: $TMPDIR); needs ~4x the size free")
    parser.add_argument("--payload", choices=["asset", "weights"], default="asset",
                        help="where the bulk of the artifact is: an asset file TensorFlow never reads (default), "
                             "or the model's variables, which inspection loads into the worker")
    parser.add_argument("--wsgi-app", default="config.wsgi:application",
                        help="the WSGI app gunicorn serves; a wrapper module lets you measure a candidate fix "
                             "without editing the app (default: config.wsgi:application)")
    parser.add_argument("--pythonpath", default=None, help="extra gunicorn --pythonpath (for --wsgi-app)")
    parser.add_argument("--keep", action="store_true", help="keep the private directory (logs) for debugging")
    args = parser.parse_args()
    size = args.size_mib * MiB

    parent = Path(args.tmp_dir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < 4 * size + 512 * MiB:
        raise SystemExit(f"{parent} has {free / 2**30:.1f} GiB free; needs about {4 * size / 2**30:.1f} GiB "
                         "(artifact, baseline copy, staged upload, unpacked archive). Use --tmp-dir.")
    root = Path(tempfile.mkdtemp(prefix="modelyard-bench-", dir=parent))
    # SIGTERM/SIGHUP become SystemExit so the finally block still stops gunicorn and cleans up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    server: Server | None = None
    try:
        env = app_env(root, size)
        log(f"private directory {root}")
        load_start = os.getloadavg()[0]
        token = setup_app(env)
        log(f"building the artifacts ({args.size_mib} MiB)")
        small, big = build_archives(root, env, size, args.payload)
        size = big.stat().st_size
        server = start_server(root, env, args.wsgi_app, args.pythonpath)
        log(f"gunicorn on {server.base_url}, master {server.proc.pid}, worker {server.worker_pid()}")
        auth = {"Authorization": f"Token {token}"}
        resp = requests.post(f"{server.base_url}/api/v1/models/", json={"name": MODEL, "task": "classification"},
                             headers=auth, timeout=60)
        if resp.status_code != 201:
            raise RuntimeError(f"model creation answered {resp.status_code}: {resp.text[:1000]}")
        staging = root / "var" / "storage" / "tmp"

        log("warm-up upload (the worker starts its inspector, which imports TensorFlow)")
        wpid = server.worker_pid()
        warm_before = proc_status(wpid)["VmRSS"]
        w = upload(server, token, small, staging)
        warm = {"before": warm_before, "after": w.rss_after}

        base: list[float] = []
        ups: list[UploadResult] = []
        for run in range(1, args.runs + 1):
            seconds, digest = baseline(big, root / "baseline-copy.zip")
            base.append(seconds)
            log(f"run {run}: baseline {seconds:.2f} s ({mib_s(size, seconds):.0f} MiB/s)")
            u = upload(server, token, big, staging)
            if u.sha256 != digest:
                raise RuntimeError(f"server sha256 {u.sha256} != sha256sum {digest}")
            ups.append(u)
            log(f"run {run}: upload {u.seconds:.2f} s ({mib_s(size, u.seconds):.0f} MiB/s), "
                f"RSS growth {u.rss_growth / MB:.1f} MB, phases (wall s, worker CPU s, inspector CPU s) "
                f"{ {k: tuple(round(x, 2) for x in v[:3]) for k, v in u.phases.items()} }")
            if server.worker_pid() != wpid:
                raise RuntimeError("the gunicorn worker was replaced during the benchmark")
        ok = report(size, args.payload, base, ups, warm, [load_start, os.getloadavg()[0]])
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
