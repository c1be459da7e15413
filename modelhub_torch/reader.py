"""The load path: decode tensors of stored versions — resolve ``same`` links and delta
bases, fetch frames from plane packs, decode in parallel, verify every tensor's digest —
and rebuild what ``torch.load`` would return from them and the skeleton.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import blake3
import numpy as np

from modelhub_torch.errors import (
    CorruptObjectError,
    FormatError,
    ModelHubError,
    ModelHubWarning,
    PartialVersionError,
)
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas import codec
from modelhub_torch.pas.dtypes import uint_dtype
from modelhub_torch.progress import byte_bar
from modelhub_torch.store.objects import MappedObjects, ObjectStore
from modelhub_torch.store.repo import RepoStore


def digest_bits(bits: np.ndarray) -> str:
    """BLAKE3 of a tensor's raw bytes; big tensors hash on all cores (same digest)."""
    data = memoryview(np.ascontiguousarray(bits)).cast("B")
    threads = blake3.blake3.AUTO if len(data) >= (16 << 20) else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


def lossy_values(codes: np.ndarray, transform: dict[str, Any], dtype: str) -> np.ndarray:
    """The bits of the values a lossy record's codes stand for."""
    from modelhub_torch.pas import lossy

    try:
        values = lossy.decode(codes.view(lossy.code_dtype(transform)), transform, dtype)
    except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
        raise FormatError(f"bad lossy transform {str(transform)[:200]}: {exc}") from exc
    return np.ascontiguousarray(values).view(uint_dtype(dtype))


def _applies_in_place(cfg: codec.CodecConfig, out_dtype: np.dtype, chunks: Sequence[dict[str, Any]]) -> bool:
    """Whether a delta decodes into its base's own buffer: the fused float32 ``sub``
    kernel reads each base element before writing that element, nothing else."""
    return (
        np.dtype(out_dtype).itemsize == 4 and cfg.op == "sub" and cfg.lane == 4 and cfg.group_from >= 4
        and all(len(c["frames"]) == 4 for c in chunks)
    )


class _Cycle(Exception):
    """A tensor's delta chain came back to itself (stale manifests mixed with new ones)."""


