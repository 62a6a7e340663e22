"""Content-addressed, write-once blob store behind Django's storage API.

A blob's name is its sha256 (``ab/cd/abcdef...``). Identical content is stored once. Blobs are
never overwritten: ``put`` links the staged file into place, which fails if the name exists.
Reads verify the digest so damaged bytes are never served as if they were the model.
"""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage, storages

from registry.errors import IntegrityFailure, NotFound

CHUNK = 1024 * 1024


class BlobStorage(FileSystemStorage):
    @staticmethod
    def blob_name(sha256: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def blob_path(self, sha256: str) -> Path:
        return Path(self.path(self.blob_name(sha256)))

    def has_blob(self, sha256: str) -> bool:
        return self.exists(self.blob_name(sha256))

    def put(self, staged_path: Path, sha256: str) -> bool:
        """Store the staged file under its digest. Returns True if this call created the blob.

        A hard link is atomic and never replaces an existing name, so two uploads of the same
        bytes cannot clobber each other. Only files staged in the upload directory (which this
        process owns and deletes) are linked; any other file is copied first, so a caller that later
        rewrites its file cannot change a stored blob.
        """
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _is_staged_upload(staged_path):
            return self._put_copy(staged_path, target, sha256)
        try:
            os.link(staged_path, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return self._put_copy(staged_path, target, sha256)
        os.chmod(target, 0o440)
        return True

    def _put_copy(self, staged_path: Path, target: Path, sha256: str) -> bool:
        """Copy next to the blobs first (fsynced), then link into place."""
        if target.exists():
            return False
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(staged_path, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:  # the file changed after it was hashed
                raise IntegrityFailure(f"{staged_path.name} changed while it was being stored; nothing was stored.")
            try:
                os.link(tmp_name, target)
            except FileExistsError:
                return False
            os.chmod(target, 0o440)
            return True
        finally:
            os.unlink(tmp_name)

    def discard(self, sha256: str) -> None:
        """Remove a blob this process just created for a write that was then rolled back."""
        try:
            self.blob_path(sha256).unlink()
        except FileNotFoundError:
            pass

    def verify(self, sha256: str, expected_size: int | None = None) -> Path:
        """Return the blob's path after checking its bytes still hash to ``sha256``."""
        path = self.blob_path(sha256)
        if not path.exists():
            raise NotFound(f"The artifact blob {sha256} is missing from the store.", code="blob_missing")
        if expected_size is not None and path.stat().st_size != expected_size:
            raise IntegrityFailure(
                f"The stored artifact {sha256} has {path.stat().st_size} bytes, expected {expected_size}: "
                "the blob store is damaged."
            )
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise IntegrityFailure(
                f"The stored artifact no longer matches its digest {sha256} (found {digest.hexdigest()}): "
                "the blob store is damaged."
            )
        return path


def _is_staged_upload(path: Path) -> bool:
    upload_dir = Path(settings.FILE_UPLOAD_TEMP_DIR).resolve()
    return Path(path).resolve().parent == upload_dir


def artifact_store() -> BlobStorage:
    store = storages["artifacts"]
    assert isinstance(store, BlobStorage)
    return store
