"""Remove entries (trainer state) from a stored version without breaking other versions.

A version's tensors can be the delta base, the context or the shared copy of tensors
of other versions. Pruning therefore works in two steps, each an atomic manifest
switch done by the repository: first every dependent record is re-encoded whole (from
its decoded bits, so it no longer needs the tensor that goes), then the version itself
gets a manifest whose removed records are ``dropped`` tombstones. The tombstones keep
the indices of the remaining records, so references into the version stay valid.
"""

from __future__ import annotations

from typing import Any

from modelhub_torch.commit import copy_unchanged
from modelhub_torch.errors import ModelHubError
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas.codec import RepoCodecs
from modelhub_torch.publish import switch
from modelhub_torch.reader import open_reader
from modelhub_torch.records import Version
from modelhub_torch.resolution import resolve
from modelhub_torch.resumable import top_level_keys
from modelhub_torch.store.lease import held_leases
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.writer import PackSet, encode_all


def prune(store: RepoStore, ref: str | Version, keys: set[str]) -> Version:
    """Remove top-level entries ``keys`` of version ``ref`` (takes the store's lock;
    the ref is resolved under it); every other version keeps loading bit-exact."""
    with store.lock, store.writes("prune"):
        store.sync_index()
        vid = resolve(store, ref)
        # on a shared remote, a repack elsewhere would re-encode the same versions: hold
        # the leases of the version's model, then of other models leaning on it
        shared = not store.lock.across_processes
        model = store.manifest(vid).model
        with held_leases(store.loc, [model] if shared else [], shared, "prune"):
            store.refresh_rows(store.possible_dependents(vid))
            dependents = sorted(store.catalog.dependents(vid))
            others = {store.manifest(v).model for v in dependents} - {model} if shared else set()
            with held_leases(store.loc, sorted(others), shared, "prune"):
                replaced = Pruner(store, vid, dependents).run(keys)
                if replaced:
                    new_oids = [store.objects.put(new.to_bytes()) for new, _ in replaced]
                    switch(store, replaced, new_oids, set())
        return store.checked_version(vid)


def _tensor_indices(node: Any, out: set[int]) -> None:
    """Every tensor index a skeleton node refers to."""
    if isinstance(node, list):
        for v in node:
            _tensor_indices(v, out)
    elif isinstance(node, dict):
        if "$t" in node:
            out.add(int(node["$t"]))
            return
        for v in node.values():
            _tensor_indices(v, out)


def _refs_into(data: dict[str, Any], vid: str, indices: set[int]) -> bool:
    """Whether a record's data points at one of ``indices`` of version ``vid``."""
    if data["kind"] == "same":
        return data["version"] == vid and int(data["index"]) in indices
    for key in ("base", "context"):
        link = data.get(key)
        if link is not None and link["version"] == vid and int(link["index"]) in indices:
            return True
    return False


def _extra_after_prune(m: Manifest, skeleton: Any, keys: set[str]) -> dict[str, Any]:
    """``m.extra`` for the pruned manifest: ``info["trainer_state"]`` tells list, desc,
    DQL and the Lightning callback whether the version can still resume, so it must
    turn False once what Lightning needs to resume (optimizer and scheduler state) is
    gone. A new dict: ``m`` stays as it was. Versions whose info never said (committed
    without the callback) keep their metadata untouched: whether they resume is read
    from the skeleton (``resumable.trainer_state``, the catalog's ``resumable``)."""
    info = m.info
    if "trainer_state" not in info:
        return m.extra
    kept = top_level_keys(skeleton) or set()
    removed = (top_level_keys(m.skeleton) or set()) - kept
    resumable = bool(info.get("trainer_state", True)) and "optimizer_states" in kept and "lr_schedulers" not in removed
    return {**m.extra, "info": {**info, "trainer_state": resumable}}


class Pruner:
    """Plans the manifests one prune replaces (dependents first, the version last).
    ``others``: the versions whose manifests point into this one (the catalog's links)."""

    def __init__(self, store: RepoStore, vid: str, others: list[str]):
        self.store = store
        self.vid = vid
        self.others = others
        self.reader = open_reader(store, cache_bytes=0)
        c = RepoCodecs.from_settings(store.settings)
        self.mat_cfg, self.exp_first = c.materialize, c.exp_first

    def run(self, keys: set[str]) -> list[tuple[Manifest, Manifest]]:
        m = self.store.manifest(self.vid)
        top = m.skeleton.get("$dict") if isinstance(m.skeleton, dict) else None
        if top is None:
            raise ModelHubError(f"{m.ref} is not a checkpoint dict: there are no entries to prune")
        kept_entries = [(k, v) for k, v in top if k not in keys]
        if len(kept_entries) == len(top):
            return []  # nothing to remove (already pruned, or no such entries)
        dropped_refs: set[int] = set()
        kept_refs: set[int] = set()
        for k, v in top:
            _tensor_indices(v, kept_refs if k not in keys else dropped_refs)
        removed = {i for i in dropped_refs - kept_refs if m.tensors[i]["data"]["kind"] != DROPPED}
        replaced = []
        for other in self.others:
            om = self.store.manifest(other)
            deps = {j for j, rec in enumerate(om.tensors) if _refs_into(rec["data"], self.vid, removed)}
            if deps:
                replaced.append((self._rewrite(om, deps, set()), om))
        # records of the version itself that share a removed tensor's data
        own = {j for j, rec in enumerate(m.tensors) if j not in removed and _refs_into(rec["data"], self.vid, removed)}
        new = self._rewrite(m, own, removed)
        new.skeleton = {**m.skeleton, "$dict": kept_entries}
        new.extra = _extra_after_prune(m, new.skeleton, keys)
        replaced.append((new, m))
        return replaced

    def _rewrite(self, m: Manifest, whole: set[int], drop: set[int]) -> Manifest:
        """``m`` with records ``whole`` re-encoded whole and records ``drop`` dropped."""
        recs = m.copy_records()
        packs = PackSet(self.store.objects)
        try:
            for j in sorted(whole):
                rec = recs[j]
                bits = self.reader.decode(m.id, j)  # checks the digest
                cfg = self.mat_cfg.for_dtype(rec["dtype"], bits.itemsize, exp_first=self.exp_first)
                rec["data"] = {"kind": "planes", "codec": cfg.to_json(), "base": None,
                               "chunks": packs.add(encode_all(bits, None, cfg))}
                del bits
            for j in drop:  # a tombstone: digests are incompressible, keep only the path
                recs[j] = {"path": recs[j]["path"], "data": {"kind": DROPPED}}
            copy_unchanged(self.reader, m, recs, whole | drop, packs)
            return Manifest(**{**m.__dict__, "tensors": recs, "packs": packs.commit()})
        except BaseException:
            packs.abort()
            raise