class TensorReader:
    """Decodes ``(version id, tensor index)`` pairs; caches manifests and, within one
    load, the decoded bases a delta chain needs (bounded by ``cache_bytes``)."""

    def __init__(
        self,
        objects: ObjectStore,
        manifest_of: Callable[[str], Manifest],
        invalidate: Callable[[str], None],
        cache_bytes: int = 1 << 30,
    ):
        self.objects = objects
        self.manifest_of = manifest_of
        self.invalidate = invalidate
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._verified: set[tuple[str, int]] = set()  # cached tensors whose digest was checked
        self._cached = 0
        self._lock = threading.Lock()
        self._active = threading.local()  # (version, index) pairs being decoded by this thread
        self.bytes_read = 0
        self._seen_versions: set[str] = set()
        self.mapped = MappedObjects()  # the packs this reader reads, mapped once
        # fetches the planes a partially pulled version lacks (sync/complete.py); None:
        # reading them raises PartialVersionError
        self.complete: Callable[[str], bool] | None = None
        self._pack_sizes: dict[str, int] = {}  # remote pack -> about how big (see _pack_bytes)

    def record(self, vid: str, idx: int) -> dict[str, Any]:
        self._seen_versions.add(vid)
        m = self.manifest_of(vid)
        # a negative index would silently pick a tensor from the end
        if not 0 <= idx < len(m.tensors):
            raise FormatError(f"{m.ref} has no tensor #{idx}; a record linking to it is damaged")
        return m.tensors[idx]

    def resolve(self, vid: str, idx: int) -> tuple[str, int]:
        """Follow ``same`` links to the record that holds the data."""
        seen = set()
        while True:
            data = self.record(vid, idx)["data"]
            if data["kind"] != "same":
                return vid, idx
            if (vid, idx) in seen:
                raise FormatError(f"cycle of 'same' links at version {vid} tensor {idx}")
            seen.add((vid, idx))
            vid, idx = data["version"], int(data["index"])

    def lacks_planes(self, vid: str, idx: int) -> bool:
        """Whether a tensor (after links, down its chain of bases) has planes this
        repository does not hold: it belongs to a version pulled with ``planes=K``."""
        hv, hi = self.resolve(vid, idx)
        m = self.manifest_of(hv)
        data = m.tensors[hi]["data"]
        if m.extra.get("partial") and data.get("cold_from") is not None:
            return True
        base = data.get("base")
        return base is not None and self.lacks_planes(base["version"], int(base["index"]))

    def decode(self, vid: str, idx: int, planes: int | None = None, owned: bool = False) -> np.ndarray:
        """Flat uint array of one tensor's bits (all planes unless ``planes`` given),
        checked against its digest when all planes are asked for. ``owned`` (a delta's
        base): the caller may overwrite the array, so it is neither cached nor shared."""
        stack = getattr(self._active, "stack", None)
        if stack is not None:  # a base or context of a tensor this thread is decoding
            if (vid, idx) in stack:
                raise _Cycle(vid, idx)
            stack.add((vid, idx))
            try:
                # a chain is checked once, at its end: the requested tensor's digest
                # covers every base and context it was rebuilt from (a wrong base bit
                # gives a wrong result), so bases skip their own hash
                return self._decode(vid, idx, planes, verify=False, owned=owned)
            finally:
                stack.discard((vid, idx))
        try:
            return self._decode_retrying(vid, idx, planes)
        except RecursionError:
            raise FormatError(
                f"version {vid} tensor {idx}: its chain of deltas and links is too deep to follow; "
                "the repository is damaged — run 'modelhub verify'"
            ) from None
        finally:
            self._active.stack = None

    RETRIES = 5

    def _decode_retrying(self, vid: str, idx: int, planes: int | None) -> np.ndarray:
        # A child's commit or an archive may re-encode versions on the way and drop the
        # old packs (a missing object), or manifests cached before an archive may mix
        # with ones read after it (a cycle): forget every manifest and decoded base seen,
        # read the current ones and retry (each concurrent commit can cause one miss).
        for attempt in range(self.RETRIES + 1):
            self._active.stack = {(vid, idx)}
            try:
                return self._decode(vid, idx, planes)
            except (_Cycle, CorruptObjectError) as exc:
                if attempt == self.RETRIES:
                    if isinstance(exc, _Cycle):
                        raise FormatError(
                            f"the stored tensors of version {exc.args[0]} form a cycle of deltas; "
                            "the repository is damaged — run 'modelhub verify'"
                        ) from None
                    raise
                self._forget_all()
        raise AssertionError("unreachable")

    def _forget_all(self) -> None:
        with self._lock:
            self._cache.clear()
            self._verified.clear()
            self._cached = 0
            seen = set(self._seen_versions)
        self.mapped.clear()
        for v in seen:
            self.invalidate(v)

    def _decode(self, vid: str, idx: int, planes: int | None, verify: bool = True, owned: bool = False) -> np.ndarray:
        want = self.record(vid, idx)
        if want["data"]["kind"] == DROPPED:
            self._refuse_dropped(vid, want)
        hvid, hidx = self.resolve(vid, idx)
        key = (hvid, hidx)
        rec = self.record(hvid, hidx)
        # checked before the cache: a link must never hand out another tensor's bits
        if rec["data"]["kind"] != "planes":  # a link to a pruned record
            raise FormatError(f"version {vid} tensor {want['path']!r} links to a tensor without data")
        if rec["digest"] != want["digest"] or rec["nbytes"] != want["nbytes"]:
            raise CorruptObjectError(
                f"version {vid} tensor {want['path']!r} links to data with another digest or size"
            )
        if planes is None:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
            if hit is not None:
                if verify and key not in self._verified:
                    self._check(hvid, rec, hit, key)
                return hit.copy() if owned else hit
        bits = self._decode_planes(hvid, rec, planes)
        if planes is None:
            if verify:
                self._check(hvid, rec, bits, key)
            if not owned:
                self._remember(key, bits)
        return bits

    def _check(self, vid: str, rec: dict[str, Any], bits: np.ndarray, key: tuple[str, int]) -> None:
        if digest_bits(bits) != rec["digest"]:
            m = self.manifest_of(vid)
            raise CorruptObjectError(
                f"tensor {rec['path']!r} of {m.ref} fails its checksum: a stored object "
                "(of it or of a version its deltas lean on) is corrupt; run 'modelhub verify' to find it"
            )
        with self._lock:
            self._verified.add(key)

    def _refuse_dropped(self, vid: str, rec: dict[str, Any]) -> None:
        raise FormatError(
            f"tensor {rec['path']!r} of {self.manifest_of(vid).ref} was pruned (its trainer "
            "state was removed); only the entries still listed can be loaded"
        )

    def _remember(self, key: tuple[str, int], bits: np.ndarray) -> None:
        if bits.nbytes > self.cache_bytes:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = bits
            self._cached += bits.nbytes
            while self._cached > self.cache_bytes:
                gone, old = self._cache.popitem(last=False)
                self._verified.discard(gone)
                self._cached -= old.nbytes

    def _decode_planes(self, vid: str, rec: dict[str, Any], planes: int | None) -> np.ndarray:
        data = rec["data"]
        if data["kind"] == DROPPED:
            self._refuse_dropped(vid, rec)
        if data["kind"] != "planes":
            raise FormatError(f"unknown tensor record kind {data['kind']!r}")
        cfg = codec.CodecConfig.from_json(data["codec"])
        n = math.prod(rec["shape"]) * (2 if rec["dtype"].startswith("complex") else 1)
        transform = data.get("lossy")
        if transform is not None:  # lossy codes (archive --lossy): decoded whole, then mapped
            planes = None
        out_dtype = uint_dtype(rec["dtype"] if transform is None else transform["code_dtype"])
        base = None
        context: np.ndarray | codec.ExponentContext | None = None
        if data.get("context") is not None:
            # context-coded deltas are not plane-separable: base and context are needed
            # in full, and all planes are decoded whatever ``planes`` asks for
            planes = None
            c = data["context"]
            context = self.decode(c["version"], int(c["index"]), None)
        elif data.get("exponent_context") is not None:  # the base's exponents: base in full
            planes = None
            context = codec.ExponentContext.from_json(data["exponent_context"])
        m = self.manifest_of(vid)
        cut = data.get("cold_from")
        if cut is not None and m.extra.get("partial") and (planes is None or planes > int(cut)):
            self._complete(m)
        in_place = (
            data.get("base") is not None and planes is None and context is None and transform is None
            and _applies_in_place(cfg, out_dtype, data["chunks"])
        )
        if data.get("base") is not None:
            b = data["base"]
            # a plain float32 delta is applied to its base's buffer in place: a chain
            # of any length fills one array (no intermediate tensors, page faults once)
            base = self.decode(b["version"], int(b["index"]), planes, owned=in_place)
        # frames first: the output is allocated only once the bytes it is decoded from
        # were found (a manifest cannot make a reader allocate what no pack backs)
        chunks = self.fetch(m, data["chunks"], planes, data.get("cold_from"))
        if in_place:
            if base.shape != (n,) or base.dtype != out_dtype:
                raise FormatError(
                    f"{m.ref} tensor {rec['path']!r}: its base holds {base.shape[0]} {base.dtype} elements, "
                    f"expected {n} {out_dtype}; the manifest is damaged — run 'modelhub verify'"
                )
            codec.decode_tensor(chunks, base, base, cfg, f"{m.ref} tensor {rec['path']!r}")
            return base
        out = np.empty(n, out_dtype)
        where = f"{m.ref} tensor {rec['path']!r}"
        codec.decode_tensor(chunks, out, base, cfg, where, context=context)
        if transform is not None:
            return lossy_values(out, transform, rec["dtype"])
        return out

    def _complete(self, m: Manifest) -> None:
        """A partial version's missing planes are wanted: fetch the version in full,
        then decode again from its new manifest (the retry loop re-reads manifests)."""
        if self.complete is None:
            partial = m.extra["partial"]
            raise PartialVersionError(
                f"{m.ref} holds only its top {partial.get('planes')} byte planes here (pulled from "
                f"{partial.get('source')}); open it through Repository (which fetches the rest), or "
                f"'modelhub pull {partial.get('source')} {m.ref}'"
            )
        self.complete(m.id)
        self.invalidate(m.id)
        raise CorruptObjectError(f"{m.ref} was completed while being read; reading it again")

    def _pack_bytes(self, m: Manifest, oid: str) -> int | None:
        """About how big pack ``oid`` of ``m`` is (its plane's frames in both tiers),
        from the manifest, so remote stores fetch small packs whole; computed once per
        manifest and load."""
        if self.objects.loc.is_local:
            return None
        with self._lock:
            if oid in self._pack_sizes:
                return self._pack_sizes[oid]
        sizes = m.plane_bytes()
        with self._lock:
            for packs in (m.packs, m.cold_packs):
                for p, pack in enumerate(packs):
                    if pack is not None and p < len(sizes):
                        self._pack_sizes[pack] = sizes[p]
            return self._pack_sizes.get(oid)

    def fetch(
        self, m: Manifest, chunks: Sequence[dict[str, Any]], planes: int | None, cold_from: int | None = None
    ) -> list[tuple[int, list[codec.Frame]]]:
        """Read the frames of the leading ``planes`` planes, one read call per pack
        (planes ``>= cold_from`` from the manifest's cold-tier packs)."""
        wanted: dict[int, list[tuple[int, int]]] = {}
        for chunk in chunks:
            for p, frame in enumerate(chunk["frames"][:planes]):
                wanted.setdefault(p, []).append((int(frame[0]), int(frame[1])))
        if len({len(c["frames"][:planes]) for c in chunks}) > 1:  # payloads below pair up by position
            raise FormatError(f"{m.ref}: the chunks of a tensor hold different numbers of planes")
        payloads: dict[int, list[bytes | memoryview]] = {}
        for p, ranges in wanted.items():
            packs = m.cold_packs if cold_from is not None and p >= cold_from else m.packs
            oid = packs[p] if p < len(packs) else None
            if oid is None:
                raise FormatError(f"{m.ref} references plane pack {p}, which it does not list")
            payloads[p] = self.objects.get_ranges(oid, ranges, self.mapped, self._pack_bytes(m, oid))
            with self._lock:
                self.bytes_read += sum(n for _, n in ranges)
        out = []
        for c, chunk in enumerate(chunks):
            frames = [
                (frame[2], payloads[p][c]) for p, frame in enumerate(chunk["frames"][:planes])
            ]
            out.append((int(chunk["n"]), frames))
        return out


