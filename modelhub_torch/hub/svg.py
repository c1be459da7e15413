"""Drawings for the hub's web pages, as inline SVG text: a model's lineage, a metric over
its versions, a recorded network. Pure functions (no I/O, no torch), so the pages need
no JavaScript and the drawings can be tested as strings.

Every string that reaches the SVG (refs, messages, metric names, layer names, attrs)
comes from users, so each one goes through :func:`esc`; the callers mark the result
safe for the template, which is why nothing unescaped may ever be concatenated here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LineageNode", "esc", "lineage_svg", "metric_plot_svg", "network_svg"]

_FONT = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
_CHAR_W = 6.7  # width of one character at font-size 11 (monospace), for box sizes
_MAX_LABEL = 40  # characters shown in a box; the whole text is in its <title>


def esc(value: Any) -> str:
    """``value`` as text safe in SVG/HTML content and in double-quoted attributes."""
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int = _MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: float) -> str:
    """A coordinate: short, and never in exponent form."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _fmt(x: float) -> str:
    """A metric value as a person reads it."""
    return f"{x:.4g}"


def _arrow(marker_id: str, color: str) -> str:
    return (f'<defs><marker id="{esc(marker_id)}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/>'
            "</marker></defs>")


# ------------------------------------------------------------------ lineage
@dataclass(frozen=True)
class LineageNode:
    """One version in a lineage drawing. ``kind``: ``self`` (a version of the model the
    page shows), ``parent`` (a version of another model it was copied from) or ``child``
    (a version of another model copied from it)."""

    key: str  # the ref (model@vN), unique in the drawing; edges name nodes by it
    label: str  # the short text in the box (v3, or other@v2)
    sub: str = ""  # a second line (aliases, or the date)
    title: str = ""  # the tooltip (ref and message)
    href: str | None = None
    kind: str = "self"


_KIND_STYLE = {
    "self": ("#e8f0fe", "#1a56db", ""),
    "parent": ("#fef3e2", "#b45309", ' stroke-dasharray="4 3"'),
    "child": ("#ecfdf3", "#047857", ' stroke-dasharray="4 3"'),
}


