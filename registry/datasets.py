"""Validation of dataset ``.npz`` files: arrays ``x`` and optional ``y``, no pickles, and ``x``
shaped and typed the way the chosen model version's serving signature expects.

An upload is validated without building a single array (``describe_npz``): the zip's central
directory gives each member's packed and unpacked size (a bomb is refused on its ratio before
anything is decompressed), each ``.npy`` header gives the dtype and shape (pickles and oversized
arrays are refused from the header), and the data is then streamed through in 1 MiB pieces so a
damaged member (bad CRC, truncated data) is refused too. Only workers load arrays (``read_npz``).
"""
from __future__ import annotations

import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from django.conf import settings

from registry.errors import CorruptArtifact, DatasetMismatch, UnsafeArchive

ALLOWED_ARRAYS = {"x", "y"}
CHUNK = 1024 * 1024
# As for model archives (registry/archives.py): a member under 1 MiB unpacked is never a bomb,
# however well it compresses (a small all-zero array compresses several thousand times).
RATIO_FLOOR_BYTES = 1024 * 1024
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class DatasetLimits:
    max_unpacked_bytes: int
    max_ratio: int

    @classmethod
    def from_settings(cls) -> "DatasetLimits":
        return cls(settings.MAX_DATASET_UNPACKED_BYTES, settings.MAX_COMPRESSION_RATIO)


def describe_npz(path: Path, limits: DatasetLimits | None = None) -> dict[str, Any]:
    """``{"x": {"shape", "dtype"}, ...}`` of a validated .npz, read from its headers; no array is built."""
    limits = limits or DatasetLimits.from_settings()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_members(infos)
            _check_sizes(infos, path.stat().st_size, limits)
            described = {}
            for info in infos:
                with zf.open(info) as member:
                    described[info.filename.removesuffix(".npy")] = _read_member(info, member, limits)
    except zipfile.BadZipFile as exc:
        raise CorruptArtifact(f"The dataset is not a valid .npz file, or it is corrupt: {exc}") from exc
    except (OSError, EOFError, zlib.error, lzma.LZMAError, NotImplementedError) as exc:
        raise CorruptArtifact(f"The dataset .npz is corrupt: {exc}") from exc
    return dict(sorted(described.items()))


def _check_members(infos: list[zipfile.ZipInfo]) -> None:
    encrypted = [i.filename for i in infos if i.flag_bits & 0x1]
    if encrypted:
        raise CorruptArtifact(f"The dataset .npz has encrypted members {encrypted}; save it with np.savez.")
    names = [i.filename.removesuffix(".npy") for i in infos]
    if "x" not in names:
        raise DatasetMismatch(f"The .npz must contain an array named 'x' (found: {sorted(names) or 'nothing'}).")
    extra = set(names) - ALLOWED_ARRAYS
    if extra:
        raise DatasetMismatch(f"The .npz may only contain arrays 'x' and 'y'; unexpected: {sorted(extra)}.")
    if len(names) != len(set(names)):
        raise CorruptArtifact("The dataset .npz holds the same array twice; save it with np.savez.")


def _check_sizes(infos: list[zipfile.ZipInfo], archive_size: int, limits: DatasetLimits) -> None:
    """From the central directory, before anything is decompressed (zipfile then holds every
    member to the sizes declared here: more data fails its CRC, less is truncated)."""
    if sum(i.compress_size for i in infos) > archive_size:
        raise CorruptArtifact("The dataset .npz is corrupt: its members claim more bytes than the file holds.")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
            raise UnsafeArchive(
                f"Array {info.filename!r} unpacks to {info.file_size} bytes from {info.compress_size}: "
                f"{ratio:,.0f}x its packed size, over the {limits.max_ratio}x limit (MODELYARD_MAX_COMPRESSION_RATIO). "
                "It looks like a decompression bomb and was refused.")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > limits.max_unpacked_bytes:
        raise UnsafeArchive(f"The dataset unpacks to {unpacked} bytes, over the limit of {limits.max_unpacked_bytes} "
                       "bytes (MODELYARD_MAX_DATASET_UNPACKED_BYTES).")


