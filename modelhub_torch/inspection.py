"""What a version is made of, read from its manifest: each tensor's dtype, shape and
how it is stored (whole, as a delta, lossily, shared with another version), the bytes
per plane, and the lossy schemes it was archived with. ``modelhub desc`` prints this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhub_torch.manifest import DROPPED

if TYPE_CHECKING:
    from modelhub_torch.manifest import Manifest
    from modelhub_torch.records import Version
    from modelhub_torch.repolike import RepositoryLike


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor of a version."""

    path: str
    dtype: str
    shape: list[int]
    params: int
    raw_bytes: int
    stored_bytes: int  # bytes of its own frames (0 when it shares another's data)
    stored: str  # "whole", "delta", "same", "lossy <scheme>" (+ ", planes N+ cold")
    base: str | None  # the version (ref) or tensor (path) its data leans on
    in_state_dict: bool


@dataclass(frozen=True)
class VersionContents:
    """The result of :func:`describe_version`."""

    tensors: list[TensorInfo]
    total_params: int  # in the state_dict when there is one, else in all tensors
    total_elements: int
    has_state_dict: bool
    plane_bytes: list[int]
    manifest_bytes: int
    lossy: list[str] = field(default_factory=list)
    graph: dict[str, Any] | None = None
    pickle_imports: str | None = None  # what loading it in full would import (pickles only)


@dataclass(frozen=True)
class StorageSplit:
    """A version's bytes: stored anew by it vs shared with other versions."""

    stored_anew: int  # the version's own frames (coded bytes)
    shared_tensors: int  # tensors whose data is another version's
    shared_raw_bytes: int  # their raw size
    tensors: int  # live tensors in all


def lossy_schemes(v: Version) -> list[str]:
    """The lossy schemes a version was archived with (empty: it loads bit-exact); read
    from the index, so listing many versions reads no manifest."""
    return list(v.lossy)


def describe_version(repo: RepositoryLike, ref: Any) -> VersionContents:
    """How version ``ref`` is stored, tensor by tensor (pruned entries are left out)."""
    from modelhub_torch.skeleton_check import state_dict_paths

    v = repo.version(ref)
    m = repo.manifest(v.id)
    refs = {x.id: x.ref for x in repo.versions()}
    weights = set(state_dict_paths(m.skeleton).values())
    tensors = [_tensor_info(m, v.id, i, refs, i in weights) for i, rec in enumerate(m.tensors)
               if rec["data"]["kind"] != DROPPED]
    elements = sum(t.params for t in tensors)
    planes = m.plane_bytes()
    pickles = None
    if m.extra.get("pickle"):
        from modelhub_torch.trust import describe, skeleton_pickle_globals

        pickles = describe(skeleton_pickle_globals(m.skeleton))
    return VersionContents(
        tensors=tensors,
        total_params=sum(t.params for t in tensors if t.in_state_dict) if weights else elements,
        total_elements=elements,
        has_state_dict=bool(weights),
        plane_bytes=planes,
        manifest_bytes=max(0, v.stored_bytes - sum(planes)),
        lossy=list(m.extra.get("lossy") or []),
        graph=m.extra.get("graph"),
        pickle_imports=pickles,
    )


def _tensor_info(m: Manifest, vid: str, i: int, refs: dict[str, str], in_state_dict: bool) -> TensorInfo:
    rec = m.tensors[i]
    data = rec["data"]
    base = None
    if data["kind"] == "same":
        how, stored = "same", 0
        where, idx = data["version"], data["index"]
        base = m.tensors[idx]["path"] if where == vid else refs.get(where, where[:12])
    else:
        how = "delta" if data.get("base") else "whole"
        if data.get("lossy"):
            how = f"lossy {data['lossy'].get('scheme', '?')}"
        if data.get("cold_from") is not None:
            how += f", planes {data['cold_from']}+ cold"
        if data.get("base"):
            base = refs.get(data["base"]["version"], data["base"]["version"][:12])
        stored = sum(int(f[1]) for c in data["chunks"] for f in c["frames"])
    return TensorInfo(
        path=rec["path"], dtype=rec["dtype"], shape=list(rec["shape"]), params=math.prod(rec["shape"]),
        raw_bytes=int(rec["nbytes"]), stored_bytes=stored, stored=how, base=base, in_state_dict=in_state_dict,
    )


def storage_split(repo: RepositoryLike, ref: Any) -> StorageSplit:
    """How much of a version was stored anew and how much it shares with other
    versions (a copy shares its source's unchanged tensors)."""
    v = repo.version(ref)
    m = repo.manifest(v.id)
    live = m.live_tensors()
    shared = [t for t in live if t["data"]["kind"] == "same" and t["data"]["version"] != v.id]
    return StorageSplit(
        stored_anew=sum(m.plane_bytes()),
        shared_tensors=len(shared),
        shared_raw_bytes=sum(int(t["nbytes"]) for t in shared),
        tensors=len(live),
    )
