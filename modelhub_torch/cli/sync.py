"""``modelhub push``, ``pull`` and ``clone``: versions between two repositories."""

from __future__ import annotations

import argparse

from modelhub_torch.cli.common import open_repo
from modelhub_torch.cli.output import Output, human_size


def _emit(out: Output, report: object, verb: str) -> int:
    r = report
    moved = ", ".join(r.versions[:8]) + (f" and {len(r.versions) - 8} more" if len(r.versions) > 8 else "")
    lines = [
        f"{verb} {len(r.versions)} version(s) in {r.seconds:.1f} s: {r.objects} object(s), "
        f"{human_size(r.bytes)} moved" + (f" ({moved})" if moved else ""),
    ]
    if r.partial:
        lines.append(f"  {len(r.partial)} hold only their top {r.planes} byte plane(s); a full load fetches the rest "
                     f"from {r.source}")
    if r.skipped:
        lines.append(f"  {len(r.skipped)} already there")
    if r.tags:
        lines.append(f"  aliases: {', '.join(r.tags)}")
    out.emit(r.to_json(), "\n".join(lines))
    return 0


def cmd_push(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    return _emit(out, repo.push(args.remote, args.refs or None, progress=out.progress()), "pushed")


def cmd_pull(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    return _emit(out, repo.pull(args.remote, args.refs or None, planes=args.planes, progress=out.progress()), "pulled")


def cmd_clone(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.repository import Repository

    repo = Repository.clone(args.src, args.dst, args.refs or None, planes=args.planes, progress=out.progress())
    return _emit(out, repo.last_sync, f"cloned into {repo.url}:")
