"""Commands that move checkpoint files in and out: ``commit``, ``import``, ``export``."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelhub_torch.cli.common import CliError, open_repo
from modelhub_torch.cli.output import Output, fmt_kv, human_ratio, human_size, table, version_doc


def cmd_commit(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.checkpoint_files import lightning_meta, read_checkpoint

    obj = read_checkpoint(Path(args.file), args.allow_pickle)
    auto_metrics, auto_hparams = lightning_meta(obj)
    repo = open_repo(args)
    v = repo.commit(
        obj,
        args.model,
        parent=args.parent,
        metrics={**auto_metrics, **dict(args.metric)},
        hparams={**auto_hparams, **dict(args.hparam)},
        message=args.message,
        allow_pickle=args.allow_pickle,
        progress=out.progress(),
    )
    parent = f", parent {v.parent}" if v.parent else ""
    out.emit(version_doc(v), f"committed {v.ref} (id {v.id[:12]}{parent}): {human_size(v.raw_bytes)} raw, "
                             f"{human_size(v.stored_bytes)} stored ({human_ratio(v.ratio)})")
    return 0


def cmd_import(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.checkpoint_files import CHECKPOINT_EXTS, find_checkpoints
    from modelhub_torch.exchange import import_files

    directory = Path(args.dir)
    files = find_checkpoints(directory, args.pattern)
    if not files:
        raise CliError(f"no checkpoint files ({', '.join(CHECKPOINT_EXTS)}) in {directory} match {args.pattern!r}")
    repo = open_repo(args)
    done = import_files(repo, files, args.model, base=directory, allow_pickle=args.allow_pickle,
                        progress=out.progress())
    raw = sum(d.version.raw_bytes for d in done)
    stored = sum(d.version.stored_bytes for d in done)
    rows = [[d.file, d.version.ref, d.version.parent or "-", fmt_kv(d.version.metrics, 3)] for d in done]
    text = table(["FILE", "VERSION", "PARENT", "METRICS"], rows)
    text += (f"\nimported {len(done)} checkpoints into {args.model}: {human_size(raw)} raw, "
             f"{human_size(stored)} stored ({human_ratio(raw / stored if stored else None)})")
    out.emit([{"file": d.file, **version_doc(d.version)} for d in done], text)
    return 0


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.exchange import export_version

    r = export_version(open_repo(args), args.ref, args.out, force=args.force, allow_pickle=args.allow_pickle,
                       progress=out.progress())
    doc = {"ref": r.ref, "id": r.id, "path": str(r.path), "format": r.format, "tensors": r.tensors,
           "bytes": r.bytes, "left_out": r.left_out}
    text = f"exported {r.ref} to {r.path} ({r.tensors} tensors, {human_size(r.bytes)})"
    if r.left_out:
        text += (f"\nleft out (a {r.format} file holds the state_dict only): {', '.join(r.left_out)}; "
                 f"export to .ckpt for the whole checkpoint")
    out.emit(doc, text)
    return 0
