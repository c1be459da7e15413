"""Partial pulls from a hub (``pull URL --planes K``): the hub codes them.

A repository stores deltas in 4-byte lanes, whose carries cross byte planes, so the
top planes of a stored delta chain are not the top planes of any version: whoever
cuts a version to K planes must decode it first. A bucket cannot, so a client would
read everything; the hub does it where the data is and sends only the top planes
(sync/thin.py's plane-separable coding against what the client holds).

Wire format of one answer: an 8-byte big-endian length, the manifest, then the
objects as in bundle.py. The client treats all of it as untrusted: each object is
checked against its name, the manifest must be the version it asked for, and the
receiver decodes every tensor it can against its digest before publishing.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

from modelhub_torch.errors import CorruptObjectError, ModelHubError
from modelhub_torch.hub import bundle
from modelhub_torch.manifest import Manifest
from modelhub_torch.reader import open_reader
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.sync.sinks import Staging
from modelhub_torch.sync.thin import ThinVersion, encode_thin
from modelhub_torch.validate import is_version_id

MAX_PLANES = 8


class PackMaker:
    """The hub's side: one reader kept across requests (a chain's parent, decoded as
    the base of one version, is the next request's version), one pack at a time."""

    def __init__(self, store: RepoStore):
        self.store = store
        self._lock = threading.Lock()
        self._reader = None

    def make(self, doc: dict[str, Any]) -> Iterator[bytes]:
        vid, base, planes, have = doc.get("version"), doc.get("base"), doc.get("planes"), doc.get("have", [])
        rest = doc.get("rest", False)
        if not isinstance(rest, bool):
            raise ModelHubError("pack: 'rest' must be true or false")
        if not is_version_id(vid) or (base is not None and not is_version_id(base)):
            raise ModelHubError("pack: 'version' (and 'base', when given) must be version ids")
        if not isinstance(planes, int) or isinstance(planes, bool) or not 1 <= planes <= MAX_PLANES:
            raise ModelHubError(f"pack: 'planes' must be a number of byte planes from 1 to {MAX_PLANES}")
        if not isinstance(have, list) or len(have) > 1_000_000 or not all(is_version_id(h) for h in have):
            raise ModelHubError("pack: 'have' must be a list of version ids")
        store, held = self.store, set(have)
        if store.refs.manifest_of(vid) is None:
            raise ModelHubError(f"no version {vid[:12]} here")
        if base is not None and (base not in held or store.refs.manifest_of(base) is None):
            base = None
        staging = Staging(store.settings)
        try:
            with self._lock:
                if self._reader is None:
                    self._reader = open_reader(store, cache_bytes=256 << 20)
                thin = encode_thin(store, self._reader, staging, vid, base, lambda v: v in held, planes,
                                   rest=rest)
            doc_bytes = thin.manifest.to_bytes()
            parts = [len(doc_bytes).to_bytes(8, "big"), doc_bytes]
            for oid in sorted(o for o in (thin.manifest.cold_packs if rest else thin.manifest.packs) if o):
                data = staging.objects.get(oid, verify=False)
                parts += [bundle.frame(oid, data), data]
        finally:
            staging.drop()
        return iter(parts)


def fetch_pack(client: Any, source_url: str, target: Any, vid: str, model: str, number: int,
               base: str | None, have: set[str], planes: int) -> ThinVersion:
    """The client's side: ask the hub for version ``vid`` cut to ``planes``; objects go
    into ``target.objects``; the manifest is returned for the receiver to check."""
    resp = client.request("POST", "/pack", json={"version": vid, "base": base, "planes": planes,
                                                 "have": sorted(have)})
    body = client.check(resp, f"fetching {model}@v{number}").content
    fh = io.BytesIO(body)
    size = int.from_bytes(fh.read(8), "big")
    raw = fh.read(size)
    if len(raw) != size:
        raise CorruptObjectError(f"the hub's answer for {model}@v{number} was cut short; pull again")
    m = Manifest.from_bytes(raw, f"{model}@v{number} from {source_url}")
    if (m.id, m.model, m.number) != (vid, model, number):
        raise CorruptObjectError(f"{source_url} answered with {m.ref} ({m.id[:12]}) when asked for "
                                 f"{model}@v{number} ({vid[:12]}): nothing was stored")
    written = total = 0
    for oid, data in bundle.decode(fh, 1 << 40):
        if oid not in m.packs:
            raise CorruptObjectError(f"{source_url} sent object {oid[:12]}, which {m.ref} does not use")
        target.objects.put(data)
        written, total = written + 1, total + len(data)
    if m.partial:  # where the rest comes from is this client's business, not the hub's
        used = m.extra["partial"].get("base")
        partial = {"planes": planes, "source": source_url, "base": used if used == base else None}
        m = Manifest(**{**m.__dict__, "extra": {**m.extra, "partial": partial}})
    return ThinVersion(m, written, total, m.partial, checked=False)


def links_of(m: Manifest) -> set[str]:
    """The versions a manifest's records lean on (``same`` links and delta bases)."""
    out = set()
    for rec in m.tensors:
        data = rec["data"]
        if data["kind"] == "same":
            out.add(data["version"])
        elif data.get("base"):
            out.add(data["base"]["version"])
    return out - {m.id}


def fetch_rest(client: Any, source_url: str, dst: RepoStore, m: Manifest) -> Manifest | None:
    """The lower planes of partial version ``m`` from the hub it came from: the hub
    codes the version again exactly as it did for the partial pull (same base, the
    versions ``m`` links to as what this side holds, the same planes) and sends only
    the packs ``m.cold_packs`` names, which are stored here. Returns ``m`` complete (for
    the receiver to check and publish), or None when the hub's coding no longer
    matches (its settings changed): then the caller fetches the whole version."""
    part = m.extra.get("partial") or {}
    ask = {"version": m.id, "base": part.get("base"), "planes": part.get("planes"),
           "have": sorted(links_of(m) | ({part["base"]} if part.get("base") else set())), "rest": True}
    resp = client.request("POST", "/pack", json=ask)
    if resp.status_code == 400:
        return None
    fh = io.BytesIO(client.check(resp, f"fetching the rest of {m.ref}").content)
    size = int.from_bytes(fh.read(8), "big")
    again = Manifest.from_bytes(fh.read(size), f"{m.ref} from {source_url}")
    if (again.id, again.packs, again.cold_packs, again.tensors) != (m.id, m.packs, m.cold_packs, m.tensors):
        return None
    wanted = {oid for oid in m.cold_packs if oid}
    got = set()
    for oid, data in bundle.decode(fh, 1 << 40):
        if oid not in wanted:
            raise CorruptObjectError(f"{source_url} sent object {oid[:12]}, which {m.ref} does not use")
        dst.objects.put(data)
        got.add(oid)
    if got != wanted:
        raise CorruptObjectError(f"{source_url} sent {len(got)} of the {len(wanted)} packs {m.ref} lacks; "
                                 "run the command again")
    extra = {k: v for k, v in m.extra.items() if k != "partial"}
    return Manifest(**{**m.__dict__, "extra": extra})