def lineage_svg(nodes: Sequence[LineageNode], edges: Sequence[tuple[str, str]]) -> str:
    """The versions left to right, each after its parent (``edges``: parent key, child
    key); a model's own versions keep their number order on the first row, copies from
    or to other models sit beside them, joined by dashed arrows."""
    if not nodes:
        return ""
    box_w, box_h, gap_x, gap_y, pad = 118.0, 40.0, 46.0, 22.0, 12.0
    preds: dict[str, list[str]] = {}
    for src, dst in edges:
        preds.setdefault(dst, []).append(src)
    column: dict[str, int] = {}
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    last_self = -1
    for n in nodes:  # one pass in the given order: parents come before their children
        col = max((column[p] + 1 for p in preds.get(n.key, []) if p in column), default=0)
        if n.kind == "self":
            col = max(col, last_self + 1)
            last_self = col
        column[n.key] = col
        row = rows.get(col, 0)
        rows[col] = row + 1
        place[n.key] = (col, row)
    width = pad * 2 + (max(column.values()) + 1) * (box_w + gap_x) - gap_x
    height = pad * 2 + max(rows.values()) * (box_h + gap_y) - gap_y

    def xy(key: str) -> tuple[float, float]:
        col, row = place[key]
        return pad + col * (box_w + gap_x), pad + row * (box_h + gap_y)

    kinds = {n.key: n.kind for n in nodes}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{_num(width)}" '
           f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" role="img" '
           f'aria-label="lineage graph" font-family="{_FONT}" font-size="11">',
           _arrow("lineage-arrow", "#6b7280")]
    for src, dst in edges:
        if src not in place or dst not in place:
            continue
        (x1, y1), (x2, y2) = xy(src), xy(dst)
        x1, y1, y2 = x1 + box_w, y1 + box_h / 2, y2 + box_h / 2
        mid = (x1 + x2) / 2
        dash = "" if kinds[src] == kinds[dst] == "self" else ' stroke-dasharray="4 3"'
        out.append(f'<path class="edge" data-from="{esc(src)}" data-to="{esc(dst)}" '
                   f'd="M{_num(x1)},{_num(y1)} C{_num(mid)},{_num(y1)} {_num(mid)},{_num(y2)} '
                   f'{_num(x2 - 2)},{_num(y2)}" fill="none" stroke="#6b7280" stroke-width="1.4"{dash} '
                   'marker-end="url(#lineage-arrow)"/>')
    for n in nodes:
        x, y = xy(n.key)
        fill, stroke, dash = _KIND_STYLE.get(n.kind, _KIND_STYLE["self"])
        body = [f"<title>{esc(n.title or n.key)}</title>",
                f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(box_w)}" height="{_num(box_h)}" rx="6" '
                f'fill="{fill}" stroke="{stroke}" stroke-width="1.4"{dash}/>',
                f'<text x="{_num(x + box_w / 2)}" y="{_num(y + (16 if n.sub else 24))}" text-anchor="middle" '
                f'font-weight="600" fill="#111827">{esc(_clip(n.label, 17))}</text>']
        if n.sub:
            body.append(f'<text x="{_num(x + box_w / 2)}" y="{_num(y + 31)}" text-anchor="middle" '
                        f'fill="#4b5563" font-size="10">{esc(_clip(n.sub, 19))}</text>')
        group = f'<g class="node {esc(n.kind)}" data-ref="{esc(n.key)}">{"".join(body)}</g>'
        out.append(f'<a href="{esc(n.href)}">{group}</a>' if n.href else group)
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------ metrics
def metric_plot_svg(name: str, points: Sequence[tuple[int, float]], *, width: int = 320,
                    height: int = 170) -> str:
    """One metric over version numbers: a line through its finite values, a dot per
    version (its value in the tooltip); NaN and infinite values are counted below the
    plot instead of bending the scale."""
    finite = sorted((int(n), float(v)) for n, v in points if math.isfinite(float(v)))
    skipped = len(points) - len(finite)
    left, right, top, bottom = 52.0, 14.0, 24.0, 34.0
    plot_w, plot_h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="metric-plot" data-metric="{esc(name)}" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{esc(name)} by version" font-family="{_FONT}" font-size="10">',
           f"<title>{esc(name)} by version</title>",
           f'<text x="{_num(left)}" y="14" font-size="12" font-weight="600" fill="#111827">'
           f"{esc(_clip(name, 44))}</text>",
           f'<rect x="{_num(left)}" y="{_num(top)}" width="{_num(plot_w)}" height="{_num(plot_h)}" '
           'fill="#fafafa" stroke="#d1d5db"/>']
    if skipped:
        out.append(f'<text x="{_num(width - right)}" y="14" text-anchor="end" fill="#b91c1c">'
                   f"{skipped} not finite</text>")
    if not finite:
        out.append(f'<text x="{_num(left + plot_w / 2)}" y="{_num(top + plot_h / 2)}" text-anchor="middle" '
                   'fill="#6b7280">no finite values</text></svg>')
        return "".join(out)
    xs, ys = [n for n, _ in finite], [v for _, v in finite]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        spread = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - spread, y1 + spread

    inset = 8.0  # keeps the dots off the frame and the axis labels apart

    def px(n: float) -> float:
        span = plot_w - 2 * inset
        return left + inset + (span / 2 if x0 == x1 else (n - x0) / (x1 - x0) * span)

    def py(v: float) -> float:
        return top + plot_h - inset - (v - y0) / (y1 - y0) * (plot_h - 2 * inset)

    for v in (y0, y1):
        out.append(f'<text x="{_num(left - 5)}" y="{_num(py(v) + 3)}" text-anchor="end" fill="#4b5563">'
                   f"{esc(_fmt(v))}</text>")
    ticks = sorted(set(xs)) if len(set(xs)) <= 12 else [x0, x1]
    for n in ticks:
        out.append(f'<text x="{_num(px(n))}" y="{_num(top + plot_h + 13)}" text-anchor="middle" '
                   f'fill="#4b5563">v{n}</text>')
    out.append(f'<text x="{_num(left + plot_w / 2)}" y="{_num(height - 4)}" text-anchor="middle" '
               'fill="#6b7280">version</text>')
    if len(finite) > 1:
        line = " ".join(f"{_num(px(n))},{_num(py(v))}" for n, v in finite)
        out.append(f'<polyline points="{line}" fill="none" stroke="#1a56db" stroke-width="1.6"/>')
    for n, v in finite:
        out.append(f'<circle class="point" data-version="{n}" cx="{_num(px(n))}" cy="{_num(py(v))}" r="3.2" '
                   f'fill="#1a56db"><title>v{n}: {esc(_fmt(v))}</title></circle>')
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------ network
_CATEGORY_FILL = {
    "input": "#f3f4f6", "output": "#f3f4f6", "conv": "#dbeafe", "linear": "#e0e7ff",
    "pool": "#fce7f3", "bn": "#fef9c3", "ln": "#fef9c3", "gn": "#fef9c3", "dropout": "#f5f5f4",
    "attention": "#ede9fe", "embedding": "#ccfbf1", "add": "#ffedd5", "cat": "#ffedd5",
}
_ACTIVATIONS = {"relu", "leakyrelu", "elu", "gelu", "silu", "sigmoid", "tanh", "softmax"}
MAX_NETWORK_NODES = 2000  # past this a drawing is unreadable; the page says so


