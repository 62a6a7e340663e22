"""The API's JSON (orjson, registry/renderers.py) is the document DRF's renderer wrote: checked on
real answers, byte for byte where DRF's own renderer can be asked for the same data."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest
from rest_framework.renderers import JSONRenderer as DRFJSONRenderer

from registry import services
from registry.renderers import JSONRenderer, dumps
from registry.serializers import json_value
from tests.conftest import upload


def test_the_same_bytes_as_drfs_renderer_for_what_the_api_sends():
    data = {"name": "digits", "when": datetime(2026, 12, 5, 2, 3, 4, 567891, tzinfo=timezone.utc),
            "tags": ("a", "b"), "n": 3, "ratio": 0.25, "none": None, "nested": [{"é": "ü"}], "ok": True}
    assert dumps(data) == DRFJSONRenderer().render(data)
    assert b'"when":"2026-12-05T02:03:04.567891Z"' in dumps(data)


def test_line_and_paragraph_separators_are_escaped_as_drf_does():
    data = {"text": "a\u2028b\u2029c"}
    assert dumps(data) == DRFJSONRenderer().render(data) == b'{"text":"a\\u2028b\\u2029c"}'


def test_nan_is_null_where_drf_would_fail_the_response():
    with pytest.raises(ValueError):
        DRFJSONRenderer().render({"x": math.nan})
    assert json.loads(dumps({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}


def test_a_stored_nan_is_read_back_as_the_jsonfield_reads_it():
    # Python's json writes NaN (JSONField's default encoder); orjson refuses it: the fallback parses it.
    assert math.isnan(json_value('{"loss": NaN}')["loss"]) and json_value(None) is None
    assert json_value('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}


def test_indent_in_the_accept_header_still_pretty_prints():
    text = JSONRenderer().render({"a": 1}, "application/json; indent=2", {})
    assert text == b'{\n  "a": 1\n}'


@pytest.mark.django_db
def test_a_version_page_carries_metadata_exactly(api, alice, registered, artifacts):
    upload(api, "digits", artifacts["tflite"])
    version = registered.versions.get(number=1)
    metadata = {"note": "line\u2028sep", "unicode": "é✓", "deep": {"list": [1, 2.5, None, True]}}
    services.version_update(version=version, actor=alice, metadata=metadata)
    response = api.get("/api/v1/models/digits/versions/")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert b"\\u2028" in response.content and "é✓".encode() in response.content
    [row] = response.json()["results"]
    assert row["metadata"] == metadata
    assert row == api.get("/api/v1/models/digits/versions/1/").json()
