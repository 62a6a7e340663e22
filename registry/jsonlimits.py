"""Limits on JSON a user sends: how deep it nests and how many bytes it takes.

Python's ``json`` module parses and serializes recursively, so a value nested a few thousand levels
deep raises ``RecursionError`` (or, near the limit, is stored and then breaks every page that
renders it). Every JSON value a user sends -- version ``metadata``, an optimization ``recipe`` and
its ``params``, an endpoint ``profile``, a whole JSON request body -- is checked here *before* it
is parsed (``loads``) or, for values that arrive already parsed, without recursion (``check``).

The limits (README "API overview"):

* a stored JSON value nests at most ``MAX_DEPTH`` (32) levels and serializes to at most
  ``MAX_VALUE_BYTES`` (64 KiB);
* a JSON request body nests at most ``MAX_BODY_DEPTH`` (64) levels -- room for the wrapping object
  around a value, so a too-deep value is refused with the field's own message -- and is at most
  ``settings.MAX_JSON_BODY_BYTES`` (1 MiB, ``MODELYARD_MAX_JSON_BODY_BYTES``) long, else 413.
"""
from __future__ import annotations

import json
import re
from typing import Any

from django.db.models import Model, TextField
from django.db.models.functions import Cast

from registry.errors import RegistryError

MAX_DEPTH = 32
MAX_VALUE_BYTES = 64 * 1024
MAX_BODY_DEPTH = 64

# A JSON string (escapes included) or one bracket; everything else cannot change the depth.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENERS = frozenset(b"[{")


class JSONLimitError(RegistryError):
    """A JSON value nests too deep or is too long to accept."""


def _depth_error(what: str, limit: int) -> JSONLimitError:
    return JSONLimitError(f"{what} nests deeper than {limit} levels; flatten it (at most {limit} levels "
                          f"of objects and lists).", code="json_too_deep")


def scan_depth(raw: bytes | str, *, what: str, limit: int = MAX_DEPTH) -> None:
    """Raise ``JSONLimitError`` if the JSON text ``raw`` opens more than ``limit`` nested
    objects/lists. Reads the text once without building anything, and stops at the first level
    too deep, so a 100,000-deep body costs microseconds and never reaches the recursive parser."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = 0
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token[0] in _OPENERS:
            depth += 1
            if depth > limit:
                raise _depth_error(what, limit)
        elif token[0] != 0x22:  # a closing bracket ('"' starts a string)
            depth -= 1


def depth(value: Any) -> int:
    """How many objects/lists deep ``value`` nests (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check(value: Any, *, what: str, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_VALUE_BYTES) -> Any:
    """Return ``value`` if it nests at most ``max_depth`` levels and serializes to at most
    ``max_bytes`` bytes; else raise ``JSONLimitError`` (400) naming ``what``."""
    if depth(value) > max_depth:
        raise _depth_error(what, max_depth)
    size = len(json.dumps(value, separators=(",", ":"), default=str).encode())  # safe: depth is bounded
    if size > max_bytes:
        raise JSONLimitError(f"{what} is {size} bytes as JSON; the limit is {max_bytes} bytes.",
                             code="json_too_large")
    return value


def loads(raw: bytes | str, *, what: str, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_VALUE_BYTES) -> Any:
    """Parse JSON text after checking its length and depth (``json.JSONDecodeError`` if it is
    not JSON at all)."""
    if len(raw) > max_bytes:
        raise JSONLimitError(f"{what} is {len(raw)} bytes long; the limit is {max_bytes} bytes.",
                             code="json_too_large")
    scan_depth(raw, what=what, limit=max_depth)
    return json.loads(raw)


def safe_depth(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` can be rendered by recursive code (templates, ``json.dumps``) safely."""
    return depth(value) <= limit


class LimitedDecoder(json.JSONDecoder):
    """For ``json.loads(..., cls=LimitedDecoder)`` in code that only catches ``JSONDecodeError``
    (Django's ``forms.JSONField``): text over the limits is reported as undecodable."""

    def decode(self, s: str, *args: Any, **kwargs: Any) -> Any:
        try:
            if len(s) > MAX_VALUE_BYTES:
                raise JSONLimitError(f"longer than {MAX_VALUE_BYTES} bytes", code="json_too_large")
            scan_depth(s, what="The value", limit=MAX_DEPTH)
        except JSONLimitError as exc:
            raise json.JSONDecodeError(exc.message, s, 0) from None
        return super().decode(s, *args, **kwargs)


def stored_text_too_deep(raw: str | None) -> bool:
    """Whether a stored JSON text nests deeper than a value may today (written before the limits):
    such a value is shown as a note, never parsed or rendered by recursive code."""
    if raw is None:
        return False
    try:
        scan_depth(raw, what="stored value", limit=MAX_DEPTH)
    except JSONLimitError:
        return True
    return False


def stored_json(obj: Model, field: str) -> tuple[Any, bool]:
    """A row's stored JSON ``field`` as ``(value, True)``, or ``(None, False)`` when the stored text
    nests deeper than ``MAX_DEPTH`` (written before the limits): the text is read as text, so no
    recursive decoder or template ever sees a value too deep for it."""
    raw = (type(obj)._default_manager.filter(pk=obj.pk)
           .values_list(Cast(field, output_field=TextField()), flat=True).first())
    if stored_text_too_deep(raw):
        return None, False
    return (json.loads(raw) if raw is not None else None), True
