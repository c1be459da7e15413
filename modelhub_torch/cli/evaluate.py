"""``modelhub eval``: a version's top-k answers on inputs from a file, optionally
read progressively (high-order planes first)."""

from __future__ import annotations

import argparse
from typing import Any

from modelhub_torch.cli.common import open_repo
from modelhub_torch.cli.output import Output, human_size


def cmd_eval(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.checkpoint_files import read_inputs
    from modelhub_torch.evaluation import build_module, evaluate

    repo = open_repo(args)
    v = repo.version(args.ref)
    x, y = read_inputs(args.data)
    module = build_module(args.module, v)
    r = evaluate(repo, v, module, x, y, k=args.k, progressive=args.progressive, progress=out.progress())
    doc: dict[str, Any] = {"ref": r.ref, "inputs": r.inputs, "k": r.k, "seconds": r.seconds,
                           "decided_by_planes": r.decided_by_planes, "bytes_read": r.bytes_read,
                           "bytes_full": r.bytes_full}
    lines = [f"{r.ref}: {r.inputs} inputs, top-{r.k}, {r.seconds:.2f} s"]
    if r.accuracy is not None:
        doc["accuracy"] = r.accuracy
        lines.append(f"accuracy (top-{r.k}): {r.accuracy:.4f}")
    if args.progressive:
        lines.append("decided with " + ", ".join(f"{t} plane{'s' if t != '1' else ''}: {100 * s:.1f}%"
                                                 for t, s in r.decided_by_planes.items()))
        lines.append(f"bytes read: {human_size(r.bytes_read)} of {human_size(r.bytes_full)} "
                     f"({100 * (r.bytes_read or 0) / max(1, r.bytes_full or 0):.0f}% of a full load)")
    out.emit(doc, "\n".join(lines))
    return 0
