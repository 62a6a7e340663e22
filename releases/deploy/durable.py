"""Durable file writes and locks: what every endpoint driver that keeps files needs.

Django-free. ``write_text_atomically`` leaves a reader the old file or the new one, never half of
one, and survives a crash (file and directory fsynced); ``file_lock`` is one holder at a time
across threads and processes (an flock, released when the holder's descriptor closes).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from releases.tfserving import ServingTimeout


class NotARegularFile(OSError):
    """The path to replace is a symlink, directory or device: never written through."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    """Write a sibling temp file, fsync it, rename() over `path`, fsync the directory.

    A reader (the server's config poll) sees either the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise NotARegularFile(f"{path} is not a regular file (a symlink, directory or device): not replacing it")
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)



@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive flock on ``path``: one promotion per endpoint, across threads and processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise ServingTimeout(f"Another promotion still holds {path} after {timeout_s:g} s") from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the flock
