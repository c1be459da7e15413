"""``modelhub diff A B``: metrics, hparams, every tensor and the network, side by side."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from modelhub_torch.cli.common import open_repo
from modelhub_torch.cli.output import (
    Output,
    fmt_num,
    fmt_shape,
    fmt_value,
    readable_path,
    summarize_paths,
    table,
)

if TYPE_CHECKING:
    from modelhub_torch.diffing import VersionDiff


def cmd_diff(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.diffing import diff_versions

    d = diff_versions(open_repo(args), args.a, args.b, allow_pickle=args.allow_pickle, progress=out.progress())
    out.emit(d.to_json(), diff_text(d))
    return 0


def diff_text(d: VersionDiff) -> str:
    parts = [f"--- {d.a}  ({d.a_id[:12]}){_lossy_mark(d.lossy_a)}", f"+++ {d.b}  ({d.b_id[:12]}){_lossy_mark(d.lossy_b)}"]
    for title, side in (("METRIC", d.metrics), ("HPARAM", d.hparams)):
        if side:
            rows = [[k, fmt_value(s.a), fmt_value(s.b), "*" if s.differs else ""] for k, s in side.items()]
            parts.append("\n" + table([title, d.a, d.b, ""], rows))
    if d.lossy_a or d.lossy_b:
        which = " and ".join(f"{ref} ({', '.join(s)})" for ref, s in ((d.a, d.lossy_a), (d.b, d.lossy_b)) if s)
        parts.append(f"\nlossy: {which} archived lossily: tensor differences include rounding, "
                     "not only what training changed")
    if d.aligned_by == "state_dict":
        parts.append("\n(the two versions keep their weights at different places: weights matched by state_dict name)")
    if d.tensors:
        rows = []
        for t in d.tensors:
            note = ""
            if t.shape[0] != t.shape[1]:
                note = f"shape {fmt_shape(t.shape[0])} -> {fmt_shape(t.shape[1])}"
            elif t.dtype[0] != t.dtype[1]:
                note = f"dtype {t.dtype[0]} -> {t.dtype[1]}"
            rows.append([readable_path(t.name), "yes" if t.changed else "no", fmt_num(t.max_abs_diff),
                         fmt_num(t.rel_l2), note])
        parts.append("\n" + table(["TENSOR", "CHANGED", "MAX ABS DIFF", "REL L2", ""], rows, right={2, 3}))
    for label, paths in ((d.a, d.only_in_a), (d.b, d.only_in_b)):
        if paths:
            parts.append(f"only in {label}: " + summarize_paths(paths))
    parts.append(
        f"\n{len(d.changed)} changed, {len(d.unchanged)} unchanged, "
        f"{len(d.only_in_a)} only in {d.a}, {len(d.only_in_b)} only in {d.b}"
    )
    if d.network is not None:
        parts += network_text(d.network)
    return "\n".join(parts)


def _lossy_mark(schemes: list[str]) -> str:
    return f"  [lossy {', '.join(schemes)}]" if schemes else ""


def network_text(d: dict[str, Any]) -> list[str]:
    """Layers added, removed or changed between the two versions' recorded networks."""
    if not any(d[k] for k in ("added", "removed", "changed", "edges_added", "edges_removed")):
        return ["network: same layers and connections"]
    lines = ["\nnetwork:"]
    lines += [f"  + {n}" for n in d["added"]]
    lines += [f"  - {n}" for n in d["removed"]]
    for c in d["changed"]:
        changed = [k for k in ("type", "category", "kind", "attrs") if c["before"].get(k) != c["after"].get(k)]
        detail = ", ".join(
            f"{k} {c['before'].get(k)} -> {c['after'].get(k)}" if k != "attrs"
            else "attrs " + ", ".join(
                f"{a}: {c['before']['attrs'].get(a)} -> {c['after']['attrs'].get(a)}"
                for a in sorted(set(c["before"]["attrs"]) | set(c["after"]["attrs"]))
                if c["before"]["attrs"].get(a) != c["after"]["attrs"].get(a)
            )
            for k in changed
        )
        lines.append(f"  ~ {c['name']}: {detail}")
    if d["edges_added"] or d["edges_removed"]:
        lines.append(f"  connections: {len(d['edges_added'])} added, {len(d['edges_removed'])} removed")
    return lines
