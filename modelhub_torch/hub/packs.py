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
from modelhub_torch.sync.sinks import _Staging
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
        staging = _Staging(store.settings)
        try:
            with self._lock:
                if self._reader is None:
                    self._reader = open_reader(store, cache_bytes=256 << 20)
                thin = encode_thin(store, self._reader, staging, vid, base, lambda v: v in held, planes)
            doc_bytes = thin.manifest.to_bytes()
            parts = [len(doc_bytes).to_bytes(8, "big"), doc_bytes]
            for oid in sorted(thin.manifest.packs):
                if oid:
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
        m = Manifest(**{**m.__dict__, "extra": {**m.extra, "partial": {**m.extra["partial"], "source": source_url}}})
    return ThinVersion(m, written, total, m.partial, checked=False)
