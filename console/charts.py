"""Server-side SVG charts: a scatter with its Pareto frontier, and a version lineage graph.

No JavaScript and no chart library: the page is complete as served, works offline, and each
point is an element a test (or a screen reader, via its <title>) can find.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 320, 64, 16, 16, 48


@dataclass
class Point:
    key: str  # e.g. "v3"
    label: str  # e.g. "v3 prune"
    x: float
    y: float
    frontier: bool = False


def pareto(points: list[Point]) -> list[Point]:
    """Mark and return the points no other point beats on both axes (smaller x, larger y)."""
    frontier = []
    for p in points:
        dominated = any(q is not p and q.x <= p.x and q.y >= p.y and (q.x < p.x or q.y > p.y) for q in points)
        p.frontier = not dominated
        if p.frontier:
            frontier.append(p)
    return sorted(frontier, key=lambda p: p.x)


def _scale(lo: float, hi: float, a: float, b: float) -> Callable[[float], float]:
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    return lambda v: a + (v - lo) / (hi - lo) * (b - a)


def scatter(points: list[Point], *, title: str, x_label: str, y_label: str, chart_id: str,
            x_fmt: Callable[[Any], str], y_fmt: Callable[[Any], str]) -> SafeString:
    """A scatter of ``points``; the Pareto frontier (small x, large y) drawn as a line and ringed."""
    if not points:
        return format_html('<p class="muted">No measured versions to plot for {}.</p>', title)
    frontier = pareto(points)
    xs, ys = [p.x for p in points], [p.y for p in points]
    sx = _scale(min(xs), max(xs), PAD_L + 12, W - PAD_R - 12)
    sy = _scale(min(ys), max(ys), H - PAD_B - 12, PAD_T + 12)
    parts = [
        f'<svg class="chart" id="{chart_id}" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{chart_id}-t">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" class="plot"/>',
    ]
    for value, anchor_y in ((min(ys), H - PAD_B - 12), (max(ys), PAD_T + 12)):
        parts.append(f'<text x="{PAD_L - 6}" y="{anchor_y + 4:.1f}" class="tick" text-anchor="end">'
                     f'{escape(y_fmt(value))}</text>')
    for value, anchor_x, anchor in ((min(xs), PAD_L + 12, "start"), (max(xs), W - PAD_R - 12, "end")):
        parts.append(f'<text x="{anchor_x:.1f}" y="{H - PAD_B + 16}" class="tick" text-anchor="{anchor}">'
                     f'{escape(x_fmt(value))}</text>')
    parts.append(f'<text x="{(W + PAD_L) / 2:.0f}" y="{H - 8}" class="axis" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{(H - PAD_B) / 2:.0f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(H - PAD_B) / 2:.0f})">{escape(y_label)}</text>')
    if len(frontier) > 1:
        line = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in frontier)
        parts.append(f'<polyline class="frontier-line" points="{line}"/>')
    for p in points:
        cls = "point frontier" if p.frontier else "point"
        parts.append(
            f'<g class="{cls}" data-key="{escape(p.key)}"><circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="6">'
            f'<title>{escape(p.label)}: {escape(x_fmt(p.x))}, {escape(y_fmt(p.y))}'
            f'{" (on the Pareto frontier)" if p.frontier else ""}</title></circle>'
            f'<text x="{sx(p.x) + 8:.1f}" y="{sy(p.y) - 8:.1f}" class="label">{escape(p.key)}</text></g>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


@dataclass
class Node:
    number: int
    parent: int | None
    title: str  # e.g. "prune"
    detail: str  # e.g. "97.1 % · 12 KiB"
    href: str


NODE_W, NODE_H, GAP_X, GAP_Y = 150, 46, 40, 14


def lineage(nodes: list[Node]) -> SafeString:
    """Parent → variants as a left-to-right tree: a column per generation, one box per version."""
    if not nodes:
        return mark_safe('<p class="muted">No versions yet.</p>')
    by_number = {n.number: n for n in nodes}
    children: dict[int | None, list[Node]] = {}
    for n in sorted(nodes, key=lambda n: n.number):
        parent = n.parent if n.parent in by_number else None
        children.setdefault(parent, []).append(n)
    place: dict[int, tuple[float, float]] = {}
    row = 0

    def visit(node: Node, depth: int) -> None:
        nonlocal row
        place[node.number] = (depth * (NODE_W + GAP_X) + 4, row * (NODE_H + GAP_Y) + 4)
        row += 1
        for child in children.get(node.number, []):
            visit(child, depth + 1)

    for root in children.get(None, []):
        visit(root, 0)
    width = max(x for x, _ in place.values()) + NODE_W + 8
    height = max(y for _, y in place.values()) + NODE_H + 8
    parts = [f'<svg class="lineage" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
             f'height="{height:.0f}" role="group" aria-labelledby="lineage-t">',
             '<title id="lineage-t">Lineage: each version and the variants made from it</title>']
    for n in nodes:
        if n.parent in place:
            px, py = place[n.parent]
            x, y = place[n.number]
            parts.append(f'<path class="edge" d="M{px + NODE_W:.0f},{py + NODE_H / 2:.0f} '
                         f'C{px + NODE_W + GAP_X / 2:.0f},{py + NODE_H / 2:.0f} {x - GAP_X / 2:.0f},'
                         f'{y + NODE_H / 2:.0f} {x:.0f},{y + NODE_H / 2:.0f}"/>')
    for n in nodes:
        x, y = place[n.number]
        parts.append(
            f'<a href="{escape(n.href)}" class="node" data-version="{n.number}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}" class="n-title">v{n.number} · {escape(n.title[:16])}</text>'
            f'<text x="{x + 8:.0f}" y="{y + 36:.0f}" class="n-detail">{escape(n.detail[:24])}</text></a>')
    parts.append("</svg>")
    return mark_safe("".join(parts))
