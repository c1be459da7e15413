"""Finishing a version pulled with only its top byte planes (``pull --planes K``).

A partial version names the repository it came from. Progressive inference reads the
planes it has; anything that needs every bit (``load``, export, a full decode in
progressive's ambiguous case) first fetches the version in full from that source — a
pull of that one version, thin against what this repository holds complete — which
switches it to a complete manifest under the same id and number. The source is
reached by version id, not by object names: its layout may have been re-encoded
(repack, archive) since, and version ids never change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from modelhub_torch.errors import ModelHubError, PartialVersionError
from modelhub_torch.manifest import Manifest
from modelhub_torch.store.repo import RepoStore

_LOCK = threading.Lock()  # one completion at a time per process (a load decodes on a pool)


def complete_version(dst: RepoStore, vid: str,
                     options_for: Callable[[str], dict[str, Any] | None] | None = None) -> bool:
    """Fetch the rest of partial version ``vid`` from its source; False when it is
    complete already. Raises PartialVersionError when the source cannot supply it.
    ``options_for``: the storage options to open a source URL with (else fsspec's
    configuration, e.g. ``FSSPEC_S3_*``)."""
    from modelhub_torch.publish import open_store
    from modelhub_torch.sync.transfer import transfer

    with _LOCK:
        dst.invalidate(vid)
        m = dst.manifest(vid)
        partial = m.extra.get("partial")
        if not partial:
            return False
        source = str(partial.get("source", ""))
        planes = partial.get("planes")
        try:
            src = open_store(source, options_for(source) if options_for else None)
            if src.refs.manifest_of(vid) is None:
                raise ModelHubError(f"{source} no longer holds {m.ref}")
            if not _rest_from_hub(src, dst, m):
                transfer(src, dst, [vid])
        except PartialVersionError:
            raise
        except (ModelHubError, OSError) as exc:
            raise PartialVersionError(
                f"{m.ref} was pulled with only its top {planes} byte planes from {source}, and the rest "
                f"cannot be fetched from there ({exc}). Progressive inference still works on it; for a full "
                f"load pull it again from a repository that holds it ('modelhub pull SOURCE {m.ref}')"
            ) from exc
        dst.invalidate(vid)
        return True


def _rest_from_hub(src: RepoStore, dst: RepoStore, m: Manifest) -> bool:
    """From a hub, only the planes ``m`` lacks (hub/packs.py), checked and published
    as any received version; False when the source is no hub, when ``m`` leans on
    versions held partially here, or when the hub's coding changed."""
    from modelhub_torch.hub.fs import is_hub
    from modelhub_torch.hub.packs import fetch_rest, links_of
    from modelhub_torch.sync.receive import receive

    if not is_hub(src):
        return False
    for vid in links_of(m):  # decoding it in full needs every version it leans on in full
        if dst.refs.manifest_of(vid) is None or dst.manifest(vid).partial:
            return False  # (a chain of partial deltas: one whole version costs less than its rest)
    with dst.lock, dst.writes(f"completing {m.ref}"):
        complete = fetch_rest(src.loc.fs.client, src.url, dst, m)
        if complete is None:
            return False
        receive(dst, complete, checked=False)
    return True
