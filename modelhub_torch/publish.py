"""Making written versions visible: the commit point and the switch of re-encoded ones.

Objects are written first, refs last: a version exists once its numbered ref does, and
an older version moves to a new manifest (a reverse delta, an archive's plan) by one
atomic ref write. Every mixture of old and new manifests decodes to the same bits, so a
crash between any two steps is harmless. A many-version switch (archive) goes through
the journal in store/switch.py, which this module rolls forward when it finds one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from modelhub_torch.errors import ConflictError, ModelHubError, ModelHubWarning
from modelhub_torch.manifest import Manifest
from modelhub_torch.records import Version, decode_values
from modelhub_torch.resumable import trainer_state
from modelhub_torch.store.refs import CONFLICT_ATTEMPTS
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.store.switch import clear_switch, read_switch

Replaced = list[tuple[Manifest, Manifest]]  # (new manifest, old manifest) of re-encoded versions


def open_store(path_or_url: object, storage_options: dict[str, Any] | None = None) -> RepoStore:
    """Open a repository's store, finishing an archive a crash interrupted."""
    store = RepoStore(path_or_url, storage_options)
    finish_switch(store)
    store.sync_index()
    return store


def publish(store: RepoStore, m: Manifest, replaced: Replaced) -> Version:
    """Make the new version visible, then switch each re-encoded older version to its
    new manifest. Call with the store's lock held."""
    store.record_features([m])  # the re-encoded ones: by switch(), before their refs move
    moid, size = _put_manifest(store, m)
    new_oids = [store.objects.put(new.to_bytes()) for new, _ in replaced]
    store.refs.set_manifest(m.id, moid)
    store.refs.set_number(m.model, m.number, m.id)  # the commit point
    return _landed(store, m, moid, size, replaced, new_oids)


def _put_manifest(store: RepoStore, m: Manifest) -> tuple[str, int]:
    """Store a new version's manifest; its object id and size."""
    data = m.to_bytes()
    return store.objects.put(data), len(data)


def publish_racing(store: RepoStore, m: Manifest, renumber: Callable[[Manifest], Manifest]) -> Version:
    """Publish where other processes may commit at the same time (no lock spans them).

    The commit point is the *creation* of ``refs/models/<model>/<N>``, conditional on
    no such file existing (S3's ``If-None-Match: *``): of two writers claiming N, one
    wins. The loser gets the next free number (and parent) from ``renumber``, writes
    its manifest again (same version id, same packs) and tries that number, up to
    ``CONFLICT_ATTEMPTS`` times. Nothing is re-encoded: the new version never depends
    on its same-model parent (whose re-encode is repack's). ``renumber`` may refuse
    (``expect_number``); the version's manifest and ref are then withdrawn."""
    store.record_features([m])
    moid, size = _put_manifest(store, m)
    for attempt in range(CONFLICT_ATTEMPTS):
        store.refs.set_manifest(m.id, moid)
        if store.refs.create_number(m.model, m.number, m.id):  # the commit point
            if attempt:
                store.sync_index()  # index the versions that won meanwhile (the new parent)
            return _landed(store, m, moid, size, [], [])
        try:
            m, old = renumber(m), moid
        except ModelHubError:
            _withdraw(store, m, moid)
            raise
        moid, size = _put_manifest(store, m)
        store.objects.delete(old)
    _withdraw(store, m, moid)
    raise ConflictError(
        f"committing to {m.model!r} lost the race for a version number {CONFLICT_ATTEMPTS} times "
        "in a row (other processes commit to it at the same time); nothing was committed, retry"
    )


def _withdraw(store: RepoStore, m: Manifest, moid: str) -> None:
    """Remove what an unpublished version wrote (its packs are salted: nobody else's)."""
    store.refs.delete_version(m.id)
    for oid in [moid, *m.objects()]:
        store.objects.delete(oid)


