"""Reading a recorded network graph: its digest, the table desc prints, the diff of two.

Pure JSON in, JSON or text out — no torch — so commands that show a stored graph
(``desc``, ``diff``) and the index (which keys graphs by digest) start fast.
``graph.py`` captures graphs from live modules.
"""

from __future__ import annotations

import json
from typing import Any

import blake3


def graph_digest(graph: dict[str, Any]) -> str:
    """blake3 of canonical JSON, so versions with one architecture share one graph id."""
    text = json.dumps(graph, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return blake3.blake3(text.encode(), max_threads=1).hexdigest()


def _short(value: Any) -> str:
    """``[3, 3]`` as ``3x3``, unknown sizes as ``?``; scalars as they are."""
    if isinstance(value, list):
        return "x".join(_short(v) for v in value)
    return "?" if value is None else str(value)


def _same(value: Any) -> str:
    """A per-dimension value as one number when all dimensions agree (``s1``, not ``s1x1``)."""
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        return str(value[0])
    return _short(value)


def _zero(value: Any) -> bool:
    """Whether a padding is all zeros."""
    return value == 0 or (isinstance(value, list) and all(v == 0 for v in value))


def _compact(node: dict[str, Any]) -> str:
    """The attrs a reader scans for, e.g. ``3x3 s1 16->32``, ``512->10``, ``2x2 max``."""
    a, category = node["attrs"], node["category"]
    parts: list[str] = []
    if category in ("conv", "pool"):
        if a.get("adaptive"):
            parts.append("->" + _short(a.get("output_size", "?")))
        elif "kernel_size" in a:
            parts.append(_short(a["kernel_size"]))
        stride = a.get("stride")
        if stride is not None and (category == "conv" or stride != a.get("kernel_size")):
            parts.append("s" + _same(stride))
        if "padding" in a and not _zero(a["padding"]):
            parts.append("p" + _same(a["padding"]))
        if "dilation" in a and _same(a["dilation"]) != "1":
            parts.append("d" + _same(a["dilation"]))
        if a.get("groups", 1) != 1:
            parts.append(f"g{a['groups']}")
        if "in_channels" in a:
            parts.append(f"{a['in_channels']}->{a['out_channels']}")
        if node["kind"]:
            parts.append(node["kind"])
    elif category == "linear" and "out_features" in a:
        parts.append(f"{a.get('in_features', '?')}->{a['out_features']}")
    else:
        parts = [f"{k}={_short(v)}" for k, v in a.items()]
    return " ".join(parts)


def describe_graph(graph: dict[str, Any]) -> list[list[str]]:
    """Table rows [name, type, category/kind, attrs, params, next] in node order."""
    following: dict[str, list[str]] = {}
    for src, dst in graph["edges"]:
        following.setdefault(src, []).append(dst)
    rows = []
    for n in graph["nodes"]:
        category = n["category"] + (f"/{n['kind']}" if n["kind"] else "")
        rows.append(
            [
                n["name"],
                n["type"],
                category,
                _compact(n),
                str(n["params"]),
                ",".join(following.get(n["name"], [])),
            ]
        )
    return rows


def _signature(node: dict[str, Any]) -> dict[str, Any]:
    """What a node is, without where it sits: compared by ``diff_graphs``."""
    return {k: node[k] for k in ("type", "category", "kind", "attrs")}


def diff_graphs(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    """Nodes added/removed/changed (by name) and edges added/removed from ``a`` to ``b``.

    ``None`` stands for a version without a recorded graph and compares as empty.
    """
    empty: dict[str, Any] = {"nodes": [], "edges": []}
    a, b = a or empty, b or empty
    before = {n["name"]: n for n in a["nodes"]}
    after = {n["name"]: n for n in b["nodes"]}
    changed = [
        {"name": name, "before": _signature(before[name]), "after": _signature(node)}
        for name, node in after.items()
        if name in before and _signature(before[name]) != _signature(node)
    ]
    edges_a = {tuple(e) for e in a["edges"]}
    edges_b = {tuple(e) for e in b["edges"]}
    return {
        "added": [name for name in after if name not in before],
        "removed": [name for name in before if name not in after],
        "changed": changed,
        "edges_added": [list(e) for e in b["edges"] if tuple(e) not in edges_a],
        "edges_removed": [list(e) for e in a["edges"] if tuple(e) not in edges_b],
    }
