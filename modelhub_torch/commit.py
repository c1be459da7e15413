"""Commit-side storage policy: what a new version and its parent are stored as.

The newest version of a model is coded whole; a same-model parent is re-encoded as
reverse deltas against it (unless it is a keyframe), and a cross-model parent (a
fine-tune's base) is used for forward deltas where they are smaller. Tensors are coded
by parallel jobs; the caller's thread writes their frames to the packs in order.
"""

from __future__ import annotations

import datetime as _dt
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from modelhub_torch.budget import estimate, leaning_on, new_delta_cost, record_cost
from modelhub_torch.errors import ModelHubError, ModelHubWarning
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas.codec import CodecConfig, RepoCodecs, shared_pool
from modelhub_torch.pas.dtypes import dtype_name, tensor_bits
from modelhub_torch.progress import byte_bar
from modelhub_torch.publish import publish, publish_racing
from modelhub_torch.reader import TensorReader, digest_bits, open_reader
from modelhub_torch.records import Version
from modelhub_torch.resolution import resolve
from modelhub_torch.store.objects import hash_bytes
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.writer import PackSet, encode_all, encoded_size, record_size

PREPARE_INLINE_BYTES = 1 << 16  # tensors smaller than this are prepared by the committing thread


def over_budget(store: RepoStore, parent: Manifest, max_factor: float | None) -> bool:
    """Whether re-encoding ``parent`` as a reverse delta would make the estimated
    restore of it, or of any version leaning on it, exceed ``max_factor`` whole loads."""
    if max_factor is None:
        return False
    direct = store.catalog.dependents(parent.id)
    added = predicted_delta_costs(store, parent, direct)
    for vid in {parent.id} | leaning_on(store.catalog.dependents, parent.id):
        try:
            est = estimate(store.manifest, vid)
        except ModelHubError:
            continue  # a damaged version: verify reports it; it does not block commits
        # only the parent's records this restore decodes grow (a version sharing one
        # unchanged tensor with it through a link pays nothing more)
        more = sum(added[i] for v, i in est.reads if v == parent.id and 0 <= i < len(added))
        if est.whole and (est.cost + more) / est.whole > max_factor:
            return True
    return False


def within_budget(store: RepoStore, new: Manifest, max_factor: float | None) -> bool:
    """Whether switching version ``new.id`` to manifest ``new`` keeps it and every
    version reading it within ``max_factor`` (estimated exactly: the new frames are
    known). Predictions come before coding; this check comes after."""
    if max_factor is None:
        return True

    def manifest_of(vid: str) -> Manifest:
        return new if vid == new.id else store.manifest(vid)

    for vid in {new.id} | leaning_on(store.catalog.dependents, new.id):
        try:
            if estimate(manifest_of, vid).factor > max_factor:
                return False
        except ModelHubError:
            continue
    return True


def predicted_delta_costs(store: RepoStore, parent: Manifest, direct: set[str]) -> list[float]:
    """Per tensor of ``parent``: what its reverse delta will cost to decode, before it
    is coded — the cost of the delta an older version keeps against that tensor (the
    trajectory moves at about the same pace), else a typical fine-tune delta's."""
    costs = [new_delta_cost(rec) for rec in parent.tensors]
    for vid in direct:
        try:
            m = store.manifest(vid)
        except ModelHubError:
            continue
        for rec in m.tensors:
            base = rec["data"].get("base") if rec["data"]["kind"] == "planes" else None
            if base is not None and base["version"] == parent.id and 0 <= int(base["index"]) < len(costs):
                costs[int(base["index"])] = record_cost(rec)
    return costs


@dataclass
class _Prepared:
    """What one tensor's encoding job computed (no I/O to packs yet)."""

    rec: dict[str, Any]
    data: dict[str, Any]  # record data for the new version, "chunks" still to be written
    chunks: list | None  # coded chunks for the new version's packs
    # reverse delta for the parent: its codec, coded chunks and extra record keys
    parent_delta: tuple[CodecConfig, list, dict[str, Any]] | None
    raw: int


def _readable(store: RepoStore, vid: str) -> Manifest | None:
    """A neighbour's manifest, or None where it is damaged: the new version is then
    stored without leaning on it (whole), so one damaged version never blocks commits."""
    try:
        return store.manifest(vid)
    except ModelHubError as exc:
        warnings.warn(
            f"version {vid} is damaged ({exc}); the new version is stored without deltas "
            "against it ('modelhub verify --repair' fixes or quarantines it)",
            ModelHubWarning,
            stacklevel=3,
        )
        return None


