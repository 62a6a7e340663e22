"""Safe unpacking of uploaded SavedModel archives (.zip, .tar.gz).

Every member is checked before a byte is written: no absolute paths, no ``..``, no links or
device files, a bounded member count, and a bounded total unpacked size and compression ratio
(enforced on the bytes actually decompressed, since archive headers can lie).

A zip can also be unpacked in part (``open_zip``): members are written on demand, and the ones
nobody needs are read through their decompressor (CRC, bomb budget) without being written, so an
archive is refused for the same reasons whichever members a caller writes.
"""
from __future__ import annotations

import lzma
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from django.conf import settings

from registry.errors import CorruptArtifact, UnsafeArchive

COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_unpacked_bytes: int
    max_ratio: int
    max_members: int

    @classmethod
    def from_settings(cls) -> "Limits":
        return cls(settings.MAX_UNPACKED_BYTES, settings.MAX_COMPRESSION_RATIO, settings.MAX_ARCHIVE_MEMBERS)


class _Budget:
    """Counts unpacked bytes across members and stops at the first byte over the limit."""

    def __init__(self, limits: Limits, compressed_size: int) -> None:
        # The ratio bound only starts to matter for archives bigger than 1 MiB unpacked: tiny
        # archives of sparse weights compress extremely well and are harmless.
        self.max_bytes = min(limits.max_unpacked_bytes, max(limits.max_ratio * compressed_size, 1024 * 1024))
        self.limits = limits
        self.used = 0

    def consume(self, n: int) -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise UnsafeArchive(
                f"The archive unpacks to more than {self.max_bytes} bytes (limits: "
                f"{self.limits.max_unpacked_bytes} bytes in total, {self.limits.max_ratio}x the packed size); "
                "it looks like a decompression bomb and was refused."
            )


def safe_member_path(name: str) -> PurePosixPath:
    """Validate an archive member name; return it as a relative path or raise UnsafeArchive."""
    if "\\" in name or "\x00" in name:
        raise UnsafeArchive(f"Archive member {name!r} has an invalid character in its name.")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise UnsafeArchive(f"Archive member {name!r} has an absolute path; only relative paths are allowed.")
    if ".." in path.parts:
        raise UnsafeArchive(f"Archive member {name!r} points outside the archive ('..' in its path).")
    return path


def _copy(src: IO[bytes], dest: Path, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "xb") as out:
        while chunk := src.read(COPY_CHUNK):
            budget.consume(len(chunk))
            out.write(chunk)


@contextmanager
def _zip_errors() -> Iterator[None]:
    """What zipfile and the decompressors raise on a damaged or hostile archive, as our errors."""
    try:
        yield
    except FileExistsError as exc:
        raise UnsafeArchive(f"The archive contains the same path twice: {exc.filename}") from exc
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError, zlib_error(),
            lzma.LZMAError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error on our side (e.g. disk full); bz2 reports bad data without errno
        raise CorruptArtifact(f"The zip archive is corrupt or truncated: {exc}") from exc


@dataclass
class ZipMembers:
    """An open zip whose every member passed the checks (names, links, encryption, count).

    ``write`` unpacks the members a caller selects, ``verify_rest`` reads the others through without
    writing them; all of it counts against one bomb budget."""

    zf: zipfile.ZipFile
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]]
    budget: _Budget
    done: set[str] = field(default_factory=set)

    def files(self) -> set[PurePosixPath]:
        return {rel for info, rel in self.members if not info.is_dir()}

    def top_level(self) -> list[str]:
        """The names unpacking would create at the top of the destination."""
        return sorted({rel.parts[0] for _, rel in self.members if rel.parts})

    def write(self, dest: Path, select: Callable[[PurePosixPath], bool]) -> None:
        """Unpack into ``dest`` every member not handled yet for which ``select(path)`` is true."""
        with _zip_errors():
            for info, rel in self.members:
                if info.filename in self.done or not select(rel):
                    continue
                self.done.add(info.filename)
                target = dest / rel
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with self.zf.open(info) as src:
                    _copy(src, target, self.budget)

    def verify_rest(self) -> None:
        """Read every member not written through its decompressor and CRC check, writing nothing."""
        with _zip_errors():
            for info, _ in self.members:
                if info.filename not in self.done and not info.is_dir():
                    self.done.add(info.filename)
                    with self.zf.open(info) as src:
                        _drain_to_end(src, self.budget)


