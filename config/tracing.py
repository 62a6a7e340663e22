"""Named, nested timing spans: a public hook for benchmarks and diagnostics, free when unused.

Code marks its stages; a caller that wants their durations listens around the call::

    with tracing.span("export"):             # in product code (or @tracing.traced("export"))
        ...

    with tracing.listen(lambda path, seconds: totals.update({path: seconds})):
        services.job_run(job_id=job.pk)       # e.g. bench/optimization.py

A listener gets each finished span's path (the names of the spans it is nested in, joined by
``/``, e.g. ``register/version_create``) and its wall-clock seconds, in the order spans finish.
With no listener installed (the normal case) a span costs one context-variable read. Spans
follow the context (``contextvars``): a thread started inside does not report to the listener.
No Django here.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

Listener = Callable[[str, float], None]
F = TypeVar("F", bound=Callable[..., Any])

_listener: ContextVar[Listener | None] = ContextVar("tracing_listener", default=None)
_path: ContextVar[tuple[str, ...]] = ContextVar("tracing_path", default=())


@contextmanager
def span(name: str) -> Iterator[None]:
    """Time the block as ``name``, nested in whatever span is open around it."""
    listener = _listener.get()
    if listener is None:
        yield
        return
    path = (*_path.get(), name)
    token = _path.set(path)
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _path.reset(token)
        listener("/".join(path), elapsed)


def traced(name: str) -> Callable[[F], F]:
    """Decorator form of :func:`span` for a function whose whole body is one stage."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with span(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Report every span finished inside the block to ``listener(path, seconds)``."""
    token = _listener.set(listener)
    path_token = _path.set(())
    try:
        yield
    finally:
        _path.reset(path_token)
        _listener.reset(token)
