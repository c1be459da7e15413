"""The receiver's side of a transfer: check a thin version, fit it to this repository's
layout, publish it under its own id and number.

Nothing becomes visible before it was checked: every tensor of a complete version is
decoded against the bases this repository holds and compared with its digest (objects
were hashed as they were written). The thin encoding is kept where the recreation
budget allows it (a forward delta against a parent stored whole restores in about two
whole loads); otherwise the version is re-encoded whole, as a commit would store it,
and the background repack re-encodes its parent later. The numbered ref is the commit
point, written last; a version pulled partially and later in full switches manifests
under the same id and number.
"""

from __future__ import annotations

from typing import Any

from modelhub_torch.commit import within_budget
from modelhub_torch.errors import DivergedError
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas.codec import RepoCodecs
from modelhub_torch.reader import TensorReader
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.writer import PackSet, encode_all


def fits(dst: RepoStore, wire: Manifest) -> bool:
    """Whether ``dst``'s recreation budget takes ``wire`` as it is coded."""
    return within_budget(dst, wire, dst.settings.get("max_load_factor"))


def receive(dst: RepoStore, wire: Manifest, checked: bool = False) -> tuple[Manifest, int]:
    """Check ``wire`` (its packs already in ``dst``), fit it to the layout and publish
    it; returns the manifest stored. ``checked``: the sender decoded every frame it
    wrote against the same bases in this process (sync/thin.py), so nothing is read
    back. Returns the manifest stored and the bytes of its object. Call with ``dst``'s
    lock held."""
    partial = wire.partial
    stored = wire
    if partial or checked or fits(dst, wire):  # a checked sender already chose thin or whole
        if not checked:
            _check(dst, wire, partial)
    else:
        stored = _whole(dst, wire)
        for oid in wire.objects():  # the thin frames, unless a version here uses them too
            if not dst.catalog.object_users(oid):
                dst.objects.delete(oid)
    return stored, _publish(dst, stored)


def _reader(dst: RepoStore, wire: Manifest) -> TensorReader:
    """A decoder that sees ``wire`` as the manifest of its version (not published yet)."""

    def manifest_of(vid: str) -> Manifest:
        return wire if vid == wire.id else dst.cached_manifest(vid)

    return TensorReader(dst.objects, manifest_of, dst.invalidate, cache_bytes=0)


def _check(dst: RepoStore, wire: Manifest, partial: bool) -> None:
    """Decode every complete tensor and compare it with its digest (raises on a
    mismatch: the caller deletes what it wrote)."""
    reader = _reader(dst, wire)
    for i, rec in enumerate(wire.tensors):
        if rec["data"]["kind"] == DROPPED:
            continue
        if partial and reader.lacks_planes(wire.id, i):
            continue
        reader.decode(wire.id, i)


def _whole(dst: RepoStore, wire: Manifest) -> Manifest:
    """``wire`` re-encoded with every tensor it carries stored whole (links kept)."""
    reader = _reader(dst, wire)
    codecs = RepoCodecs.from_settings(dst.settings)
    packs = PackSet(dst.objects)
    records: list[dict[str, Any]] = []
    try:
        for i, rec in enumerate(wire.tensors):
            data = rec["data"]
            if data["kind"] != "planes":
                records.append(rec)
                continue
            bits = reader.decode(wire.id, i)
            cfg = codecs.materialize.for_dtype(rec["dtype"], bits.itemsize, exp_first=codecs.exp_first)
            chunks = encode_all(bits, None, cfg)
            del bits
            records.append({**rec, "data": {"kind": "planes", "codec": cfg.to_json(), "base": None,
                                            "chunks": packs.add(chunks)}})
        return Manifest(**{**wire.__dict__, "tensors": records, "packs": packs.commit(), "cold_packs": []})
    except BaseException:
        packs.abort()
        raise


def _keep_theirs(dst: RepoStore, m: Manifest, moid: str | None, theirs: Manifest, theirs_moid: str | None) -> int:
    """``m`` arrived complete here already (another sender published it first): that
    manifest stays; what only this one wrote goes. Its numbered ref is claimed in case
    the other sender stopped before it. Returns 0: nothing of this one was kept."""
    keep = {*theirs.objects(), theirs_moid}
    for oid in [*m.objects(), moid]:
        if oid and oid not in keep and not dst.catalog.object_users(oid):
            dst.objects.delete(oid)
    if dst.refs.version_at_or_none(m.model, m.number) is None:
        dst.refs.create_number(m.model, m.number, m.id)
    dst.invalidate(m.id)
    dst.index(m.id, slot=(m.model, m.number))
    return 0


def _publish(dst: RepoStore, m: Manifest) -> int:
    """Manifest, then the version's manifest ref (created only if absent: a version
    that arrived complete from another sender meanwhile keeps its manifest), then its
    numbered ref (the commit point; refused when another version took that number
    meanwhile). Returns the manifest object's size (0 when it was already there)."""
    there = dst.refs.version_at_or_none(m.model, m.number)
    if there is not None and there != m.id:
        raise DivergedError(
            f"{m.ref} became another version ({there[:12]}) in {dst.url} during the transfer; "
            "nothing of it was published — see 'modelhub list' there and retry"
        )
    dst.record_features([m])
    old_moid = dst.refs.manifest_of(m.id)
    old = dst.manifest(m.id) if old_moid else None
    if old is not None and not old.partial:
        return _keep_theirs(dst, m, None, old, old_moid)
    doc = m.to_bytes()
    moid = dst.objects.put(doc)
    if old is None:
        if not dst.refs.create_manifest(m.id, moid):  # another sender of this version was first
            dst.invalidate(m.id)
            theirs_moid = dst.refs.manifest_of(m.id)
            theirs = dst.manifest(m.id)
            if not theirs.partial:
                return _keep_theirs(dst, m, moid, theirs, theirs_moid)
            dst.refs.set_manifest(m.id, moid)  # theirs is partial: this complete one replaces it
    else:  # a partial version completed: same id and number, the complete manifest
        dst.refs.set_manifest(m.id, moid)
    dst.invalidate(m.id)
    if (there is None and not dst.refs.create_number(m.model, m.number, m.id)
            and dst.refs.version_at_or_none(m.model, m.number) != m.id):
        # another writer took the number for another version between the check above
        # and now (object stores have no lock; a racing sender of this same version is
        # fine): the manifest stays unreferenced, gc collects it
        dst.refs.delete_version(m.id)
        raise DivergedError(
            f"{m.ref} was committed as another version in {dst.url} during the transfer; "
            "nothing of it was published — see 'modelhub list' there and retry"
        )
    dst.index(m.id, slot=(m.model, m.number))
    if old is not None:  # a partial version completed: its planes-only packs go
        keep = {moid, *m.objects()}
        for oid in [*old.objects(), old_moid]:
            if oid not in keep and not (dst.catalog.object_users(oid) - {m.id}):
                dst.objects.delete(oid)
    return len(doc)
