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


def describe(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()}


def check_against_signature(arrays: dict[str, np.ndarray], signature: dict[str, Any]) -> None:
    """``x`` must fit the first input: same rank, same known trailing dims, castable dtype."""
    x = arrays["x"]
    if x.ndim == 0 or x.shape[0] == 0:
        raise DatasetMismatch("Array 'x' must have at least one example (first axis).")
    if "y" in arrays and arrays["y"].shape[:1] != x.shape[:1]:
        raise DatasetMismatch(f"'x' has {x.shape[0]} examples but 'y' has {arrays['y'].shape[0] if arrays['y'].ndim else 0}.")
    inputs = signature.get("inputs") or []
    if len(inputs) != 1:
        raise DatasetMismatch(f"The version's signature has {len(inputs)} inputs; datasets support single-input models.")
    spec = inputs[0]
    expected = spec.get("shape")
    if expected is not None:
        if len(expected) != x.ndim:
            raise DatasetMismatch(
                f"'x' has shape {list(x.shape)} (rank {x.ndim}) but input '{spec['name']}' expects rank "
                f"{len(expected)}, shape {_fmt_shape(expected)}."
            )
        for axis, (want, got) in enumerate(zip(expected[1:], x.shape[1:]), start=1):
            if want is not None and want != got:
                raise DatasetMismatch(
                    f"'x' has shape {list(x.shape)} but input '{spec['name']}' expects {_fmt_shape(expected)} "
                    f"(axis {axis}: {got} != {want})."
                )
    target = np.dtype(_numpy_dtype(spec["dtype"]))
    if not np.can_cast(x.dtype, target, casting="same_kind"):
        raise DatasetMismatch(f"'x' has dtype {x.dtype.name}, which cannot be cast to the input's {target.name}.")


def _fmt_shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + "]"


def _numpy_dtype(tf_dtype: str) -> str:
    return {"string": "object", "bfloat16": "float32"}.get(tf_dtype, tf_dtype)