# ------------------------------------------------------------------ load path
# tensors of at least this many bytes are decoded on the tensor pool during a load
# (reads, decode and checksum overlap); smaller ones cost less than a thread hand-off
POOL_MIN_BYTES = 1 << 20


def open_reader(store: RepoStore, cache_bytes: int = 1 << 30) -> TensorReader:
    """A fresh decoder over a repository's store (its base cache lives as long as it does)."""
    reader = TensorReader(store.objects, store.cached_manifest, store.invalidate, cache_bytes)
    reader.complete = getattr(store, "complete_partial", None)
    return reader


def load_version(store: RepoStore, vid: str, map_location: Any = None, weights_only: bool = True,
                 progress: bool = False) -> Any:
    """What ``torch.load`` of the committed object returns, bit for bit; unpickles only
    with ``weights_only=False``, after warning what the pickles import."""
    from modelhub_torch.skeleton import unflatten

    m = store.manifest(vid)
    if not weights_only and m.extra.get("pickle"):
        from modelhub_torch.trust import describe, skeleton_pickle_globals

        warnings.warn(
            f"weights_only=False: unpickling {m.ref} runs code stored in the repository at "
            f"{store.url}; its pickles import {describe(skeleton_pickle_globals(m.skeleton))}",
            ModelHubWarning,
            stacklevel=3,
        )
    live = [i for i, t in enumerate(m.tensors) if t["data"]["kind"] != DROPPED]
    tensors: list[Any] = [None] * len(m.tensors)
    for i, t in zip(live, decode_tensors(store, vid, m, live, map_location, progress)):
        tensors[i] = t
    return unflatten(m.skeleton, tensors, weights_only=weights_only)