@dataclass(frozen=True)
class CommitRequest:
    """What a caller asks to commit, already flattened and checked."""

    flat: Any  # skeleton.flatten's result
    model: str
    parent: str | Version | None  # a ref (resolved under the lock), or None: the model's latest
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    message: str
    info: dict[str, Any]
    graph: dict[str, Any] | None
    expect_number: int | None = None
    progress: bool = False
    architecture: dict[str, Any] | None = None  # architecture.capture_architecture's record


def commit_version(store: RepoStore, req: CommitRequest) -> Version:
    """Number, encode and publish a new version (takes the store's lock).

    Where that lock does not keep other processes out (remote stores), the number is
    taken optimistically: the version is encoded without touching its parent (the
    parent's re-encode is left to repack), so it does not depend on which version
    turns out to precede it, and ``publish_racing`` claims the number by a
    create-if-absent write, moving to the next free number when another writer was
    first."""
    with store.lock, store.writes(f"commit to {req.model!r}"):
        # deletions below trust the index to know every version; one listing of refs
        listed = store.sync_index().get(req.model, [])
        number = _next_number(req, (listed[-1] if listed else 0) + 1)
        parent = resolve(store, req.parent) if req.parent is not None else None
        if parent is None and listed:
            parent = store.refs.version_at(req.model, listed[-1])
        created = _now()
        vid = _new_version_id(req.model, number, created)
        racing = not store.lock.across_processes
        job = CommitJob(store, req.flat, req.model, number, vid, parent, progress=req.progress, defer_parent=racing)
        manifest, replaced = job.run(req.metrics, req.hparams, req.message, created)
        if req.info:
            manifest.extra["info"] = req.info
        if req.graph:
            manifest.extra["graph"] = req.graph
        if req.architecture:
            manifest.extra["architecture"] = req.architecture
        if racing:
            return publish_racing(store, manifest, lambda m: _renumber(store, req, m))
        return publish(store, manifest, replaced)


def _next_number(req: CommitRequest, number: int) -> int:
    """``number``, checked against the number the caller announced (``expect_number``)."""
    if req.expect_number is not None and number != req.expect_number:
        why = (
            f"another process committed to {req.model!r} meanwhile; give each run its own model name"
            if number > req.expect_number
            else f"an earlier commit meant as {req.model}@v{number} did not complete"
        )
        raise ModelHubError(
            f"expected to commit {req.model}@v{req.expect_number} but the next version is "
            f"{req.model}@v{number}: {why}"
        )
    return number


def _renumber(store: RepoStore, req: CommitRequest, m: Manifest) -> Manifest:
    """``m`` moved past a number another writer took first: the next free number, and,
    unless the caller named the parent, the version now before it as parent (the
    encoding does not depend on the parent: see ``CommitJob.deferred``)."""
    listed = store.refs.listed_numbers(req.model)
    number = _next_number(req, max(listed[-1] if listed else 0, m.number) + 1)
    parent = m.parent
    if req.parent is None:
        parent = store.refs.version_at_or_none(req.model, number - 1) or m.parent
    return Manifest(**{**m.__dict__, "number": number, "parent": parent})


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _new_version_id(model: str, number: int, created: str) -> str:
    """Stable identity of a version: never derived from its (replaceable) manifest."""
    return hash_bytes(f"{model}\0{number}\0{created}\0{uuid.uuid4().hex}".encode())[:32]


