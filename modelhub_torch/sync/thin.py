"""The sender's side of a transfer: one version encoded against a base the destination
holds (git's thin packs).

A repository stores its newest version whole and older ones as reverse deltas, so its
stored objects are the wrong thing to send: the newest would cross nearly whole. A
version travels instead as forward deltas against its parent when the destination has
the parent (or receives it earlier in the same transfer), as ``same`` links to tensors
the destination already holds, and whole otherwise. The frames are written straight
into the destination's object store (content-addressed, hashed while written); they are
unreferenced until the receiver publishes a manifest naming them.

With ``planes=K`` only the top K byte planes of each float tensor travel: deltas are
coded plane-separably (1-byte lanes) so the top planes of a version are its base's
top planes combined with its delta's, and the frames of the lower planes are coded but
only hashed, never written (their names fill ``cold_packs`` so the manifest stays
well-formed; the missing planes are fetched from the source when needed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np

from modelhub_torch.errors import CorruptObjectError
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas import codec
from modelhub_torch.pas.codec import CodecConfig, RepoCodecs
from modelhub_torch.reader import TensorReader
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.writer import PackSet, encode_all

FLOATS = ("float32", "float16", "bfloat16", "float64")


class _HashOnly:
    """A pack writer that keeps nothing: the object id its bytes would have."""

    def __init__(self) -> None:
        self._hash = blake3.blake3(max_threads=1)
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        offset = self.size
        self._hash.update(data)
        self.size += len(data)
        return offset

    def commit(self) -> str:
        return self._hash.hexdigest()

    def abort(self) -> None:
        pass


class HashedPackSet(PackSet):
    """Plane packs that are coded and named but not stored (the planes a partial
    transfer leaves behind)."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def _writer(self, plane: int) -> Any:
        while len(self.writers) <= plane:
            self.writers.append(None)
        if self.writers[plane] is None:
            self.writers[plane] = _HashOnly()
        return self.writers[plane]


class PlainPackSet(PackSet):
    """Plane packs stored as HashedPackSet names them: the frames alone, unsalted (the
    objects a partial version's ``cold_packs`` name)."""

    def _writer(self, plane: int) -> Any:
        while len(self.writers) <= plane:
            self.writers.append(None)
        if self.writers[plane] is None:
            self.writers[plane] = self.objects.writer()
        return self.writers[plane]


@dataclass
class ThinVersion:
    """A version encoded for one destination: its manifest (frames in packs already
    written there), and what was written."""

    manifest: Manifest
    objects: int
    bytes: int
    partial: bool
    checked: bool = True  # coded and decoded again by this process (else the receiver checks)


def top_planes(dtype: str, cfg: CodecConfig, planes: int, width: int) -> int:
    """Stored planes needed for the top ``planes`` IEEE planes of a whole tensor: the
    exponent-first layout keeps the sign in its second plane, so one IEEE plane of a
    float32 needs two stored ones (see progressive/planes.py)."""
    exp_bits = cfg.exp_bits if cfg.op == "none" else 0
    if exp_bits and 8 * planes < exp_bits + 1:
        planes += 1
    return min(width, planes)


def encode_thin(
    src: RepoStore,
    reader: TensorReader,
    dst: RepoStore,
    vid: str,
    base: str | None,
    linkable: Callable[[str], bool],
    planes: int | None = None,
    fits: Callable[[Manifest], bool] | None = None,
    rest: bool = False,
) -> ThinVersion:
    """Encode version ``vid`` of ``src`` for ``dst``: deltas against ``base`` (a
    version ``dst`` holds), ``same`` links to tensors of versions ``linkable`` says
    ``dst`` holds, whole frames otherwise; only the top ``planes`` planes of float
    tensors are written when ``planes`` is given.

    Every coded tensor is decoded again in memory and checked against its digest
    before a byte is written. ``fits``: whether the destination's layout (its
    recreation budget) takes the thin version; when it does not, the version is sent
    whole instead, so nothing is written twice. ``rest`` (with ``planes``): write the
    planes a partial transfer leaves behind as well, as the very objects its
    ``cold_packs`` name (a hub completing a partial copy, hub/packs.py)."""
    m = src.manifest(vid)
    coded = _code(src, reader, dst, m, base, linkable, planes)
    if base is not None and planes is None and fits is not None and not fits(_provisional(m, coded)):
        base = None
        coded = _code(src, reader, dst, m, base, linkable, planes)
    stable = getattr(dst, "stable_packs", False)  # a hub's staging store (sinks.Staging)
    salt = f"thin:{vid}:{base}:{planes}".encode() if stable else None
    packs = PackSet(dst.objects, salt=salt)
    hashed = (PlainPackSet(dst.objects) if rest else HashedPackSet()) if planes is not None else None
    records = []
    try:
        for rec, data, chunks, keep in coded:
            if chunks is not None:
                data = {**data, "chunks": packs.add(chunks, hashed, keep) if keep is not None else packs.add(chunks)}
                if keep is not None:
                    data["cold_from"] = keep
            records.append({**rec, "data": data})
        written = [w for w in packs.writers if w is not None]
        sizes = sum(w.size for w in written)
        pack_ids = packs.commit()
    except BaseException:
        packs.abort()
        if hashed is not None:
            hashed.abort()
        raise
    any_partial = any(keep is not None for *_, keep in coded)
    cold = hashed.commit() if hashed is not None and any_partial else []
    extra = {k: v for k, v in m.extra.items() if k != "partial"}
    if any_partial:
        extra["partial"] = {"planes": planes, "source": src.url, "base": base}
    wire = Manifest(**{**m.__dict__, "tensors": records, "packs": pack_ids, "cold_packs": cold, "extra": extra})
    return ThinVersion(wire, len(written), sizes, any_partial)