@contextmanager
def open_zip(archive: Path, limits: Limits) -> Iterator[ZipMembers]:
    with _zip_errors():
        zf = zipfile.ZipFile(archive)
    with zf:
        with _zip_errors():
            infos = zf.infolist()
            _check_count(len(infos), limits)
            members, files = [], set()
            for info in infos:
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchive(f"Archive member {info.filename!r} is a symbolic link; links are not allowed.")
                if info.flag_bits & 0x1:
                    raise CorruptArtifact(f"Archive member {info.filename!r} is encrypted; upload an archive "
                                          "without a password.")
                rel = safe_member_path(info.filename)
                if not info.is_dir() and rel in files:  # caught here even for members never written
                    raise UnsafeArchive(f"The archive contains the same path twice: {rel}")
                files.add(rel)
                members.append((info, rel))
        yield ZipMembers(zf, members, _Budget(limits, archive.stat().st_size))


def extract_zip(archive: Path, dest: Path, limits: Limits) -> None:
    with open_zip(archive, limits) as members:
        members.write(dest, lambda rel: True)


def extract_tar(archive: Path, dest: Path, limits: Limits) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as tf:
            budget = _Budget(limits, archive.stat().st_size)
            count = 0
            # Stream member by member: a .tar.gz is read once, and a bomb stops at the limit.
            for member in tf:
                count += 1
                _check_count(count, limits)
                rel = safe_member_path(member.name)
                if member.issym() or member.islnk():
                    raise UnsafeArchive(
                        f"Archive member {member.name!r} is a {'symbolic' if member.issym() else 'hard'} link; "
                        "links are not allowed."
                    )
                if member.isdir():
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    src = tf.extractfile(member)
                    assert src is not None
                    _copy(src, dest / rel, budget)
                else:
                    raise UnsafeArchive(f"Archive member {member.name!r} is a device, fifo or other special file.")
            _drain_to_end(tf.fileobj, budget)
    except (tarfile.TarError, EOFError, OSError, zlib_error(), lzma.LZMAError) as exc:
        if isinstance(exc, FileExistsError):
            raise UnsafeArchive(f"The archive contains the same path twice: {exc.filename}") from exc
        raise CorruptArtifact(f"The tar archive is corrupt or truncated: {exc}") from exc


def _drain_to_end(stream: IO[bytes] | None, budget: _Budget) -> None:
    """Read the rest of a (decompressed) stream without writing it: a zip member nobody needs
    (zipfile checks its CRC at the end), or what follows the tar end-of-archive marker.

    For tar: a flipped byte inside deflated data does not always break decoding: gzip only notices it in
    the CRC at the end of the stream, which tarfile never reads because it stops at the end-of-
    archive blocks. Reading to the end makes gzip, bz2 and xz check their trailers, so a corrupt
    archive is refused as corrupt rather than as whatever garbage it decoded into. The trailing
    bytes count against the bomb budget: gigabytes of zeros after the marker are still a bomb.
    """
    if stream is None:
        return
    while chunk := stream.read(COPY_CHUNK):
        budget.consume(len(chunk))


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_members:
        raise UnsafeArchive(f"The archive has more than {limits.max_members} members (MODELYARD_MAX_ARCHIVE_MEMBERS).")


def extract(archive: Path, dest: Path, kind: str, limits: Limits | None = None) -> None:
    """Unpack ``archive`` (``zip`` or ``tar``) into the empty directory ``dest``."""
    limits = limits or Limits.from_settings()
    try:
        (extract_zip if kind == "zip" else extract_tar)(archive, dest, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        raise
