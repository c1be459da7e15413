"""Repack: the coding a commit leaves out to stay fast, done later — on a background
thread after each commit (the default), or by ``gc --repack``, as git packs loose
objects.

Two passes per model. First, a version still stored whole whose child (same model)
exists is re-encoded as a reverse delta against that child, as a ``repack: "commit"``
commit would have done, unless that takes a version reading it past the recreation
budget (``max_load_factor``) or it is a keyframe. Then plain deltas are re-coded with
their neighbouring delta as context — the delta of the base against *its* base, which
predicts each weight's step (Adam's per-weight step size drifts slowly) — where that
is smaller and within the budget (context-coded planes decode about half as fast).
Each version moves to its new manifest by one atomic ref switch, as a commit's parent
does: a crash at any point leaves every version loadable, and gc reclaims what an
interrupted repack wrote; the next repack finishes the job.

On a remote store written by several processes, a repack of a model first takes that
model's lease (store/lease.py); a process that finds it held skips the model (the
holder, or the next repack, covers its versions), and one whose lease was taken over
stops before its next switch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelhub_torch.budget import estimate, leaning_on, record_cost
from modelhub_torch.commit import copy_unchanged, over_budget, within_budget
from modelhub_torch.errors import ModelHubError
from modelhub_torch.manifest import Manifest
from modelhub_torch.pas import codec
from modelhub_torch.publish import switch
from modelhub_torch.reader import TensorReader, open_reader
from modelhub_torch.store.lease import Lease, model_lease
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.writer import PackSet, encode_all, encoded_size, record_size

# context coding pays for its per-context tables only on bigger tensors: below this it
# gained < 0.5% on the digits trajectory
CONTEXT_MIN_BYTES = 1 << 16


@dataclass
class RepackReport:
    """What a repack changed: versions re-encoded, tensors re-coded, stored bytes of
    the re-coded records before and after, and versions skipped for the budget."""

    deltas: int = 0  # versions re-encoded as reverse deltas against their child
    versions: int = 0  # versions re-coded with context
    tensors: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    over_budget: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # models another process was repacking


def repack(store: RepoStore, models: list[str] | None = None, newest: int | None = None) -> RepackReport:
    """Reverse deltas for versions still stored whole, then context re-codes, all
    within the budget (takes the store's lock). ``newest``: only the newest versions
    of each model (what a commit just changed: its parent and grandparent)."""
    report = RepackReport()
    with store.lock, store.writes("repack"):
        store.sync_index()
        reader = open_reader(store, cache_bytes=0)
        for model in models if models is not None else store.refs.models():
            with model_lease(store.loc, model, shared=not store.lock.across_processes) as lease:
                if lease.held:
                    with store.pinned():  # nobody else rewrites this model's versions now
                        _repack_model(store, reader, model, newest, lease, report)
                else:
                    report.skipped.append(model)
    return report


def _repack_model(
    store: RepoStore, reader: TensorReader, model: str, newest: int | None, lease: Lease, report: RepackReport
) -> None:
    numbers = store.refs.listed_numbers(model)
    vids = [store.refs.version_at_or_none(model, n) for n in numbers[-newest if newest else 0:]]
    vids = [v for v in vids if v is not None]
    for parent, child in itertools.pairwise(vids):
        if not lease.renew():
            return  # another process took the model over: it finishes the job
        try:
            _reverse_delta(store, reader, parent, child, report)
        except ModelHubError:
            continue  # damaged: verify reports it; repack leaves it as it is
    if not store.settings.get("context_coding", True):
        return
    for vid in vids:
        if not lease.renew():
            return
        try:
            _repack_version(store, reader, vid, report)
        except ModelHubError:
            continue


def _reverse_delta(store: RepoStore, reader: TensorReader, pid: str, cid: str, report: RepackReport) -> None:
    """Re-encode version ``pid``, stored whole, as reverse deltas against its child."""
    p, c = store.manifest(pid), store.manifest(cid)
    if c.parent != p.id or c.model != p.model or p.extra.get("lossy") or p.partial or c.partial:
        return
    if any(_links_to(r["data"], p.id) for r in c.tensors):
        return  # the child leans on it (a version received as forward deltas): no cycle
    if any(r["data"]["kind"] == "planes" and r["data"].get("base") is not None for r in p.tensors):
        return  # already a delta (or an archive's layout): not a whole version
    if p.number % max(1, int(store.settings["keyframe_interval"])) == 0:
        return  # a keyframe stays whole
    # over the budget p stays whole, but tensors equal to the child's still become
    # links (free to decode while the child is whole; the estimate counts them after)
    links_only = over_budget(store, p, store.settings.get("max_load_factor"))
    if links_only:
        report.over_budget.append(p.ref)
    dcfg = codec.RepoCodecs.from_settings(store.settings).delta
    child_at = {r["path"]: i for i, r in enumerate(c.tensors) if r["data"]["kind"] != "dropped"}

    def job(i: int) -> tuple[int, dict[str, Any] | None, list | None]:
        prec = p.tensors[i]
        ci = child_at.get(prec["path"])
        if prec["data"]["kind"] != "planes" or prec["data"].get("lossy") or ci is None:
            return i, None, None
        crec = c.tensors[ci]
        if (crec["dtype"], crec["shape"]) != (prec["dtype"], prec["shape"]):
            return i, None, None
        if crec["digest"] == prec["digest"]:
            hv, hi = reader.resolve(c.id, ci)  # the child may link to this very record
            return (i, None, None) if hv == p.id else (i, {"kind": "same", "version": hv, "index": hi}, None)
        if links_only:
            return i, None, None
        pbits = reader.decode(p.id, i)
        cbits = reader.decode(c.id, ci)
        width = pbits.itemsize
        cfg = dcfg.for_dtype(prec["dtype"], width)
        delta = encode_all(pbits, cbits, cfg)
        if encoded_size(delta) >= record_size(prec):
            return i, None, None
        return i, {"kind": "planes", "codec": cfg.to_json(), "base": {"version": c.id, "index": ci}}, delta

    recs = p.copy_records()
    packs = PackSet(store.objects)
    changed: set[int] = set()
    try:
        for i, data, chunks in codec.ordered_map(job, range(len(p.tensors)), codec.shared_pool("tensor"), 2):
            if data is None:
                continue
            if chunks is not None:
                data["chunks"] = packs.add(chunks)
            recs[i]["data"] = data
            changed.add(i)
        if not changed:
            packs.abort()
            return
        copy_unchanged(reader, p, recs, changed, packs)
        new = Manifest(**{**p.__dict__, "tensors": recs, "packs": packs.commit()})
    except BaseException:
        packs.abort()
        raise
    if not within_budget(store, new, store.settings.get("max_load_factor")):
        # the deltas came out costlier than predicted: p stays as it is (gc reclaims
        # the packs just written, which no manifest names)
        for oid in new.objects():
            store.objects.delete(oid)
        report.over_budget.append(p.ref)
        return
    switch(store, [(new, p)], [store.objects.put(new.to_bytes())], set())
    report.deltas += not links_only


@dataclass
class _Candidate:
    index: int
    record: dict[str, Any]
    chunks: list
    added_cost: float
    saved: int


def _links_to(data: dict[str, Any], vid: str) -> bool:
    """Whether a record's data reads version ``vid`` (a link, a base or a context)."""
    if data["kind"] == "same":
        return data["version"] == vid
    return any((data.get(k) or {}).get("version") == vid for k in ("base", "context"))


def _repack_version(store: RepoStore, reader: TensorReader, vid: str, report: RepackReport) -> None:
    g = store.manifest(vid)
    if g.partial:
        return  # its lower planes are elsewhere: nothing here to re-code
    candidates = []
    for gi, grec in enumerate(g.tensors):
        cand = _recode(store, reader, g, gi, grec)
        if cand is not None:
            candidates.append(cand)
    if not candidates:
        return
    chosen = _within_budget(store, vid, candidates)
    if len(chosen) < len(candidates):
        report.over_budget.append(g.ref)
    if not chosen:
        return
    recs = g.copy_records()
    packs = PackSet(store.objects)
    try:
        for cand in chosen:
            recs[cand.index]["data"] = {**cand.record, "chunks": packs.add(cand.chunks)}
            report.bytes_before += record_size(g.tensors[cand.index])
            report.bytes_after += encoded_size(cand.chunks)
        copy_unchanged(reader, g, recs, {c.index for c in chosen}, packs)
        new = Manifest(**{**g.__dict__, "tensors": recs, "packs": packs.commit()})
    except BaseException:
        packs.abort()
        raise
    switch(store, [(new, g)], [store.objects.put(new.to_bytes())], set())
    report.versions += 1
    report.tensors += len(chosen)


def _within_budget(store: RepoStore, vid: str, candidates: list[_Candidate]) -> list[_Candidate]:
    """The re-codes to keep: best bytes saved per unit of added decode work first, while
    every version reading this one stays within max_load_factor."""
    factor = store.settings.get("max_load_factor")
    if factor is None:
        return candidates
    readers = [estimate(store.manifest, v) for v in {vid} | leaning_on(store.catalog.dependents, vid)]
    chosen, added = [], 0.0
    for cand in sorted(candidates, key=lambda c: -c.saved / max(c.added_cost, 1e-9)):
        if all(e.cost + added + cand.added_cost <= factor * e.whole for e in readers):
            chosen.append(cand)
            added += cand.added_cost
    return chosen


def _recode(store: RepoStore, reader: TensorReader, g: Manifest, gi: int, grec: dict[str, Any]) -> _Candidate | None:
    """Tensor ``gi`` of ``g`` re-coded with its neighbouring delta as context, when it is
    a plain ``sub`` delta against a version whose own record is a delta (the context)
    and the re-code is smaller."""
    data = grec["data"]
    base = data.get("base")
    if data["kind"] != "planes" or base is None or data.get("context") is not None or data.get("lossy"):
        return None
    if int(grec["nbytes"]) < CONTEXT_MIN_BYTES or data["codec"].get("op") != "sub":
        return None
    p = store.manifest(base["version"])
    pi = int(base["index"])
    if p.model != g.model or not 0 <= pi < len(p.tensors):
        return None
    prec = p.tensors[pi]
    pbase = prec["data"].get("base") if prec["data"]["kind"] == "planes" else None
    if pbase is None or prec["data"].get("lossy") or (prec["dtype"], prec["shape"]) != (grec["dtype"], grec["shape"]):
        return None
    n = store.manifest(pbase["version"])
    ni = int(pbase["index"])
    if not 0 <= ni < len(n.tensors) or (n.tensors[ni]["dtype"], n.tensors[ni]["shape"]) != (grec["dtype"], grec["shape"]):
        return None
    cfg = codec.CodecConfig.from_json(data["codec"])
    # two tensors' worth at most: the context first (kept by a reader of its own, so
    # the base's decode reuses it), then the base; the context becomes buckets (a
    # byte per element) before the re-code
    near = open_reader(store, cache_bytes=int(grec["nbytes"]))
    nbits = near.decode(n.id, ni)
    pbits = near.decode(p.id, pi)
    buckets = codec.context_buckets(pbits, nbits)
    del near, nbits
    chunks = _recode_chunks(reader, g, grec, pbits, buckets, cfg)
    del pbits, buckets
    if encoded_size(chunks) >= record_size(grec):
        return None
    record = {"kind": "planes", "codec": cfg.to_json(), "base": dict(base), "context": {"version": n.id, "index": ni}}
    trial = {**grec, "data": {**record, "chunks": [{"n": c[0], "frames": [[0, 0, k] for k, _ in c[1]]} for c in chunks]}}
    return _Candidate(gi, record, chunks, record_cost(trial) - record_cost(grec), record_size(grec) - encoded_size(chunks))


def _recode_chunks(
    reader: TensorReader, g: Manifest, grec: dict[str, Any], pbits: np.ndarray, buckets: codec.ContextBuckets,
    cfg: codec.CodecConfig,
) -> list:
    """Decode ``g``'s tensor chunk by chunk and re-code each chunk with its context, so
    the whole tensor never exists in memory; its digest is checked incrementally
    (BLAKE3 of the chunks in order = BLAKE3 of the tensor)."""
    import blake3

    records = grec["data"]["chunks"]
    starts = np.cumsum([0] + [int(r["n"]) for r in records])
    where = f"{g.ref} tensor {grec['path']!r}"
    spec = grec["data"].get("exponent_context")  # coded as the newest delta once was
    old_ctx = codec.ExponentContext.from_json(spec) if spec is not None else None

    def work(c: int) -> tuple[Any, list]:
        s, e = int(starts[c]), int(starts[c + 1])
        (_, frames), = reader.fetch(g, [records[c]], None, grec["data"].get("cold_from"))  # one chunk only
        gchunk = np.empty(e - s, pbits.dtype)
        codec.decode_chunk(frames, e - s, gchunk, pbits[s:e], cfg, where, old_ctx)
        return gchunk, codec.encode_chunk(gchunk, pbits[s:e], cfg, buckets[s:e])

    hasher = blake3.blake3(max_threads=1)
    out = []
    for c, (gchunk, frames) in enumerate(
        codec.ordered_map(work, range(len(records)), codec.shared_pool(), 2 * codec.default_workers())
    ):
        hasher.update(memoryview(gchunk).cast("B"))
        out.append((int(records[c]["n"]), frames))
    if hasher.hexdigest() != grec["digest"]:
        raise ModelHubError(f"{where} fails its checksum while being re-coded; run 'modelhub verify'")
    return out
