"""Streaming upload handling: hash while the bytes arrive, never hold a file in memory.

``HashingUploadHandler`` replaces Django's default handlers (settings.FILE_UPLOAD_HANDLERS).
It writes every uploaded file to a temporary file inside the storage root (so moving it into the
blob store is a link on one filesystem), computes its sha256 chunk by chunk in the same pass, and
stops the request with a 413 as soon as the configured size limit is crossed. Each chunk is hashed
and written on a helper thread while the request thread reads and parses the next one (hashing
and writing release the GIL), so the two overlap on two cores; one chunk at most is in flight.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler

from registry.errors import TooLarge


def upload_limit_message(limit: int) -> str:
    return f"The artifact is larger than the limit of {limit} bytes (MODELYARD_MAX_ARTIFACT_BYTES)."


def announced_too_large(content_length: int | None) -> bool:
    """A request body that cannot hold an acceptable artifact (the limit plus multipart overhead)."""
    return bool(content_length) and content_length > settings.MAX_ARTIFACT_BYTES + 64 * 1024


_pool: tuple[int, ThreadPoolExecutor] | None = None


def hashing_pool() -> ThreadPoolExecutor:
    """This process's chunk hashing/writing threads (a forked child makes its own: threads do not
    survive a fork). One per concurrent upload is enough; four covers threaded servers."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload-hash"))
    return _pool[1]


class HashingUploadHandler(TemporaryFileUploadHandler):
    # Django's default 64 KiB makes gunicorn re-copy its buffer for every read; 1 MiB chunks
    # doubled upload throughput in bench/upload.py at no memory cost.
    chunk_size = 1024 * 1024

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):  # type: ignore[no-untyped-def]
        # Refuse early when the client announces a body we will never accept.
        if announced_too_large(content_length):
            raise TooLarge(upload_limit_message(settings.MAX_ARTIFACT_BYTES))
        return None

    def new_file(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
        super().new_file(*args, **kwargs)
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._pending: Future[None] | None = None

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self._size += len(raw_data)
        if self._size > settings.MAX_ARTIFACT_BYTES:
            self.upload_interrupted()
            raise TooLarge(upload_limit_message(settings.MAX_ARTIFACT_BYTES))
        self._wait()  # the previous chunk first: bytes stay in order, and memory bounded
        if len(raw_data) < self.chunk_size:
            # A short chunk is almost always the file's last (or only one): little or nothing follows
            # to overlap it with, and a thread would add two thread switches to every small upload.
            # (Order is kept either way: the chunk in flight was waited for above.)
            self._hash_and_write(raw_data)
            return
        self._pending = hashing_pool().submit(self._hash_and_write, raw_data)

    def _hash_and_write(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self.file.write(chunk)

    def _wait(self) -> None:
        """Until the chunk in flight is hashed and written; its error (disk full) is raised here."""
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None:
            pending.result()

    def upload_interrupted(self) -> None:
        try:
            self._wait()  # never close the file under a write in flight
        except Exception:  # noqa: BLE001 - the upload is being abandoned; its file goes next
            pass
        super().upload_interrupted()

    def file_complete(self, file_size: int) -> TemporaryUploadedFile:
        self._wait()
        self.file.seek(0)
        self.file.size = file_size
        self.file.sha256 = self._sha256.hexdigest()  # type: ignore[attr-defined]
        return self.file


@dataclass(frozen=True)
class StagedFile:
    """A complete file on local disk with its digest, ready to be inspected and stored."""

    path: Path
    filename: str
    sha256: str
    size: int

    @classmethod
    def from_upload(cls, upload: UploadedFile) -> "StagedFile":
        sha = getattr(upload, "sha256", None)
        path = Path(upload.temporary_file_path()) if hasattr(upload, "temporary_file_path") else None
        if sha is None or path is None:  # uploads not made by HashingUploadHandler (e.g. tests)
            raise ValueError("Uploads must be streamed to disk by HashingUploadHandler.")
        return cls(path=path, filename=os.path.basename(upload.name or "artifact"), sha256=sha, size=upload.size)

    @classmethod
    def from_path(cls, path: Path, filename: str | None = None) -> "StagedFile":
        """For files already on disk (commands, jobs): hash them in chunks."""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1024 * 1024), b""):
                digest.update(chunk)
        return cls(path=Path(path), filename=filename or Path(path).name, sha256=digest.hexdigest(),
                   size=Path(path).stat().st_size)