def network_svg(graph: dict[str, Any]) -> str:
    """A recorded network (``graph.capture_graph``'s JSON) top to bottom: each layer a
    box (name, type, the attrs ``modelhub desc`` shows, parameters), each on the row
    after the layers that feed it, arrows along the data flow."""
    from modelhub_torch.graph_view import describe_graph

    nodes = list(graph.get("nodes") or [])[:MAX_NETWORK_NODES]
    if not nodes:
        return ""
    rows_text = describe_graph({"nodes": nodes, "edges": graph.get("edges") or []})
    names = [str(n["name"]) for n in nodes]
    index = {name: i for i, name in enumerate(names)}
    edges = [(str(a), str(b)) for a, b in graph.get("edges") or [] if str(a) in index and str(b) in index]
    layer = [0] * len(nodes)
    preds: dict[int, list[int]] = {}
    for a, b in edges:
        preds.setdefault(index[b], []).append(index[a])
    for i in range(len(nodes)):  # node order is the execution order: feeders come first
        layer[i] = max((layer[p] + 1 for p in preds.get(i, []) if p < i), default=0)
    box_h, gap_x, gap_y, pad = 42.0, 18.0, 26.0, 12.0
    lines = []
    for n, row in zip(nodes, rows_text):
        head = f"{n['name']} · {n['type']}"
        detail = " ".join(x for x in (row[3], f"{int(n.get('params') or 0):,} params" if n.get("params") else "") if x)
        lines.append((_clip(head), _clip(detail)))
    widths = [max(90.0, 16 + _CHAR_W * max(len(h), len(d))) for h, d in lines]
    by_layer: dict[int, list[int]] = {}
    for i, lay in enumerate(layer):
        by_layer.setdefault(lay, []).append(i)
    row_w = {lay: sum(widths[i] for i in idx) + gap_x * (len(idx) - 1) for lay, idx in by_layer.items()}
    width = pad * 2 + max(row_w.values())
    height = pad * 2 + (max(by_layer) + 1) * (box_h + gap_y) - gap_y
    pos: dict[int, tuple[float, float]] = {}
    for lay, idx in by_layer.items():
        x = pad + (width - 2 * pad - row_w[lay]) / 2
        for i in idx:
            pos[i] = (x, pad + lay * (box_h + gap_y))
            x += widths[i] + gap_x
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="network" width="{_num(width)}" '
           f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" role="img" '
           f'aria-label="network graph" font-family="{_FONT}" font-size="11">',
           _arrow("network-arrow", "#6b7280")]
    for a, b in edges:
        i, j = index[a], index[b]
        (xa, ya), (xb, yb) = pos[i], pos[j]
        x1, y1, x2, y2 = xa + widths[i] / 2, ya + box_h, xb + widths[j] / 2, yb
        bend = (y2 - y1) / 2 if y2 > y1 else 40.0
        out.append(f'<path class="edge" data-from="{esc(a)}" data-to="{esc(b)}" '
                   f'd="M{_num(x1)},{_num(y1)} C{_num(x1)},{_num(y1 + bend)} {_num(x2)},{_num(y2 - bend)} '
                   f'{_num(x2)},{_num(y2 - 2)}" fill="none" stroke="#6b7280" stroke-width="1.3" '
                   'marker-end="url(#network-arrow)"/>')
    for i, n in enumerate(nodes):
        x, y = pos[i]
        category = str(n.get("category") or "")
        fill = "#fee2e2" if category in _ACTIVATIONS else _CATEGORY_FILL.get(category, "#ffffff")
        head, detail = lines[i]
        tip = f"{n['name']}: {n['type']} ({category}{'/' + str(n['kind']) if n.get('kind') else ''})"
        if rows_text[i][3]:
            tip += f" {rows_text[i][3]}"
        out.append(
            f'<g class="node" data-name="{esc(n["name"])}" data-category="{esc(category)}">'
            f"<title>{esc(tip)}</title>"
            f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(widths[i])}" height="{_num(box_h)}" rx="5" '
            f'fill="{fill}" stroke="#374151" stroke-width="1.1"/>'
            f'<text x="{_num(x + widths[i] / 2)}" y="{_num(y + (17 if detail else 25))}" text-anchor="middle" '
            f'font-weight="600" fill="#111827">{esc(head)}</text>'
            + (f'<text x="{_num(x + widths[i] / 2)}" y="{_num(y + 32)}" text-anchor="middle" fill="#4b5563" '
               f'font-size="10">{esc(detail)}</text>' if detail else "")
            + "</g>")
    out.append("</svg>")
    return "".join(out)
