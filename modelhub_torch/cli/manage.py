"""Commands that create or change a repository: ``init``, ``copy``, ``tag``, ``verify``,
``archive``, ``gc``."""

from __future__ import annotations

import argparse
from typing import Any

from modelhub_torch.cli.common import CliError, open_repo
from modelhub_torch.cli.output import Output, fmt_num, human_size, table


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.repository import Repository

    settings = {}
    if hasattr(args, "max_load_factor"):  # absent unless given: the default lives in one place
        settings["max_load_factor"] = args.max_load_factor
    repo = Repository.init(args.path or args.repo, storage_options=getattr(args, "storage_options", None), **settings)
    factor = repo.settings["max_load_factor"]
    budget = "unbounded delta chains" if factor is None else f"every version restores within {factor:g}x a whole load"
    out.emit({"repo": repo.url, "max_load_factor": factor},
             f"initialized empty modelhub repository at {repo.url} ({budget})")
    return 0


def cmd_copy(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.inspection import storage_split

    repo = open_repo(args)
    v = repo.copy(args.ref, args.new_model, message=args.message)
    s = storage_split(repo, v)
    doc = {"ref": v.ref, "id": v.id, "parent": v.parent, "raw_bytes": v.raw_bytes, "stored_bytes": v.stored_bytes,
           "stored_anew_bytes": s.stored_anew, "shared_tensors": s.shared_tensors,
           "shared_raw_bytes": s.shared_raw_bytes, "tensors": s.tensors}
    if s.shared_tensors:
        shared = (f"{s.shared_tensors} of {s.tensors} tensors ({human_size(s.shared_raw_bytes)}) shared with "
                  f"{v.parent}")
    else:
        shared = f"no tensor shared with {v.parent}"
    out.emit(doc, f"created {v.ref} from {v.parent}: {human_size(v.raw_bytes)} of weights, "
                  f"{human_size(s.stored_anew)} stored anew, {shared}")
    return 0


def cmd_tag(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    before = repo.tags(repo.version(args.ref).model).get(args.alias)
    v = repo.tag(args.ref, args.alias)
    alias = f"{v.model}@{args.alias}"
    if before and before != v.ref:
        text = f"moved {args.alias}: {before} -> {v.ref}"
    else:
        text = f"{alias} -> {v.ref}" + (" (already there)" if before == v.ref else "")
    out.emit({"alias": alias, "ref": v.ref, "id": v.id, "previous": before}, text)
    return 0


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    problems = repo.verify(rebuild_index=args.rebuild_index, repair=args.repair, progress=out.progress())
    n = len(repo.versions())
    # after --repair, what was restored or quarantined is reported but no longer open
    open_problems = [p for p in problems if not (args.repair and not p.damage)]
    doc = {
        "ok": not open_problems,
        "versions": n,
        "index_rebuilt": bool(args.rebuild_index or args.repair),
        "repaired": bool(args.repair),
        "problems": [{"kind": p.kind, "subject": p.subject, "detail": p.detail, "damage": p.damage,
                      "action": p.action} for p in problems],
    }
    if problems:
        lines = [f"{'fixed' if args.repair and not p.damage else 'problem'}: {p}" for p in problems]
        damage = sum(p.damage for p in problems)
        lines.append(f"{len(problems)} problem{'s' * (len(problems) != 1)} found ({damage} damaging data)"
                     + ("" if args.repair or not damage else "; 'modelhub verify --repair' fixes what it can"))
        text = "\n".join(lines)
    else:
        text = f"ok: {n} version{'s' * (n != 1)} verified, every object intact"
        if args.rebuild_index:
            text += "; index rebuilt"
    out.emit(doc, text)
    return 1 if open_problems else 0



def cmd_archive(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.checkpoint_files import read_inputs
    from modelhub_torch.evaluation import agreement, build_module, load_times, top1

    repo = open_repo(args)
    if args.lossy and not args.versions:
        raise CliError("lossy archival is opt-in per version: name them with --versions REF [REF ...]")
    if args.versions and not args.lossy:
        raise CliError("--versions names the versions for --lossy; give --lossy SCHEME too")
    lossy = {ref: args.lossy for ref in args.versions}
    checks: dict[str, Any] = {}
    if args.data and lossy:
        x, y = read_inputs(args.data)
        for ref in lossy:
            v = repo.version(ref)
            checks[v.ref] = top1(repo, v, build_module(args.module, v, "archive --data"), x, y)
    before = load_times(repo, out.progress(), "before") if args.measure and not args.dry_run else []
    r = repo.archive(
        args.budget, scheme=args.scheme, algorithm=args.algorithm, lossy=lossy or None, cold=args.cold,
        hot_planes=args.hot_planes, cold_price=args.cold_price, dry_run=args.dry_run,
    )
    doc = r.to_json()
    verb = "planned" if r.dry_run else "archived"
    lines = [
        f"{verb} {r.versions} versions ({r.matrices} tensors, {r.edges} candidate edges) with {r.algorithm}, "
        f"{r.scheme} scheme, budget {r.alpha:g}x, in {r.seconds:.1f} s",
    ]
    if r.dry_run:
        lines.append(f"storage now {human_size(r.stored_before)}; the plan stores {human_size(r.planned_storage)} of "
                     "tensor data (nothing was rewritten)")
    else:
        ratio = r.stored_before / r.stored_after if r.stored_after else float("inf")
        lines.append(f"storage: {human_size(r.stored_before)} -> {human_size(r.stored_after)} ({ratio:.2f}x)")
        if r.cold_after or r.cold_before:
            hot_before, hot_after = r.stored_before - r.cold_before, r.stored_after - r.cold_after
            hot_ratio = hot_before / hot_after if hot_after else float("inf")
            lines.append(f"in the repository itself: {human_size(hot_before)} -> {human_size(hot_after)} "
                         f"({hot_ratio:.2f}x); in the cold tier: {human_size(r.cold_before)} -> "
                         f"{human_size(r.cold_after)}")
    priced = f" (cold bytes counted x{args.cold_price:g})" if args.cold or repo.settings.get("cold") else ""
    lines.append(f"tensor data under this plan {human_size(r.planned_storage)}{priced}; minimum (MST) "
                 f"{human_size(r.mst_storage)}, fastest (SPT) {human_size(r.spt_storage)}")
    lines.append(
        f"version recreation (modelled): mean {1e3 * r.recreation_mean_s:.1f} ms, worst "
        f"{1e3 * r.recreation_max_s:.1f} ms (fastest possible: mean {1e3 * r.spt_recreation_mean_s:.1f} ms, "
        f"worst {1e3 * r.spt_recreation_max_s:.1f} ms)"
    )
    if not r.feasible:
        lines.append("warning: no plan met every budget; this is the least-violating one found")
    if before:
        after = load_times(repo, out.progress(), "after")
        doc["load_before_s"] = {"mean": sum(before) / len(before), "max": max(before)}
        doc["load_after_s"] = {"mean": sum(after) / len(after), "max": max(after)}
        lines.append(
            f"measured load: mean {1e3 * doc['load_after_s']['mean']:.1f} ms, worst "
            f"{1e3 * doc['load_after_s']['max']:.1f} ms (before: mean {1e3 * doc['load_before_s']['mean']:.1f} ms, "
            f"worst {1e3 * doc['load_before_s']['max']:.1f} ms)"
        )
    if checks and not r.dry_run:
        x, y = read_inputs(args.data)
        rows, doc["accuracy"] = [], {}
        for ref, (pred0, acc0) in checks.items():
            v = repo.version(ref)
            pred1, acc1 = top1(repo, v, build_module(args.module, v, "archive --data"), x, y)
            agree = agreement(pred0, pred1)
            doc["accuracy"][ref] = {"before": acc0, "after": acc1, "agreement": agree}
            rows.append([ref, args.lossy, fmt_num(acc0), fmt_num(acc1), f"{100 * agree:.1f}%"])
        lines.append("")
        lines.append(table(["VERSION", "LOSSY", "ACC BEFORE", "ACC AFTER", "SAME TOP-1"], rows, right={2, 3, 4}))
    out.emit(doc, "\n".join(lines))
    return 0



def cmd_gc(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    r = repo.gc(dry_run=args.dry_run, repack=args.repack)
    verb = "would remove" if args.dry_run else "removed"
    text = (
        f"{verb} {r['objects_removed']} objects ({human_size(r['bytes_freed'])}), "
        f"{r['orphan_refs']} orphan refs, {r['temp_files']} temp files"
    )
    if args.repack:
        text = (f"repacked: {r['repacked_deltas']} versions re-encoded as reverse deltas, {r['repacked_versions']} "
                f"re-coded with context ({r['repacked_tensors']} tensors, {human_size(r['repack_bytes_before'])} -> "
                f"{human_size(r['repack_bytes_after'])}); " + text)
    out.emit({**r, "dry_run": bool(args.dry_run)}, text)
    return 0
