"""Commit-side encoding: tensors into plane packs, one pack object per plane.

Plane p of every tensor a manifest owns goes to pack p, so a reader wanting the high
planes of a version reads one contiguous object and never touches the low ones.
"""

from __future__ import annotations

import os
from typing import Any

import blake3
import numpy as np

from modelhub_torch.pas import codec
from modelhub_torch.store.objects import ObjectStore, ObjectWriter

PACK_SALT_BYTES = 16


class PackSet:
    """Lazily opened streaming writers, one per plane.

    Every pack starts with 16 random bytes, so no two packs are ever byte-identical:
    a pack is owned by exactly one manifest even though objects are named by content,
    and deleting a replaced manifest's packs can never remove another's.

    ``salt``: derive those bytes from it instead (a version sent to a hub, keyed by
    the version and its base): coding the same transfer again gives the same objects,
    so a push cut short resends only what did not arrive.
    """

    def __init__(self, objects: ObjectStore, salt: bytes | None = None):
        self.objects = objects
        self.writers: list[ObjectWriter | None] = []
        self.salt = salt

    def _writer(self, plane: int) -> ObjectWriter:
        while len(self.writers) <= plane:
            self.writers.append(None)
        w = self.writers[plane]
        if w is None:
            w = self.writers[plane] = self.objects.writer()
            w.write(os.urandom(PACK_SALT_BYTES) if self.salt is None else
                    blake3.blake3(self.salt + plane.to_bytes(2, "big"), max_threads=1).digest(PACK_SALT_BYTES))
        return w

    def add(
        self,
        chunks: list[tuple[int, list[codec.Frame]]],
        cold: PackSet | None = None,
        cold_from: int | None = None,
    ) -> list[dict[str, Any]]:
        """Append coded chunks; returns their manifest records ``{n, frames}``. With
        ``cold``, frames of planes ``>= cold_from`` go to that (cold-tier) pack set."""
        out = []
        for n, frames in chunks:
            refs = []
            for p, (kind, payload) in enumerate(frames):
                target = cold if cold is not None and cold_from is not None and p >= cold_from else self
                off = target._writer(p).write(payload)
                refs.append([off, len(payload), kind])
            out.append({"n": n, "frames": refs})
        return out

    def commit(self) -> list[str | None]:
        return [w.commit() if w is not None else None for w in self.writers]

    def abort(self) -> None:
        for w in self.writers:
            if w is not None:
                w.abort()


def encoded_size(chunks: list[tuple[int, list[codec.Frame]]]) -> int:
    return sum(len(payload) for _, frames in chunks for _, payload in frames)


def encode_all(
    bits: np.ndarray,
    base: np.ndarray | None,
    cfg: codec.CodecConfig,
    context: np.ndarray | None = None,
) -> list[tuple[int, list[codec.Frame]]]:
    return list(codec.encode_tensor(bits, base, cfg, context=context))


def record_size(rec: dict[str, Any]) -> int:
    data = rec["data"]
    if data["kind"] != "planes":
        return 0
    return sum(int(f[1]) for c in data["chunks"] for f in c["frames"])
