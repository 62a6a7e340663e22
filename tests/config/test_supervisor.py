"""The supervisor `make run` uses (config/supervisor.py), with real processes: a real task worker
killed with SIGKILL (as the OOM killer would) is started again while its sibling keeps running,
and SIGTERM to the supervisor ends every child."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.supervisor import BACKOFF_MAX, STABLE_AFTER, Child
from tests.processes import ROOT, alive, database_env, stop, wait_for

SLEEPER = f"{sys.executable} -c 'import time; time.sleep(600)'"


def started_pids(log: Path, name: str) -> list[int]:
    text = log.read_text() if log.exists() else ""
    return [int(pid) for pid in re.findall(rf"started {name} \(pid (\d+)\)", text)]


@pytest.fixture
def supervisor(tmp_path, storage_root):  # type: ignore[no-untyped-def]
    env = {**os.environ, **database_env(), "MODELYARD_STORAGE_ROOT": str(storage_root)}
    worker = f"{sys.executable} manage.py db_worker --queue-name '*' --interval 0.2 --no-reload"
    proc = subprocess.Popen(
        [sys.executable, "-m", "config.supervisor", "--log", str(tmp_path / "supervisor.log"), "--grace", "5",
         "--child", "worker", str(tmp_path / "worker.log"), worker,
         "--child", "web", str(tmp_path / "web.log"), SLEEPER],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    yield proc, tmp_path / "supervisor.log"
    stop(proc)


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_restarted_and_its_sibling_keeps_running(supervisor):
    proc, log = supervisor
    worker_pid = wait_for(lambda: started_pids(log, "worker"), timeout=30, what="the worker")[0]
    web_pid = wait_for(lambda: started_pids(log, "web"), timeout=30, what="the web child")[0]
    wait_for(lambda: "Starting worker" in (log.parent / "worker.log").read_text(), timeout=60,
             what="the worker to poll its queues")

    os.kill(worker_pid, signal.SIGKILL)
    pids = wait_for(lambda: len(p := started_pids(log, "worker")) == 2 and p, timeout=30, what="the restart")
    assert pids[1] != worker_pid and alive(pids[1]) and not alive(worker_pid)
    assert "worker (pid %d) was killed by SIGKILL" % worker_pid in log.read_text()
    assert started_pids(log, "web") == [web_pid] and alive(web_pid)  # untouched
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not alive(pids[1]) and not alive(web_pid)
    assert f"stopped web (pid {web_pid})" in log.read_text()


def test_a_child_that_keeps_crashing_is_restarted_with_growing_delays(tmp_path):
    log = tmp_path / "supervisor.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "config.supervisor", "--log", str(log),
         "--child", "crasher", "-", f"{sys.executable} -c 'raise SystemExit(3)'"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(started_pids(log, "crasher")) >= 3, timeout=20, what="two restarts")
        text = log.read_text()
        assert "exited with status 3" in text
        assert re.search(r"restarting in 1 s.*\n.*\n.*restarting in 2 s", text), text
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_backoff_doubles_then_resets_after_a_stable_run():
    child = Child(name="w", argv=["true"])
    assert [child.backoff(0.1) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert child.backoff(STABLE_AFTER + 1) == 1
    assert BACKOFF_MAX == 60
