"""config.tracing: spans report nested paths to a listener, and nothing without one."""
from __future__ import annotations

import pytest

from config import tracing


def test_nested_spans_report_their_paths_as_they_finish() -> None:
    heard: list[tuple[str, float]] = []
    with tracing.listen(lambda path, seconds: heard.append((path, seconds))):
        with tracing.span("register"):
            with tracing.span("version_create"):
                pass
        with tracing.span("export"):
            pass
    assert [path for path, _ in heard] == ["register/version_create", "register", "export"]
    assert all(seconds >= 0 for _, seconds in heard)
    assert heard[1][1] >= heard[0][1]  # the outer span contains the inner one


def test_a_span_that_raises_is_still_reported_and_the_error_kept() -> None:
    heard: list[str] = []

    @tracing.traced("passes")
    def failing() -> None:
        raise ValueError("bad params")

    with tracing.listen(lambda path, _: heard.append(path)):
        with pytest.raises(ValueError, match="bad params"):
            failing()
        with tracing.span("after"):
            pass
    assert heard == ["passes", "after"]  # the failed span did not stay open


def test_without_a_listener_spans_only_run_the_code() -> None:
    heard: list[str] = []
    with tracing.listen(lambda path, _: heard.append(path)):
        pass

    @tracing.traced("quiet")
    def add(a: int, b: int) -> int:
        return a + b

    with tracing.span("outside"):
        assert add(2, 3) == 5
    assert heard == []
