"""Commands that read what a repository holds: ``list``, ``desc``, ``query``, ``stats``."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import TYPE_CHECKING

from modelhub_torch.cli.common import CliError, aliases_by_ref, open_repo
from modelhub_torch.cli.output import (
    Output,
    fmt_cell,
    fmt_kv,
    fmt_shape,
    human_ratio,
    human_size,
    readable_path,
    table,
    version_doc,
    version_flags,
)

if TYPE_CHECKING:
    from modelhub_torch.repository import Version


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    every = repo.versions()
    models = sorted({v.model for v in every})
    if args.model is not None and args.model not in models:
        close = difflib.get_close_matches(args.model, models, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CliError(f"no model named {args.model!r}{hint} (models: {', '.join(models) or 'none yet'})")
    shown = [v for v in every if args.model is None or v.model == args.model]
    aliases = aliases_by_ref(repo, [args.model] if args.model else models)
    by_ref = {v.ref: v for v in shown}
    children: dict[str, list[Version]] = {}
    for v in shown:
        if v.parent in by_ref:
            children.setdefault(v.parent, []).append(v)
    for kids in children.values():
        kids.sort(key=lambda v: (v.model, v.number))

    # lineage: a same-model chain stays in one column; branches (a fine-tune in another
    # model, or a second child) are indented under the version they start from
    lines: list[tuple[str, Version]] = []

    def render(start: Version, depth: int) -> None:
        node: Version | None = start
        first = True
        while node is not None:
            prefix = "" if depth == 0 else "   " * (depth - 1) + ("└─ " if first else "   ")
            lines.append((prefix, node))
            kids = children.get(node.ref, [])
            cont = next((k for k in kids if k.model == node.model and k.number > node.number), None)
            for k in kids:
                if k is not cont:
                    render(k, depth + 1)
            node, first = cont, False

    for v in shown:
        if v.parent not in by_ref:
            render(v, 0)

    doc = {
        "models": [
            {
                "name": m,
                "versions": sum(1 for v in every if v.model == m),
                "latest": max((v for v in every if v.model == m), key=lambda v: v.number).ref,
                "aliases": repo.tags(m),
            }
            for m in models
            if args.model is None or m == args.model
        ],
        "versions": [
            {**version_doc(v, aliases.get(v.ref, [])), "children": [k.ref for k in children.get(v.ref, [])]}
            for v in shown
        ],
    }
    if not shown:
        out.emit(doc, "no versions yet; store one with 'modelhub commit FILE --model NAME'")
        return 0
    rows = []
    for prefix, v in lines:
        label = prefix + v.ref
        if aliases.get(v.ref):
            label += f" ({', '.join(aliases[v.ref])})"
        if v.parent and v.parent not in by_ref:
            label += f" <- {v.parent}"
        label += "".join(f" [{flag}]" for flag in version_flags(v))
        rows.append([
            label, v.id[:8], v.created_at[:16].replace("T", " "),
            human_size(v.raw_bytes), human_size(v.stored_bytes), human_ratio(v.ratio),
            fmt_kv(v.metrics, 4),
        ])
    raw = sum(v.raw_bytes for v in shown)
    stored = sum(v.stored_bytes for v in shown)
    n_models = len(doc["models"])
    text = table(["VERSION", "ID", "CREATED (UTC)", "RAW", "STORED", "RATIO", "METRICS"], rows, right={3, 4, 5})
    text += (
        f"\n{n_models} model{'s' * (n_models != 1)}, {len(shown)} version{'s' * (len(shown) != 1)}: "
        f"{human_size(raw)} raw, {human_size(stored)} stored ({human_ratio(raw / stored if stored else None)})"
    )
    out.emit(doc, text)
    return 0

def cmd_desc(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.inspection import describe_version

    repo = open_repo(args)
    v = repo.version(args.ref)
    c = describe_version(repo, v)
    aliases = aliases_by_ref(repo, [v.model]).get(v.ref, [])
    doc = {
        **version_doc(v, aliases),
        "tensors": [dataclasses.asdict(t) for t in c.tensors],
        "total_params": c.total_params,
        "total_elements": c.total_elements,
        "plane_bytes": c.plane_bytes,
        "manifest_bytes": c.manifest_bytes,
        "lossy": c.lossy or None,
        "graph": c.graph,
    }
    head = [
        ["ref:", v.ref + (f" ({', '.join(aliases)})" if aliases else "")],
        ["id:", v.id],
        ["parent:", v.parent or "-"],
        ["created:", v.created_at],
        *([["resume:", {True: "yes (trainer state kept)",
                        False: "no: weights only (trainer state pruned); resume from a version marked yes"}[v.resumable]]]
          if v.resumable is not None else []),
        *([["pickle:", "holds pickled objects: a full load needs weights_only=False / --allow-pickle, "
                       "which runs code they import: " + (c.pickle_imports or "-")]] if v.holds_pickle else []),
        ["message:", v.message or "-"],
        ["metrics:", fmt_kv(v.metrics) or "-"],
        ["hparams:", fmt_kv(v.hparams) or "-"],
    ]
    if c.lossy:
        head.append(["lossy:", f"{', '.join(c.lossy)} — archived lossily: its float tensors are rounded "
                               "values, not the bits committed"])
    text = "\n".join(f"{k:<9} {val}" for k, val in head) + "\n\n"
    rows = []
    for t in c.tensors:
        how = t.stored + (f" ({readable_path(t.base, 40)})" if t.base else "")
        rows.append([readable_path(t.path), t.dtype, fmt_shape(t.shape), f"{t.params:,}", human_size(t.stored_bytes), how])
    text += table(["TENSOR", "DTYPE", "SHAPE", "PARAMS", "STORED", "HOW"], rows, right={3, 4}) + "\n\n"
    what = "in the state_dict" if c.has_state_dict else "in all tensors"
    text += f"{c.total_params:,} parameters {what} ({len(c.tensors)} tensors, {c.total_elements:,} elements)\n"
    text += f"{human_size(v.raw_bytes)} raw, {human_size(v.stored_bytes)} stored ({human_ratio(v.ratio)})"
    text += " [lossy]\n" if c.lossy else "\n"
    planes = c.plane_bytes
    plane_txt = ", ".join(
        f"plane {p}{' (high)' if p == 0 and len(planes) > 1 else ''}: {human_size(b)}" for p, b in enumerate(planes)
    )
    text += f"stored per plane: {plane_txt or 'nothing of its own'}; manifest {human_size(c.manifest_bytes)}"
    if c.graph:
        from modelhub_torch.graph_view import describe_graph

        text += f"\n\nnetwork ({len(c.graph['nodes'])} nodes, captured by {c.graph['method']}):\n"
        text += table(["NODE", "TYPE", "LAYER", "SHAPE", "PARAMS", "NEXT"],
                      [[readable_path(r[0], 40), *r[1:5], readable_path(r[5], 40)] for r in describe_graph(c.graph)],
                      right={4})
    out.emit(doc, text)
    return 0


def cmd_query(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    if args.list:
        saved = repo.saved_queries()
        out.emit(saved, "\n".join(f"{name}: {text}" for name, text in saved.items()) or "no saved statements")
        return 0
    if args.text is None:
        raise CliError("give a DQL statement, e.g. modelhub query 'select m where m.metrics.val_acc > 0.9'")
    if args.save:
        repo.save_query(args.save, args.text)
        out.emit({"saved": args.save, "text": args.text},
                 f"saved as {args.save!r}; run it from another statement with: from \"{args.save}\"")
        return 0
    result = repo.query(args.text, executor=args.executor, workers=args.workers, imports=args.imports,
                        dry_run=args.dry_run)
    docs = result.to_dicts()
    extra = [c for c in result.columns if c not in ("ref", "name", "version", "created", "params", "size")]
    if result.statement == "evaluate" and args.dry_run:
        text = table([c.upper() for c in extra], [[fmt_cell(d[c]) for c in extra] for d in docs])
        text += f"\n{len(docs)} trial{'s' if len(docs) != 1 else ''} (dry run: nothing trained)"
        out.emit({"columns": extra, "rows": docs}, text)
        return 0
    rows = [
        [d["ref"] or "-", *(fmt_cell(d[c]) for c in extra), f"{d['params']:,}" if d["params"] is not None else "-",
         human_size(d["size"]) if d["size"] is not None else "-",
         d["created"][:16].replace("T", " ") if d["created"] else "-"]
        for d in docs
    ]
    text = table(["VERSION", *(c.upper() for c in extra), "PARAMS", "STORED", "CREATED (UTC)"], rows,
                 right=set(range(1, len(extra) + 3)))
    noun = "trial" if result.statement == "evaluate" else "version"
    text += f"\n{len(docs)} {noun}{'s' if len(docs) != 1 else ''}"
    out.emit({"columns": result.columns, "rows": docs}, text)
    return 0


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    s = repo.stats()
    rows = [
        [m, str(pm["versions"]), human_size(pm["raw_bytes"]), human_size(pm["stored_bytes"]),
         human_ratio(pm["raw_bytes"] / pm["stored_bytes"] if pm["stored_bytes"] else None)]
        for m, pm in sorted(s["per_model"].items())
    ]
    rows.append(["total", str(s["versions"]), human_size(s["raw_bytes"]), human_size(s["stored_bytes"]), human_ratio(s["ratio"])])
    text = table(["MODEL", "VERSIONS", "RAW", "STORED", "RATIO"], rows, right={1, 2, 3, 4})
    planes = s["planes"]
    if planes:
        total = sum(planes.values()) or 1
        prow = [
            [f"{p}{' (high)' if p == 0 and len(planes) > 1 else ''}", human_size(b), f"{100 * b / total:.1f}%"]
            for p, b in sorted(planes.items())
        ]
        text += "\n\n" + table(["PLANE", "STORED", "SHARE"], prow, right={1, 2})
    out.emit(s, text)
    return 0
