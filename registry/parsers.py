"""The API's JSON parser: DRF's, but a body nested too deep is refused before it is parsed.

``json.load`` recurses once per level, so a body like ``[[[[...]]]]`` 5,000 deep raised
``RecursionError`` (a 500) inside the parser. This one scans the nesting first
(``jsonlimits.scan_depth``, no recursion) and answers 400 ``json_too_deep``. The body's length is
bounded before this runs: DRF reads JSON through ``request.body``, which Django caps at
``DATA_UPLOAD_MAX_MEMORY_SIZE`` (a 413 in the error shape, see ``api_common``).
"""
from __future__ import annotations

import io
from typing import Any, BinaryIO

from rest_framework import parsers

from registry import jsonlimits


class JSONParser(parsers.JSONParser):
    def parse(self, stream: BinaryIO, media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> Any:
        raw = stream.read() if stream is not None else b""
        jsonlimits.scan_depth(raw, what="The JSON body", limit=jsonlimits.MAX_BODY_DEPTH)
        return super().parse(io.BytesIO(raw), media_type, parser_context)
