"""The API's JSON renderer: DRF's output, written by orjson.

A page of 50 versions carries ~150 JSON documents (signatures, framework versions, metadata) and
its rendering was a tenth of the request's CPU with the standard library's encoder; orjson writes
the same JSON several times faster. What the client receives is the same document: compact, UTF-8,
U+2028/U+2029 escaped as DRF does, datetimes and every other non-JSON type through DRF's own
encoder (``default``). Two deliberate differences from ``json.dumps``: a float is written in its
shortest form (``1e-7``, not ``1e-07``: the same number), and NaN or infinity become ``null``
instead of failing the whole response with a 500 (DRF's ``STRICT_JSON``). ``; indent=N`` in the
Accept header still pretty-prints, through DRF's renderer.
"""
from __future__ import annotations

from typing import Any

import orjson
from rest_framework import renderers
from rest_framework.utils.encoders import JSONEncoder

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_drf_default = JSONEncoder().default  # datetimes as DRF writes them ("…Z"), lazy strings, decimals, …


def dumps(data: Any) -> bytes:
    """``data`` as the API writes JSON (compact UTF-8, DRF's representation of non-JSON types)."""
    text = orjson.dumps(data, default=_drf_default, option=_OPTIONS)
    # A JavaScript string literal may not hold these two: escaped, as DRF's renderer does.
    if b"\xe2\x80\xa8" in text or b"\xe2\x80\xa9" in text:
        text = text.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
    return text


class JSONRenderer(renderers.JSONRenderer):
    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: dict[str, Any] | None = None) -> bytes:
        if data is None:
            return b""
        if self.get_indent(accepted_media_type, renderer_context or {}) is not None:
            return super().render(data, accepted_media_type, renderer_context)
        return dumps(data)
