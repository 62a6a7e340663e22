"""A small process supervisor for `make run` (and for one host of the fleet).

    python -m config.supervisor --log var/log/supervisor.log \\
        --child web var/log/web.log '.venv/bin/gunicorn config.wsgi:application ...' \\
        --child worker var/log/worker.log '.venv/bin/python manage.py db_worker ...'

Each child runs in a session of its own (so a terminal's Ctrl-C reaches only the supervisor, and a
child's own children, e.g. gunicorn's workers, are signalled with it). A child that exits is started
again after an exponential backoff (1 s, 2 s, 4 s … up to 60 s; back to 1 s once it stayed up a
minute), and the other children are left alone: a worker killed by the OOM killer no longer takes
the web app down with it. SIGINT or SIGTERM stops everything: SIGTERM to each child's process
group, then SIGKILL to whatever is left after the grace period.

No Django and no dependency: it only starts processes.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("supervisor")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # a child that ran this long is healthy again: the next backoff starts at 1 s
POLL = 0.2


@dataclass
class Child:
    """One named command, restarted whenever it exits (until the supervisor stops)."""

    name: str
    argv: list[str]
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive short-lived runs, for the backoff
    restart_at: float = 0.0  # monotonic time of the next start (0: now)
    restarts: int = 0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.log_path is not None and self._log_file is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
        out = self._log_file if self._log_file is not None else None
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d): %s", self.name, self.proc.pid, shlex.join(self.argv))

    def backoff(self, ran_for: float) -> float:
        """Seconds to wait before the next start: doubles per consecutive quick exit."""
        self.failures = 1 if ran_for >= STABLE_AFTER else self.failures + 1
        return min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_MAX)

    def signal_group(self, signum: int, *, even_if_exited: bool = False) -> None:
        """Signal the child's whole process group (its own children too). After the child itself
        exited, only with ``even_if_exited``: to kill what it left behind."""
        if self.proc is not None and (even_if_exited or self.proc.poll() is None):
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(self, children: list[Child], *, grace: float = 10.0) -> None:
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self.children = children
        self.grace = grace
        self.stopping = False

    def request_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("received %s: stopping every child", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        for child in self.children:
            child.start()
        while not self.stopping:
            self.tick(time.monotonic())
            time.sleep(POLL)
        self.stop_all()
        return 0

    def tick(self, now: float) -> None:
        """Notice exited children and start the ones whose backoff has passed."""
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                ran_for = now - child.started_at
                delay = child.backoff(ran_for)
                log.warning("%s (pid %d) %s after %.1f s; restarting in %.0f s",
                            child.name, child.proc.pid, describe_exit(code), ran_for, delay)
                child.signal_group(signal.SIGKILL, even_if_exited=True)  # a crashed child's orphans
                child.proc = None
                child.restart_at = now + delay
            if child.proc is None and now >= child.restart_at and not self.stopping:
                child.restarts += 1
                child.start()

    def stop_all(self) -> None:
        for child in self.children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s: SIGKILL", child.name, child.proc.pid,
                            self.grace)
                child.signal_group(signal.SIGKILL)
                child.proc.wait()
            child.signal_group(signal.SIGKILL, even_if_exited=True)  # its own children's stragglers
            log.info("stopped %s (pid %d)", child.name, child.proc.pid)
            child.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m config.supervisor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, action="append", default=[], metavar=("NAME", "LOG", "COMMAND"),
                        help="a child to keep running: its name, its log file ('-' for the supervisor's "
                             "stdout) and its command line (one shell-quoted string). Repeat.")
    parser.add_argument("--log", type=Path, help="also write the supervisor's own log here")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    if not args.child:
        parser.error("give at least one --child")
    return args


def configure_logging(path: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log)
    children = [Child(name=name, argv=shlex.split(command), log_path=None if logfile == "-" else Path(logfile))
                for name, logfile, command in args.child]
    return Supervisor(children, grace=args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