def _read_member(info: zipfile.ZipInfo, member: IO[bytes], limits: DatasetLimits) -> dict[str, Any]:
    """The member's shape and dtype from its .npy header, after streaming through its data."""
    name = info.filename
    try:
        version = np.lib.format.read_magic(member)
        reader = HEADER_READERS.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _fortran, dtype = reader(member)
    except ValueError as exc:
        raise CorruptArtifact(f"The dataset .npz is corrupt: {name!r} is not a .npy array ({exc}). "
                              "Save it with np.savez.") from exc
    if dtype.hasobject:
        raise DatasetMismatch(
            f"The dataset's {name!r} contains pickled Python objects, which Modelyard never loads (they can run "
            "code). Save plain numeric arrays with np.savez.")
    declared = _product(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow
    if declared > limits.max_unpacked_bytes:
        raise UnsafeArchive(f"The dataset's {name!r} declares an array of shape {list(shape)} ({declared} bytes), over "
                       f"the limit of {limits.max_unpacked_bytes} bytes (MODELYARD_MAX_DATASET_UNPACKED_BYTES); "
                       "refused before loading.")
    header = member.tell()
    if header + declared != info.file_size:
        raise CorruptArtifact(f"The dataset .npz is corrupt: {name!r} declares {declared} bytes of data but holds "
                              f"{info.file_size - header}.")
    while member.read(CHUNK):  # decompress and CRC-check, a piece at a time
        pass
    return {"shape": [int(d) for d in shape], "dtype": dtype.name}


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def read_npz(path: Path, limits: DatasetLimits | None = None) -> dict[str, np.ndarray]:
    """Load the arrays of a dataset (in a worker: this allocates what the headers declare)."""
    names = describe_npz(path, limits)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in names}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise CorruptArtifact(f"The dataset .npz is corrupt: {exc}") from exc


def describe(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()}


def check_against_signature(arrays: dict[str, np.ndarray], signature: dict[str, Any]) -> None:
    check_shape_against_signature(describe(arrays), signature)


def check_shape_against_signature(described: dict[str, Any], signature: dict[str, Any]) -> None:
    """``x`` must fit the first input: same rank, same known trailing dims, castable dtype.

    Works on ``describe()`` output (shapes and dtypes), so a stored dataset can be checked against
    another version without loading its arrays."""
    x_shape = list(described["x"]["shape"])
    try:
        x_dtype: np.dtype[Any] | None = np.dtype(described["x"]["dtype"])
    except TypeError:  # a name numpy cannot parse back (e.g. "str96"): not numeric anyway
        x_dtype = None
    if not x_shape or x_shape[0] == 0:
        raise DatasetMismatch("Array 'x' must have at least one example (first axis).")
    if "y" in described and described["y"]["shape"][:1] != x_shape[:1]:
        y_len = described["y"]["shape"][0] if described["y"]["shape"] else 0
        raise DatasetMismatch(f"'x' has {x_shape[0]} examples but 'y' has {y_len}.")
    inputs = signature.get("inputs") or []
    if len(inputs) != 1:
        raise DatasetMismatch(f"The version's signature has {len(inputs)} inputs; datasets support single-input models.")
    spec = inputs[0]
    expected = spec.get("shape")
    if expected is not None:
        if len(expected) != len(x_shape):
            raise DatasetMismatch(
                f"'x' has shape {x_shape} (rank {len(x_shape)}) but input '{spec['name']}' expects rank "
                f"{len(expected)}, shape {_fmt_shape(expected)}."
            )
        for axis, (want, got) in enumerate(zip(expected[1:], x_shape[1:]), start=1):
            if want is not None and want != got:
                raise DatasetMismatch(
                    f"'x' has shape {x_shape} but input '{spec['name']}' expects {_fmt_shape(expected)} "
                    f"(axis {axis}: {got} != {want})."
                )
    target = np.dtype(_numpy_dtype(spec["dtype"]))
    if x_dtype is None or not np.can_cast(x_dtype, target, casting="same_kind"):
        raise DatasetMismatch(f"'x' has dtype {described['x']['dtype']}, which cannot be cast to the input's "
                              f"{target.name}.")


def _fmt_shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"


def _numpy_dtype(tf_dtype: str) -> str:
    return {"string": "object", "bfloat16": "float32"}.get(tf_dtype, tf_dtype)