class CommitJob:
    """Encodes one commit: the new version whole (or as forward deltas for a
    cross-model parent) and, for a same-model parent, the parent re-encoded as
    reverse deltas against the new version. Tensors are coded by parallel jobs while
    this thread writes their frames to the packs in order (bounded bytes in flight)."""

    IN_FLIGHT_BYTES = 256 << 20

    def __init__(
        self,
        store: RepoStore,
        flat: Any,
        model: str,
        number: int,
        vid: str,
        parent_vid: str | None,
        progress: bool = False,
        defer_parent: bool = False,
    ):
        self.store = store
        self.flat = flat
        self.model = model
        self.number = number
        self.vid = vid
        self.parent_vid = parent_vid
        self.progress = progress
        self.parent = _readable(store, parent_vid) if parent_vid else None
        # each parent tensor is decoded once: caching them would hold a model's worth
        self.reader = open_reader(store, cache_bytes=0)
        s = store.settings
        c = RepoCodecs.from_settings(s)
        self.mat_cfg, self.delta_cfg, self.exp_first = c.materialize, c.delta, c.exp_first
        self.keyframe_interval = max(1, int(s["keyframe_interval"]))
        p = self.parent
        self.rewrite = p is not None and p.model == model
        # by default a commit only stores the new version: repack (a background thread
        # after the commit) re-encodes the parent, so the parent is not touched here;
        # always so where the number (and so the parent) is only known at publication
        self.deferred = self.rewrite and (defer_parent or s.get("repack", "background") != "commit")
        # keyframes sit at multiples of the interval: v1..vK-1 chain to vK (stored whole)
        # and, with a recreation budget, wherever turning the parent into a delta would
        # make some version's restore cost more than max_load_factor whole loads
        self.keyframe = self.rewrite and (
            self.deferred
            or p.number % self.keyframe_interval == 0
            or over_budget(store, p, s.get("max_load_factor"))
        )
        self.parent_paths = {t["path"]: i for i, t in enumerate(p.tensors) if t["data"]["kind"] != DROPPED} if p else {}

    def _jobs(self) -> Any:
        """Yield prepared tensors in order, computing big ones up to IN_FLIGHT_BYTES
        ahead on the tensor pool; small ones (cheaper than a thread hand-off) are
        prepared by this thread when their turn comes."""
        pool = shared_pool("tensor")
        pending: list[Any] = []
        inflight = 0
        for i, t in enumerate(self.flat.tensors):
            size = t.numel() * t.element_size()
            while pending and inflight + size > self.IN_FLIGHT_BYTES:
                done = self._result(pending.pop(0))
                inflight -= done.raw
                yield done
            pending.append(pool.submit(self._prepare, i) if size >= PREPARE_INLINE_BYTES else i)
            inflight += size
        for item in pending:
            yield self._result(item)

    def _result(self, item: Any) -> _Prepared:
        return self._prepare(item) if isinstance(item, int) else item.result()

    def run(
        self, metrics: dict, hparams: dict, message: str, created: str
    ) -> tuple[Manifest, list[tuple[Manifest, Manifest]]]:
        """The new version's manifest and the ``(new, old)`` manifests it replaces."""
        p = self.parent
        packs = PackSet(self.store.objects)
        parent_packs = PackSet(self.store.objects)
        parent_recs = p.copy_records() if self.rewrite else []
        changed: set[int] = set()
        records: list[dict[str, Any]] = []
        seen: dict[tuple, int] = {}
        total = sum(t.numel() * t.element_size() for t in self.flat.tensors)
        bar = byte_bar(total, f"commit {self.model}@v{self.number}", self.progress)
        try:
            for i, prep in enumerate(self._jobs()):
                bar.update(prep.raw)
                rec = prep.rec
                key = (rec["digest"], rec["dtype"], tuple(rec["shape"]))
                holder = seen.get(key)
                if holder is not None:  # equal content earlier in this commit
                    rec["data"] = {"kind": "same", "version": self.vid, "index": holder}
                else:
                    seen[key] = holder = i
                    rec["data"] = prep.data
                    if prep.chunks is not None:
                        rec["data"]["chunks"] = packs.add(prep.chunks)
                prep.chunks = None  # written: drop the coded bytes now, not at the next tensor
                records.append(rec)
                pi = self.parent_paths.get(rec["path"])
                if not self.rewrite or self.deferred or pi is None:
                    continue
                prec = p.tensors[pi]
                if prec["digest"] == rec["digest"] and prec["dtype"] == rec["dtype"] and prec["shape"] == rec["shape"]:
                    parent_recs[pi]["data"] = {"kind": "same", "version": self.vid, "index": holder}
                    changed.add(pi)
                elif prep.parent_delta is not None:
                    dcfg, delta, extra = prep.parent_delta
                    prep.parent_delta = None
                    parent_recs[pi]["data"] = {
                        "kind": "planes",
                        "codec": dcfg.to_json(),
                        "base": {"version": self.vid, "index": holder},
                        **extra,
                        "chunks": parent_packs.add(delta),
                    }
                    del delta  # written: keep no coded bytes alive past their tensor
                    changed.add(pi)
            replaced: list[tuple[Manifest, Manifest]] = []
            new_parent = None
            if self.rewrite and changed:
                self._copy_unchanged(p, parent_recs, changed, parent_packs)
                new_parent = Manifest(**{**p.__dict__, "tensors": parent_recs, "packs": parent_packs.commit()})
                if not within_budget(self.store, new_parent, self.store.settings.get("max_load_factor")):
                    for oid in new_parent.objects():  # salted packs no manifest names
                        self.store.objects.delete(oid)
                    new_parent = None  # the deltas came out costlier than predicted: stays whole
            if new_parent is not None:
                replaced.append((new_parent, p))
            else:
                parent_packs.abort()
            m = Manifest(
                id=self.vid,
                model=self.model,
                number=self.number,
                parent=self.parent_vid,
                created_at=created,
                metrics=metrics,
                hparams=hparams,
                message=message,
                skeleton=self.flat.skeleton,
                tensors=records,
                packs=packs.commit(),
                extra={"pickle": self.flat.uses_pickle} if self.flat.uses_pickle else {},
            )
            return m, replaced
        except BaseException:
            packs.abort()
            parent_packs.abort()
            raise
        finally:
            bar.close()

    def _prepare(self, i: int) -> _Prepared:
        t, path = self.flat.tensors[i], self.flat.paths[i]
        bits = tensor_bits(t)
        rec = {
            "path": path,
            "dtype": dtype_name(t.dtype),
            "shape": list(t.shape),
            "nbytes": int(bits.nbytes),
            "digest": digest_bits(bits),
        }
        width = bits.itemsize
        mcfg = self.mat_cfg.for_dtype(rec["dtype"], width, exp_first=self.exp_first)
        dcfg = self.delta_cfg.for_dtype(rec["dtype"], width)
        pi = self.parent_paths.get(path)
        prec = self.parent.tensors[pi] if pi is not None else None
        compatible = prec is not None and prec["dtype"] == rec["dtype"] and prec["shape"] == rec["shape"]
        whole = {"kind": "planes", "codec": mcfg.to_json(), "base": None}
        parent_delta = None
        if compatible and not self.rewrite:
            # cross-model parent (fine-tune): forward delta where it is smaller
            if prec["digest"] == rec["digest"]:
                return _Prepared(rec, {"kind": "same", "version": self.parent_vid, "index": pi}, None, None, bits.nbytes)
            base = self.reader.decode(self.parent_vid, pi)
            delta = encode_all(bits, base, dcfg)
            del base  # freed before the whole encode: bounded peak memory
            chunks = encode_all(bits, None, mcfg)
            if encoded_size(delta) < encoded_size(chunks):
                data = {"kind": "planes", "codec": dcfg.to_json(), "base": {"version": self.parent_vid, "index": pi}}
                return _Prepared(rec, data, delta, None, bits.nbytes)
            return _Prepared(rec, whole, chunks, None, bits.nbytes)
        if (
            compatible
            and self.rewrite
            and not self.keyframe
            and prec["digest"] != rec["digest"]
            and prec["data"]["kind"] == "planes"
        ):
            # before coding the new tensor: the decoded parent is freed before the new
            # tensor's coded chunks exist (peak ~1.5x the tensor, not ~2.8x). Coded
            # plainly: context coding (smaller, slower to decode) is repack's choice
            pbits = self.reader.decode(self.parent_vid, pi)
            delta = encode_all(pbits, bits, dcfg)
            del pbits
            if encoded_size(delta) < record_size(prec):
                parent_delta = (dcfg, delta, {})
            del delta
        hit = self._dedup(rec)
        if hit is not None:
            data, chunks = {"kind": "same", "version": hit[0], "index": hit[1]}, None
        else:
            data, chunks = whole, encode_all(bits, None, mcfg)
        return _Prepared(rec, data, chunks, parent_delta, bits.nbytes)

    def _dedup(self, rec: dict[str, Any]) -> tuple[str, int] | None:
        """An identical tensor stored whole elsewhere (never in the parent being re-encoded:
        that one's data moves into the new version instead)."""
        hit = self.store.catalog.find_digest(rec["digest"])
        if hit is None:
            return None
        try:
            hv, hi = self.reader.resolve(*hit)
            hrec = self.reader.record(hv, hi)
        except ModelHubError:
            return None
        if self.rewrite and hv == self.parent_vid:
            return None
        if self.reader.manifest_of(hv).partial:
            return None  # its low planes are held by another repository
        if hrec["data"].get("base") is not None or hrec["dtype"] != rec["dtype"] or hrec["shape"] != rec["shape"]:
            return None
        if hrec["digest"] != rec["digest"]:
            return None
        return hv, hi

    def _copy_unchanged(self, p: Manifest, recs: list[dict], changed: set[int], out: PackSet) -> None:
        copy_unchanged(self.reader, p, recs, changed, out)


def copy_unchanged(
    reader: TensorReader, m: Manifest, recs: list[dict], changed: set[int], out: PackSet, cold: PackSet | None = None
) -> None:
    """Move a manifest's untouched frames into its new packs (packs stay owned by one
    manifest). Cold-tier frames go to ``cold``; without it they come back to the hot tier."""
    for i, rec in enumerate(recs):
        if i in changed or rec["data"]["kind"] != "planes":
            continue
        cold_from = rec["data"].get("cold_from")
        chunks = reader.fetch(m, rec["data"]["chunks"], None, cold_from)
        if cold is None:
            rec["data"].pop("cold_from", None)
        rec["data"]["chunks"] = out.add(chunks, cold, cold_from)