def _landed(
    store: RepoStore, m: Manifest, moid: str, size: int, replaced: Replaced, new_oids: list[str]
) -> Version:
    """After the commit point: index the version and switch re-encoded ones."""
    store.remember(m.id, moid, m)
    # the version has landed: what follows only tidies (index, the parent's re-encode),
    # so a failure here is a warning, never a failed commit
    try:
        store.catalog.upsert(m, moid, store.stored_bytes(m, moid, size))
        switch(store, replaced, new_oids, {moid, *m.objects()})
    except (ModelHubError, OSError) as exc:
        warnings.warn(
            f"{m.ref} was committed, but tidying up after it failed ({exc}); its parent "
            "stays stored whole and 'modelhub gc' reclaims what is left over",
            ModelHubWarning,
            stacklevel=3,
        )
    try:
        row = store.catalog.row(m.id)  # just written from the manifest: no check needed
        if row is not None and row["manifest"] == moid:
            return store.version_of_row(row)
        return store.checked_version(m.id)
    except ModelHubError:
        return version_from_manifest(store, m, moid)


def version_from_manifest(store: RepoStore, m: Manifest, moid: str) -> Version:
    """A Version straight from its manifest (when the index cannot give it)."""
    return Version(
        model=m.model, number=m.number, id=m.id, ref=m.ref, parent=m.parent,
        created_at=m.created_at, metrics=decode_values(m.metrics), hparams=decode_values(m.hparams),
        message=m.message, raw_bytes=m.raw_bytes, stored_bytes=store.stored_bytes(m, moid), info=decode_values(m.info),
        holds_pickle=bool(m.extra.get("pickle")), resumable=trainer_state(m.skeleton),
        lossy=tuple(m.extra.get("lossy") or ()),
    )


def switch(store: RepoStore, replaced: Replaced, new_oids: list[str], keep: set[str]) -> None:
    """Point each version at its new manifest, in order, and delete the objects only
    its old manifest used (``keep``: objects that must survive regardless)."""
    store.record_features(new for new, _ in replaced)
    for (new, old), new_oid in zip(replaced, new_oids):
        old_moid = store.refs.manifest_of(old.id)
        store.refs.set_manifest(new.id, new_oid)
        store.invalidate(new.id)
        store.catalog.upsert(new, new_oid, store.stored_bytes(new, new_oid))
        # objects are content-addressed: never delete what the new manifests use, nor
        # what any other version's current manifest shares (packs are salted, so that
        # is a second line of defence; gc reclaims whatever is kept needlessly)
        survive = {new_oid, *new.objects(), *keep}
        for oid in [*old.objects(), old_moid]:
            if oid and oid not in survive and not (store.catalog.object_users(oid) - {old.id}):
                store.objects.delete(oid)


def finish_switch(store: RepoStore) -> None:
    """Roll an interrupted archive forward (its journal is its commit point)."""
    if not read_switch(store.loc):
        return
    try:
        with store.lock:
            pending = read_switch(store.loc)
            if pending:
                apply_switch(store, pending)
    except OSError:
        store.pending = read_switch(store.loc)  # cannot write here: read through the journal


def apply_switch(store: RepoStore, manifests: dict[str, str]) -> None:
    """Point every journalled version at its new manifest, re-index, drop the journal,
    then delete what no current manifest uses. Idempotent: safe to repeat after a crash."""
    from modelhub_torch.maintenance import gc

    live = {vid for m in store.refs.models() for vid in store.refs.numbers(m).values()}
    for vid, moid in manifests.items():
        if vid in live and store.refs.manifest_of(vid) != moid:
            store.refs.set_manifest(vid, moid)
        store.invalidate(vid)
    rows = []
    for vid, moid in manifests.items():
        if vid in live:
            m = store.manifest(vid)
            rows.append((m, moid, store.stored_bytes(m, moid)))
    store.catalog.upsert_many(rows)
    clear_switch(store.loc)
    store.pending = {}
    gc(store)