def load_all_tensors(store: RepoStore, vid: str, progress: bool = False) -> list[Any]:
    """Every tensor a version stores, decoded and checked, without its skeleton: what a
    load costs, and safe on versions holding pickles (nothing is unpickled)."""
    m = store.manifest(vid)
    live = [i for i, t in enumerate(m.tensors) if t["data"]["kind"] != DROPPED]
    return decode_tensors(store, vid, m, live, None, progress)


def load_weights(store: RepoStore, vid: str, map_location: Any = None, progress: bool = False) -> dict[str, Any]:
    """Only the model weights of a version (``state_dict`` of a checkpoint), as plain
    tensors with the strides, offsets and shared memory a full load gives them (only
    the stored tensors they need are decoded)."""
    from modelhub_torch.skeleton import unflatten
    from modelhub_torch.skeleton_check import state_dict_nodes

    m = store.manifest(vid)
    nodes = state_dict_nodes(m.skeleton)
    if not nodes:
        raise ModelHubError(f"{m.ref} holds no state_dict (it is not a model checkpoint)")
    wanted = sorted({node["$t"] for node in nodes.values()})
    tensors: list[Any] = [None] * len(m.tensors)
    for i, t in zip(wanted, decode_tensors(store, vid, m, wanted, map_location, progress)):
        tensors[i] = t
    # weights only: what makes a Parameter, an array or a grad-requiring tensor is left out
    plain = [[k, {f: v for f, v in node.items() if f not in ("param", "np", "grad")}] for k, node in nodes.items()]
    return dict(unflatten({"$dict": plain}, tensors))


