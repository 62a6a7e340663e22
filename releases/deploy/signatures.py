"""Whether a new serving signature keeps the clients of the old one working. Django-free.

A tensor is ``(dtype, shape)`` with ``shape`` a tuple of dims (None or a negative number: any
size) or None (any rank). Clients of the old version keep working when the new one takes the same
input names with the same dtypes and compatible shapes, and still gives every old output with the
same dtype and a compatible shape (extra outputs are fine).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Tensors = Mapping[str, tuple[str, Sequence[int | None] | None]]


def _shape_text(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "any shape"
    return "[" + ", ".join("?" if d is None or d < 0 else str(d) for d in shape) + "]"


def shapes_compatible(old: Sequence[int | None] | None, new: Sequence[int | None] | None) -> bool:
    if old is None or new is None:
        return True
    if len(old) != len(new):
        return False
    return all(a is None or b is None or a < 0 or b < 0 or a == b for a, b in zip(old, new))


def differences(old_inputs: Tensors, old_outputs: Tensors, new_inputs: Tensors, new_outputs: Tensors,
                *, old_name: str = "the live version") -> list[str]:
    """Every change that breaks a client of the old signature, spelled out; [] when compatible."""
    problems = []
    for name in sorted(set(old_inputs) - set(new_inputs)):
        problems.append(f"input {name!r} is gone ({old_name} takes it)")
    for name in sorted(set(new_inputs) - set(old_inputs)):
        problems.append(f"new input {name!r} ({old_name}'s clients do not send it)")
    for kind, old_side, new_side in (("input", old_inputs, new_inputs), ("output", old_outputs, new_outputs)):
        for name in sorted(set(old_side) & set(new_side)):
            (old_dtype, old_shape), (new_dtype, new_shape) = old_side[name], new_side[name]
            if old_dtype != new_dtype:
                problems.append(f"{kind} {name!r} is {new_dtype}, {old_name} has {old_dtype}")
            elif not shapes_compatible(old_shape, new_shape):
                problems.append(f"{kind} {name!r} has shape {_shape_text(new_shape)}, {old_name} has "
                                f"{_shape_text(old_shape)}")
    for name in sorted(set(old_outputs) - set(new_outputs)):
        problems.append(f"output {name!r} is gone ({old_name} gives it)")
    return problems


def from_document(tensors: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, tuple | None]]:
    """The registry's signature document (``[{"name", "dtype", "shape"}]``) as ``Tensors``."""
    return {t["name"]: (str(t.get("dtype")), None if t.get("shape") is None else tuple(t["shape"]))
            for t in tensors}


def from_served(tensors: Mapping[str, Any]) -> dict[str, tuple[str, tuple | None]]:
    """TF Serving's metadata (``releases.tfserving.TensorSpecInfo`` by name) as ``Tensors``."""
    return {name: (spec.dtype, spec.shape) for name, spec in tensors.items()}
