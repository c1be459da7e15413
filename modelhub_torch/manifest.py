"""One manifest per version: what it is (identity, metadata, skeleton, tensor list)
and where its bytes are (per-tensor records pointing into plane packs).

A version's identity never changes; ``archive`` and the commit of a child may replace
its manifest with one that stores the same tensors differently (see FORMAT.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import zstandard

from modelhub_torch.errors import FormatError

FORMAT_VERSION = 1
# record kind of a tensor whose data was removed (trainer state pruned): it keeps its
# index so the records of other versions that point into this manifest stay valid
DROPPED = "dropped"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Manifest:
    id: str
    model: str
    number: int
    parent: str | None
    created_at: str
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    message: str
    skeleton: Any
    tensors: list[dict[str, Any]]
    packs: list[str | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # plane packs in the cold tier: frames of records with ``cold_from`` live here for
    # planes >= cold_from (archive --cold); empty for every manifest a commit writes
    cold_packs: list[str | None] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.model}@v{self.number}"

    @property
    def raw_bytes(self) -> int:
        return sum(int(t["nbytes"]) for t in self.live_tensors())

    @property
    def info(self) -> dict[str, Any]:
        """Free-form facts about the version (epoch, step, module class, versions)."""
        return self.extra.get("info", {})

    def copy_records(self) -> list[dict[str, Any]]:
        """Tensor records to edit into a replacement manifest: each record and its
        ``data`` are copied (edits replace values there), the rest is shared."""
        return [{**t, "data": dict(t["data"])} for t in self.tensors]

    def live_tensors(self) -> list[dict[str, Any]]:
        """Records that still hold data (not dropped)."""
        return [t for t in self.tensors if t["data"]["kind"] != DROPPED]

    def objects(self) -> set[str]:
        """The pack objects this manifest references (both tiers)."""
        return {oid for oid in (*self.packs, *self.cold_packs) if oid}

    def cold_bytes(self) -> int:
        """Bytes of this manifest's frames that live in the cold tier."""
        total = 0
        for t in self.tensors:
            data = t["data"]
            k = data.get("cold_from")
            if data["kind"] == "planes" and k is not None:
                total += sum(int(f[1]) for c in data["chunks"] for f in c["frames"][k:])
        return total

    def plane_bytes(self) -> list[int]:
        """Bytes this manifest's own packs hold, per plane (both tiers)."""
        sizes = [0] * max(len(self.packs), len(self.cold_packs))
        for t in self.tensors:
            data = t["data"]
            if data["kind"] == "planes":
                for chunk in data["chunks"]:
                    for p, frame in enumerate(chunk["frames"]):
                        sizes[p] += int(frame[1])
        return sizes

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "id": self.id,
            "model": self.model,
            "number": self.number,
            "parent": self.parent,
            "created_at": self.created_at,
            "metrics": self.metrics,
            "hparams": self.hparams,
            "message": self.message,
            "skeleton": self.skeleton,
            "tensors": self.tensors,
            "packs": self.packs,
            "extra": self.extra,
        }
        if self.cold_packs:
            doc["cold_packs"] = self.cold_packs
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        # stored as one zstd frame: per-tensor records (digests, frame tables) are
        # repetitive JSON, 14 KiB -> ~3 KiB for a small CNN checkpoint
        return zstandard.ZstdCompressor(level=9).compress(text)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> Manifest:
        if data[:4] == ZSTD_MAGIC:
            try:
                data = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)
            except zstandard.ZstdError as exc:
                raise FormatError(f"{where} is not a valid zstd frame: {exc}") from exc
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
            raise FormatError(
                f"{where} has format {doc.get('format') if isinstance(doc, dict) else '?'}; "
                f"this modelhub_torch reads format {FORMAT_VERSION} — upgrade the package"
            )
        try:
            return cls(
                id=doc["id"],
                model=doc["model"],
                number=int(doc["number"]),
                parent=doc["parent"],
                created_at=doc["created_at"],
                metrics=doc["metrics"],
                hparams=doc["hparams"],
                message=doc["message"],
                skeleton=doc["skeleton"],
                tensors=doc["tensors"],
                packs=doc["packs"],
                extra=doc.get("extra", {}),
                cold_packs=doc.get("cold_packs", []),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where} lacks a field: {exc}") from exc
