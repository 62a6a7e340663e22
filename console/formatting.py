"""Numbers as people read them: bytes in KiB/MiB, accuracy in %, latency in ms, ratios as 4.0×.

Used by the templates (``console_tags``) and the SVG charts, so a page and its chart agree.
"""
from __future__ import annotations

from typing import Any

DASH = "–"


def _num(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def size(value: Any) -> str:
    """1536 -> '1.5 KiB'; binary units, three significant figures."""
    n = _num(value)
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1024
    return DASH  # unreachable


def percent(value: Any, digits: int = 2) -> str:
    """A fraction (0.9734) as '97.34 %'."""
    n = _num(value)
    return DASH if n is None else f"{n * 100:.{digits}f} %"


def points(value: Any) -> str:
    """A fraction difference (-0.012) as '-1.20 pt' (accuracy points)."""
    n = _num(value)
    return DASH if n is None else f"{n * 100:+.2f} pt"


def ms(value: Any) -> str:
    n = _num(value)
    if n is None:
        return DASH
    return f"{n:.3f} ms" if n < 1 else f"{n:.2f} ms" if n < 100 else f"{n:.0f} ms"


def ratio(value: Any) -> str:
    """parent / variant: 4.0 -> '4.00×' (4× smaller)."""
    n = _num(value)
    return DASH if n is None else f"{n:.2f}×"


def progress(value: Any) -> str:
    n = _num(value)
    return "0 %" if n is None else f"{n:.0f} %"
