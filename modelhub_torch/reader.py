"""Decode tensors of stored versions: resolve ``same`` links and delta bases, fetch
frames from plane packs, decode in parallel, and verify every tensor's digest.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import blake3
import numpy as np

from modelhub_torch.errors import CorruptObjectError, FormatError, ModelHubError
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas import codec
from modelhub_torch.pas.dtypes import uint_dtype
from modelhub_torch.store.objects import ObjectStore


def digest_bits(bits: np.ndarray) -> str:
    """BLAKE3 of a tensor's raw bytes; big tensors hash on all cores (same digest)."""
    data = memoryview(np.ascontiguousarray(bits)).cast("B")
    threads = blake3.blake3.AUTO if len(data) >= (16 << 20) else 1
    return blake3.blake3(data, max_threads=threads).hexdigest()


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
        self._cached = 0
        self._lock = threading.Lock()
        self.bytes_read = 0

    def record(self, vid: str, idx: int) -> dict[str, Any]:
        m = self.manifest_of(vid)
        try:
            return m.tensors[idx]
        except IndexError:
            raise FormatError(f"{m.ref} has no tensor #{idx}") from None

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

    def decode(self, vid: str, idx: int, planes: int | None = None) -> np.ndarray:
        """Flat uint array of one tensor's bits (all planes unless ``planes`` given)."""
        try:
            return self._decode(vid, idx, planes)
        except CorruptObjectError:
            # A child's commit may have just re-encoded this version (or the one its
            # `same` links lead to) and dropped the old packs: reload every manifest on
            # the way once and retry before reporting corruption.
            self._refresh_links(vid, idx)
            with self._lock:
                self._cache.clear()
                self._cached = 0
            return self._decode(vid, idx, planes)

    def _refresh_links(self, vid: str, idx: int) -> None:
        seen = set()
        while (vid, idx) not in seen:
            seen.add((vid, idx))
            self.invalidate(vid)
            try:
                data = self.record(vid, idx)["data"]
            except ModelHubError:
                return
            if data["kind"] != "same":
                return
            vid, idx = data["version"], int(data["index"])

    def _decode(self, vid: str, idx: int, planes: int | None) -> np.ndarray:
        want = self.record(vid, idx)
        if want["data"]["kind"] == DROPPED:
            self._refuse_dropped(vid, want)
        hvid, hidx = self.resolve(vid, idx)
        key = (hvid, hidx)
        if planes is None:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
        rec = self.record(hvid, hidx)
        if rec["digest"] != want["digest"]:
            raise CorruptObjectError(
                f"version {vid} tensor {want['path']!r} links to data with another digest"
            )
        bits = self._decode_planes(hvid, rec, planes)
        if planes is None:
            if digest_bits(bits) != rec["digest"]:
                m = self.manifest_of(hvid)
                raise CorruptObjectError(
                    f"tensor {rec['path']!r} of {m.ref} fails its checksum: a stored object "
                    "is corrupt; run 'modelhub verify' to find it"
                )
            self._remember(key, bits)
        return bits

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
                _, old = self._cache.popitem(last=False)
                self._cached -= old.nbytes

    def _decode_planes(self, vid: str, rec: dict[str, Any], planes: int | None) -> np.ndarray:
        data = rec["data"]
        if data["kind"] == DROPPED:
            self._refuse_dropped(vid, rec)
        if data["kind"] != "planes":
            raise FormatError(f"unknown tensor record kind {data['kind']!r}")
        cfg = codec.CodecConfig.from_json(data["codec"])
        n = int(np.prod(rec["shape"], dtype=np.int64)) * (2 if rec["dtype"].startswith("complex") else 1)
        out = np.empty(n, uint_dtype(rec["dtype"]))
        base = context = None
        if data.get("context") is not None:
            # context-coded deltas are not plane-separable: base and context are needed
            # in full, and all planes are decoded whatever ``planes`` asks for
            planes = None
            c = data["context"]
            context = self.decode(c["version"], int(c["index"]), None)
        if data.get("base") is not None:
            b = data["base"]
            base = self.decode(b["version"], int(b["index"]), planes)
        m = self.manifest_of(vid)
        chunks = self.fetch(m, data["chunks"], planes)
        where = f"{m.ref} tensor {rec['path']!r}"
        return codec.decode_tensor(chunks, out, base, cfg, where, context=context)

    def fetch(
        self, m: Manifest, chunks: Sequence[dict[str, Any]], planes: int | None
    ) -> list[tuple[int, list[codec.Frame]]]:
        """Read the frames of the leading ``planes`` planes, one read call per pack."""
        wanted: dict[int, list[tuple[int, int]]] = {}
        for chunk in chunks:
            for p, frame in enumerate(chunk["frames"][:planes]):
                wanted.setdefault(p, []).append((int(frame[0]), int(frame[1])))
        payloads: dict[int, list[bytes]] = {}
        for p, ranges in wanted.items():
            oid = m.packs[p]
            if oid is None:
                raise FormatError(f"{m.ref} references plane pack {p}, which it does not list")
            payloads[p] = self.objects.get_ranges(oid, ranges)
            with self._lock:
                self.bytes_read += sum(n for _, n in ranges)
        out = []
        for c, chunk in enumerate(chunks):
            frames = [
                (frame[2], payloads[p][c]) for p, frame in enumerate(chunk["frames"][:planes])
            ]
            out.append((int(chunk["n"]), frames))
        return out
