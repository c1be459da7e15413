"""The hub's side of a push: a manifest from the network, checked before the receiver
(sync/receive.py) decodes it against its digests and publishes it.

A pushed manifest is untrusted: it must name a new version (or be the very version
already here, when two pushers race), hold every tensor (no partial copy, whose
completion would make the server fetch from a URL a client chose), and reference only
objects already uploaded (each checked against its name on upload).
"""

from __future__ import annotations

from typing import Any

from modelhub_torch.errors import CorruptObjectError, DivergedError, ModelHubError
from modelhub_torch.manifest import Manifest
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.sync.receive import receive


def _fingerprint(m: Manifest) -> tuple[Any, ...]:
    """What makes two manifests the same version whatever their layout."""
    return (m.model, m.number, [(r["path"], r["digest"], r["dtype"], r["shape"]) for r in m.tensors])


def receive_manifest(store: RepoStore, m: Manifest) -> dict[str, Any]:
    """Check and publish pushed manifest ``m`` (its objects uploaded); a summary."""
    if m.partial or m.cold_packs:
        raise ModelHubError(f"{m.ref} holds only some of its byte planes: push it from a repository "
                            "that holds all of it (complete it there with 'modelhub pull')")
    with store.lock, store.writes(f"receiving {m.ref}"):
        if store.refs.manifest_of(m.id) is not None:
            here = store.manifest(m.id)
            if not here.partial and _fingerprint(here) == _fingerprint(m):
                return {"ref": here.ref, "id": m.id, "raw_bytes": here.raw_bytes, "manifest_bytes": 0,
                        "stored": "present"}
            raise DivergedError(f"{m.id[:12]} is another version here ({here.ref}); nothing was changed")
        absent = sorted(oid for oid in m.objects() if not store.objects.exists(oid))
        if absent:
            raise CorruptObjectError(
                f"{len(absent)} object(s) it references are not on the hub (first: {absent[0][:12]}): "
                "upload them first (POST objects), then send the manifest again"
            )
        stored, size = receive(store, m, checked=False)
    whole = stored.packs != m.packs
    return {"ref": stored.ref, "id": stored.id, "raw_bytes": stored.raw_bytes, "manifest_bytes": size,
            "stored": "whole" if whole else "as sent"}
