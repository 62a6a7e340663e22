"""Validation of dataset ``.npz`` files: arrays ``x`` and optional ``y``, no pickles, and ``x``
shaped and typed the way the chosen model version's serving signature expects."""
from __future__ import annotations

import lzma
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from registry.archives import Limits
from registry.errors import CorruptArtifact, DatasetMismatch, UnsafeArchive

ALLOWED_ARRAYS = {"x", "y"}


def read_npz(path: Path, limits: Limits | None = None) -> dict[str, np.ndarray]:
    limits = limits or Limits.from_settings()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = {i.filename.removesuffix(".npy") for i in infos}
            unpacked = sum(i.file_size for i in infos)
            encrypted = [i.filename for i in infos if i.flag_bits & 0x1]
    except zipfile.BadZipFile as exc:
        raise CorruptArtifact(f"The dataset is not a valid .npz file: {exc}") from exc
    if encrypted:
        raise CorruptArtifact(f"The dataset .npz has encrypted members {encrypted}; save it with np.savez.")
    if unpacked > limits.max_unpacked_bytes:
        raise UnsafeArchive(f"The dataset unpacks to {unpacked} bytes, over the {limits.max_unpacked_bytes} limit.")
    if "x" not in names:
        raise DatasetMismatch(f"The .npz must contain an array named 'x' (found: {sorted(names) or 'nothing'}).")
    extra = names - ALLOWED_ARRAYS
    if extra:
        raise DatasetMismatch(f"The .npz may only contain arrays 'x' and 'y'; unexpected: {sorted(extra)}.")
    _check_declared_sizes(path, limits)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in sorted(names)}
    except ValueError as exc:
        if "allow_pickle" not in str(exc):  # e.g. "EOF: reading array data": a damaged .npy
            raise CorruptArtifact(f"The dataset .npz is corrupt: {exc}") from exc
        # numpy says "Object arrays cannot be loaded when allow_pickle=False"
        raise DatasetMismatch(
            "The dataset contains pickled Python objects, which Modelyard never loads (they can run code). "
            "Save plain numeric arrays with np.savez."
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise CorruptArtifact(f"The dataset .npz is corrupt: {exc}") from exc
    # np.load returns the raw bytes of a member that lacks the .npy header.
    not_npy = sorted(name for name, value in arrays.items() if not isinstance(value, np.ndarray))
    if not_npy:
        raise CorruptArtifact(f"The dataset .npz is corrupt: {not_npy} are not .npy arrays. Save it with np.savez.")
    return arrays


def _check_declared_sizes(path: Path, limits: Limits) -> None:
    """Zip headers can lie about sizes; the .npy header inside each member says how much memory
    numpy will allocate. Read just those headers and refuse arrays over the limit before loading."""
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as member:
                    try:
                        version = np.lib.format.read_magic(member)
                    except ValueError:
                        continue  # not an .npy: reported after loading, with the other damage
                    reader = {(1, 0): np.lib.format.read_array_header_1_0,
                              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if reader is None:
                        continue
                    shape, _fortran, dtype = reader(member)
                    total += int(np.prod(shape, dtype=np.float64)) * max(dtype.itemsize, 1)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError):
        return  # damaged: np.load below reports it as corrupt
    if total > limits.max_unpacked_bytes:
        raise UnsafeArchive(f"The dataset's arrays declare {total} bytes, over the {limits.max_unpacked_bytes} "
                            "limit (MODELYARD_MAX_UNPACKED_BYTES); refused before loading.")


def describe(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()}


def check_against_signature(arrays: dict[str, np.ndarray], signature: dict[str, Any]) -> None:
    described = {name: {"shape": list(a.shape), "dtype": a.dtype} for name, a in arrays.items()}
    check_shape_against_signature(described, signature)


def check_shape_against_signature(described: dict[str, Any], signature: dict[str, Any]) -> None:
    """``x`` must fit the first input: same rank, same known trailing dims, castable dtype.

    Works on ``describe()`` output (shapes and dtypes), so a stored dataset can be checked against
    another version without loading its arrays."""
    x_shape = list(described["x"]["shape"])
    try:
        x_dtype = np.dtype(described["x"]["dtype"])
    except TypeError:  # a stored name numpy cannot parse back (e.g. "str96"): not numeric anyway
        raise DatasetMismatch(f"'x' has dtype {described['x']['dtype']}, which is not numeric.") from None
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
    if not np.can_cast(x_dtype, target, casting="same_kind"):
        raise DatasetMismatch(f"'x' has dtype {x_dtype.name}, which cannot be cast to the input's {target.name}.")


def _fmt_shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"


def _numpy_dtype(tf_dtype: str) -> str:
    return {"string": "object", "bfloat16": "float32"}.get(tf_dtype, tf_dtype)
