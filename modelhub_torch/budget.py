"""The recreation budget: how long restoring a version takes, estimated from manifests
alone, as a factor of restoring it stored whole.

A restore decodes every distinct stored record its tensors reach — their delta bases,
contexts and ``same`` links, each once (the reader keeps decoded bases) — and hashes
each tensor once. The estimate prices a record by the work its decode does per element:
per plane, by the coder of its frames (a raw plane is a view; zstd and rANS decode
symbol by symbol, rANS with contexts slower still), plus one pass that merges the planes
and applies the delta. The weights are CPU time per element measured on the codec's
kernels (``benchmarks/storage.py --per-version`` prints the estimate next to the
measured restore time). Only ratios matter: the budget compares a version with itself
stored whole, so a slower or faster machine scales both sides alike.

``max_load_factor`` (a repository setting) bounds that ratio for every version: a
commit that would push a version past it keeps the parent whole instead of turning it
into a reverse delta (Mercurial's revlog starts a new full snapshot the same way when
a delta chain costs too much to read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from modelhub_torch.manifest import DROPPED, Manifest

# CPU time per element and plane, by coder, relative to decoding one rans8 symbol, as
# measured on MiniLM fine-tune planes, one thread: rans8 1.96 ns, zstd 0.40 ns,
# rans_ctx 4.9 ns (a table per context), raw ~0 (a view of the mapped pack); merging
# four planes 0.42-0.48 ns, context buckets 0.94 ns, BLAKE3 0.32-0.5 ns per element
PLANE_COST = {"raw": 0.01, "zstd": 0.2, "rans0": 1.1, "rans8": 1.0, "rans_ctx": 2.5}
UNKNOWN_CODER_COST = 2.5
MERGE_COST = 0.25  # per element: merging the planes (and applying a delta in place)
CONTEXT_COST = 0.5  # per element: computing the context buckets of a context-coded record
DIGEST_COST = 0.25  # per 4 bytes: the BLAKE3 check of the restored tensor
# per stored record decoded, whatever its size: looking it up, fetching its frames and
# handing chunks to threads (~50 us); it is what small tensors cost
RECORD_COST = 25_000.0
# a whole float32 tensor as commits store it: exponent plane rANS-coded, three raw planes
WHOLE_COST_PER_ELEM = PLANE_COST["rans8"] + 3 * PLANE_COST["raw"] + MERGE_COST
# what a reverse delta costs before it exists (a measured fine-tune delta: the top plane
# zstd, the next rANS, the low two zstd or raw)
NEW_DELTA_COST_PER_ELEM = PLANE_COST["zstd"] * 2 + PLANE_COST["rans8"] + PLANE_COST["raw"] + MERGE_COST


@dataclass(frozen=True)
class Estimate:
    """A version's estimated restore cost, that of the same tensors stored whole, and
    the stored records ``(version id, index)`` its restore decodes."""

    cost: float
    whole: float
    reads: frozenset[tuple[str, int]] = frozenset()

    @property
    def factor(self) -> float:
        return self.cost / self.whole if self.whole else 1.0


def _elements(rec: dict[str, Any]) -> int:
    n = 1
    for d in rec["shape"]:
        n *= int(d)
    return n * (2 if rec["dtype"].startswith("complex") else 1)


def record_cost(rec: dict[str, Any]) -> float:
    """Decode work of one stored record alone (its bases not included)."""
    data = rec["data"]
    if data["kind"] != "planes":
        return 0.0
    n = _elements(rec)
    width = max(1, int(rec["nbytes"]) // max(1, n)) if n else 1
    per_plane = [0.0] * width
    total_n = 0
    for chunk in data["chunks"]:
        cn = int(chunk["n"])
        total_n += cn
        for p, frame in enumerate(chunk["frames"][:width]):
            per_plane[p] += cn * PLANE_COST.get(frame[2], UNKNOWN_CODER_COST)
    cost = RECORD_COST + sum(per_plane) + total_n * MERGE_COST * width / 4
    if data.get("context") is not None or data.get("exponent_context") is not None:
        cost += total_n * CONTEXT_COST
    return cost


def whole_cost(rec: dict[str, Any]) -> float:
    """What restoring this tensor costs stored whole (the budget's reference)."""
    return RECORD_COST + int(rec["nbytes"]) / 4 * (WHOLE_COST_PER_ELEM + DIGEST_COST)


def estimate(manifest_of: Callable[[str], Manifest], vid: str) -> Estimate:
    """Estimated restore cost of version ``vid``: every distinct record its tensors
    reach, once, plus one digest per tensor."""
    m = manifest_of(vid)
    manifests = {vid: m}  # each manifest asked for once (a ref read each on a remote store)
    seen: set[tuple[str, int]] = set()
    reads: set[tuple[str, int]] = set()
    cost = whole = 0.0
    stack: list[tuple[str, int]] = []
    for i, rec in enumerate(m.tensors):
        if rec["data"]["kind"] == DROPPED:
            continue
        whole += whole_cost(rec)
        cost += int(rec["nbytes"]) / 4 * DIGEST_COST
        stack.append((vid, i))
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        owner = manifests.get(key[0])
        if owner is None:
            owner = manifests[key[0]] = manifest_of(key[0])
        if not 0 <= key[1] < len(owner.tensors):
            continue  # damaged: the reader reports it; the estimate only skips it
        rec = owner.tensors[key[1]]
        data = rec["data"]
        if data["kind"] == "same":
            stack.append((data["version"], int(data["index"])))
            continue
        reads.add(key)
        cost += record_cost(rec)
        for link in ("base", "context"):
            target = data.get(link)
            if target is not None:
                stack.append((target["version"], int(target["index"])))
    return Estimate(cost, whole, frozenset(reads))


def leaning_on(dependents: Callable[[str], Iterable[str]], vid: str) -> set[str]:
    """Every version whose restore reads ``vid``'s records, directly or through others."""
    out: set[str] = set()
    todo = [vid]
    while todo:
        for d in dependents(todo.pop()):
            if d not in out and d != vid:
                out.add(d)
                todo.append(d)
    return out


def new_delta_cost(rec: dict[str, Any]) -> float:
    """The cost a reverse delta of a whole record will add to every restore that reads
    it, before it is coded (a tensor that turns out unchanged becomes a free link: an
    upper bound)."""
    return _elements(rec) * NEW_DELTA_COST_PER_ELEM if rec["data"]["kind"] == "planes" else 0.0