Coded = list[tuple[dict[str, Any], dict[str, Any], list | None, int | None]]  # record, data, chunks, cold_from


def _code(src: RepoStore, reader: TensorReader, dst: RepoStore, m: Manifest, base: str | None,
          linkable: Callable[[str], bool], planes: int | None) -> Coded:
    """Every tensor of ``m`` as a link or coded chunks (in memory, checked)."""
    codecs = RepoCodecs.from_settings(dst.settings)
    bm = src.manifest(base) if base is not None else None
    base_at = {r["path"]: i for i, r in enumerate(bm.tensors) if r["data"]["kind"] != DROPPED} if bm else {}
    out: Coded = []
    seen: dict[tuple, int] = {}
    for i, rec in enumerate(m.tensors):
        meta = {k: v for k, v in rec.items() if k != "data"}
        if rec["data"]["kind"] == DROPPED:
            out.append((meta, dict(rec["data"]), None, None))
            continue
        key = (rec["digest"], rec["dtype"], tuple(rec["shape"]))
        link = _link(reader, m.id, i, rec, bm, base_at, linkable)
        if link is None and key in seen:
            link = {"kind": "same", "version": m.id, "index": seen[key]}
        if link is not None:
            out.append((meta, link, None, None))
            continue
        seen[key] = i
        bits = reader.decode(m.id, i)
        width = bits.itemsize
        cut = planes is not None and rec["dtype"] in FLOATS
        whole_cfg = codecs.materialize.for_dtype(rec["dtype"], width, exp_first=codecs.exp_first)
        if cut:  # plane-separable deltas: 1-byte lanes, no regrouped planes
            delta_cfg = CodecConfig("sub", 1, 8, codecs.delta.level, codecs.delta.chunk_elems)
            if whole_cfg.group_from < width:
                whole_cfg = CodecConfig("none", 1, 8, whole_cfg.level, whole_cfg.chunk_elems, whole_cfg.exp_bits)
        else:
            delta_cfg = codecs.delta.for_dtype(rec["dtype"], width)
        cfg, chunks, base_bits, link_to = whole_cfg, encode_all(bits, None, whole_cfg), None, None
        keep = top_planes(rec["dtype"], whole_cfg, planes, width) if cut else width
        bi = base_at.get(rec["path"])
        brec = bm.tensors[bi] if bi is not None else None
        if brec is not None and brec["dtype"] == rec["dtype"] and brec["shape"] == rec["shape"]:
            bbits = reader.decode(base, bi)
            delta = encode_all(bits, bbits, delta_cfg)
            if _sent_size(delta, planes if cut else width) < _sent_size(chunks, keep):
                cfg, chunks, base_bits, link_to = delta_cfg, delta, bbits, {"version": base, "index": bi}
                keep = planes if cut else width
        check = np.empty_like(bits)
        codec.decode_tensor(chunks, check, base_bits, cfg, f"{m.ref} tensor {rec['path']!r} as sent")
        if not np.array_equal(check, bits):
            raise CorruptObjectError(f"{m.ref} tensor {rec['path']!r} does not decode to its bits as coded for sending")
        del check, bits
        data = {"kind": "planes", "codec": cfg.to_json(), "base": link_to}
        out.append((meta, data, chunks, keep if cut and keep < width else None))
    return out


def _provisional(m: Manifest, coded: Coded) -> Manifest:
    """The manifest ``coded`` would make, its frames named but not written (for the
    destination's budget estimate, which reads frame sizes and coders only)."""
    hashed = HashedPackSet()
    records = []
    for rec, data, chunks, _ in coded:
        if chunks is not None:
            data = {**data, "chunks": hashed.add(chunks)}
        records.append({**rec, "data": data})
    return Manifest(**{**m.__dict__, "tensors": records, "packs": hashed.commit(), "cold_packs": []})


def _link(
    reader: TensorReader,
    vid: str,
    i: int,
    rec: dict[str, Any],
    bm: Manifest | None,
    base_at: dict[str, int],
    linkable: Callable[[str], bool],
) -> dict[str, Any] | None:
    """A ``same`` link the destination can follow instead of sending the tensor: to
    the base's tensor at the same path when the bits are equal, else to where the
    source links (that version, or the one holding the data) when the destination
    holds it."""
    bi = base_at.get(rec["path"])
    if bi is not None:
        brec = bm.tensors[bi]
        if (brec["digest"], brec["dtype"], brec["shape"]) == (rec["digest"], rec["dtype"], rec["shape"]):
            return {"kind": "same", "version": bm.id, "index": bi}
    data = rec["data"]
    if data["kind"] != "same":
        return None
    for target in ((data["version"], int(data["index"])), reader.resolve(vid, i)):
        if target[0] != vid and linkable(target[0]):
            return {"kind": "same", "version": target[0], "index": target[1]}
    return None


def _sent_size(chunks: list, planes: int) -> int:
    """Bytes of the frames of the top ``planes`` planes (what a transfer writes)."""
    return sum(len(payload) for _, frames in chunks for _, payload in frames[:planes])


__all__ = ["HashedPackSet", "PlainPackSet", "ThinVersion", "encode_thin", "top_planes"]