def decode_tensors(store: RepoStore, vid: str, m: Manifest, indices: Iterable[int], map_location: Any,
                   progress: bool = False) -> list[Any]:
    """Tensors ``indices`` of version ``vid`` as torch tensors (each its own storage)."""
    from modelhub_torch.pas.codec import shared_pool
    from modelhub_torch.pas.dtypes import bits_to_tensor

    reader = open_reader(store)
    indices = list(indices)
    # big tensors are jobs on the tensor pool (reads, decode and checksum overlap, and
    # their chunks spread over the chunk pool); small ones cost less than a thread
    # hand-off, so this thread decodes them meanwhile
    big = sorted((i for i in indices if m.tensors[i]["nbytes"] >= POOL_MIN_BYTES), key=lambda i: -m.tensors[i]["nbytes"])
    futures = {i: shared_pool("tensor").submit(reader.decode, vid, i) for i in big}
    with byte_bar(sum(m.tensors[i]["nbytes"] for i in indices), f"load {m.ref}", progress) as bar:
        bits = {}
        for i in indices:
            if i not in futures:
                bits[i] = reader.decode(vid, i)
                bar.update(m.tensors[i]["nbytes"])
        for i, f in futures.items():
            bits[i] = f.result()
            bar.update(m.tensors[i]["nbytes"])
    out, used = [], set()
    for i in indices:
        b = bits[i]
        if id(b) in used:  # two records resolved to the same data: give each its own
            b = b.copy()
        used.add(id(b))
        rec = m.tensors[i]
        out.append(_map_location(bits_to_tensor(b, rec["dtype"], rec["shape"]), map_location))
    return out


def _map_location(t: Any, map_location: Any) -> Any:
    """``torch.load``'s map_location: None, a device, a dict or a callable."""
    if map_location is None:
        return t
    if isinstance(map_location, dict):
        target = map_location.get("cpu")
        return t if target is None else t.to(target)
    if callable(map_location):
        result = map_location(t, "cpu")
        return t if result is None else result
    return t.to(map_location)
