"""Read a version's weights one byte plane at a time, counting every byte read.

A tensor stored whole is plane-separable: plane p of every chunk is one frame of the
manifest's pack p, decodable alone. Such tensors are fetched plane by plane, only as
far as the caller asks, and each frame is read once. A delta is plane-separable too when
its op never carries across bytes (XOR, or subtraction with 1-byte lanes) and no plane
is regrouped: the top q IEEE planes of the tensor are its delta's top q planes combined
with its base's top q IEEE planes (recursively down the chain; a whole float base in
exponent-first layout needs one plane more for q = 1, since its first plane holds the
exponent and no sign). Everything else (context-coded or lane-4 deltas, lossy codes,
integer buffers) is read whole on first use: its bits are then known exactly, and the
bytes it cost are counted the same way. A weight stored as a view of another tensor's
storage (a slice of a fused weight) reads that tensor's planes and takes its own
elements from them (``skeleton_check.view_gather``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhub_torch.errors import CorruptObjectError, ModelHubError, PartialVersionError
from modelhub_torch.kernels.layout import from_exp_first_numpy
from modelhub_torch.manifest import Manifest
from modelhub_torch.pas import entropy
from modelhub_torch.pas.dtypes import uint_dtype
from modelhub_torch.reader import digest_bits
from modelhub_torch.skeleton_check import state_dict_nodes, view_gather

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository

FLOATS = ("float32", "float16", "bfloat16")


@dataclass
class StoredTensor:
    """One state_dict entry: where its bytes are and what has been read of them."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # the weight's
    width: int  # bytes per element = number of planes
    manifest: Manifest  # the manifest that stores the data (after `same` links)
    index: int  # the record's index in that manifest
    record: dict[str, Any]
    separable: bool
    layout: str  # "exp-first" | "ieee" (the planes kept for a delta are IEEE planes)
    delta: bool = False  # a plane-separable delta: planes come from the chain
    planes: list[np.ndarray] = field(default_factory=list)  # decoded planes read so far
    exact: np.ndarray | None = None  # all bits (non-separable tensors, or all planes read)
    # for a weight that is a view of the stored tensor: the stored elements it is made of
    gather: np.ndarray | None = None
    slot: int = -1  # the record's index in the version being read (before links)

    @property
    def known(self) -> int:
        """Planes known (all of them once the exact bits are)."""
        return self.width if self.exact is not None else len(self.planes)


class PlaneReader:
    """The state_dict tensors of one version, readable plane by plane."""

    def __init__(self, repo: Repository, ref: str, names: list[str] | None = None):
        self.repo = repo
        self.vid = repo.resolve(ref)
        self.ref = repo.version(self.vid).ref
        self.reader = repo.reader()
        m = repo.manifest(self.vid)
        nodes = state_dict_nodes(m.skeleton)
        if not nodes:
            raise ModelHubError(f"{self.ref} holds no state_dict: progressive inference needs model weights")
        wanted = list(nodes) if names is None else names
        missing = [n for n in wanted if n not in nodes]
        if missing:
            raise ModelHubError(
                f"{self.ref} has no weights named {', '.join(missing[:5])}: is the module the "
                "architecture this version was saved from?"
            )
        self.bytes_read = 0
        self.tensors: dict[str, StoredTensor] = {}
        for name in wanted:
            node = nodes[name]
            if node.get("conj") or node.get("neg"):
                raise ModelHubError(f"{self.ref}: weight {name!r} is a conjugate or negative view; "
                                    "progressive inference reads plain weights only")
            hv, hi = self.reader.resolve(self.vid, node["$t"])
            hm = repo.manifest(hv)
            rec = hm.tensors[hi]
            data = rec["data"]
            width = np.dtype(uint_dtype(rec["dtype"])).itemsize
            delta = rec["dtype"] in FLOATS and self._separable_chain(hv, hi)
            separable = rec["dtype"] in FLOATS and (_whole(data, width) or delta)
            layout = "exp-first" if int(data["codec"].get("exp_bits", 0)) and not delta else "ieee"
            gather = view_gather(node, rec["shape"])
            shape = tuple(rec["shape"]) if gather is None else tuple(node["size"])
            self.tensors[name] = StoredTensor(name, rec["dtype"], shape, width, hm, hi, rec,
                                              separable, layout, delta, gather=gather, slot=node["$t"])
        self._raw: dict[tuple[str, int], list[np.ndarray]] = {}  # stored planes read, per record
        seen: set[tuple[str, int]] = set()
        self.bytes_full = sum(self._full_bytes(t.manifest.id, t.index, seen) for t in self.tensors.values())

    def _separable_chain(self, vid: str, idx: int) -> bool:
        """Whether a record is a delta whose whole chain is plane-separable."""
        rec = self.repo.manifest(vid).tensors[idx]
        data = rec["data"]
        width = np.dtype(uint_dtype(rec["dtype"])).itemsize
        if not _separable_delta(data, width):
            return False
        bv, bi = self.reader.resolve(data["base"]["version"], int(data["base"]["index"]))
        brec = self.repo.manifest(bv).tensors[bi]
        return _whole(brec["data"], width) or self._separable_chain(bv, bi)

    def _full_bytes(self, vid: str, idx: int, seen: set[tuple[str, int]]) -> int:
        """Bytes a full decode of one record reads: its frames and its chain's."""
        vid, idx = self.reader.resolve(vid, idx)
        if (vid, idx) in seen:
            return 0
        seen.add((vid, idx))
        data = self.repo.manifest(vid).tensors[idx]["data"]
        total = sum(int(f[1]) for c in data.get("chunks", ()) for f in c["frames"])
        for key in ("base", "context"):
            link = data.get(key)
            if link is not None:
                total += self._full_bytes(link["version"], int(link["index"]), seen)
        return total

    # ---------------------------------------------------------------- reads
    def fetch(self, name: str, planes: int) -> None:
        """Make at least ``planes`` planes of ``name`` known (reading only new frames).
        A version pulled with fewer planes than asked for is fetched in full from its
        source first (the repository does that), then read exactly."""
        try:
            self._fetch(name, planes)
        except (CorruptObjectError, PartialVersionError):
            t = self.tensors[name]
            if not (self.repo.manifest(self.vid).partial or t.manifest.partial):
                raise
            self.repo.complete(self.vid)
            before = self.reader.bytes_read
            t.exact = self.reader.decode(self.vid, t.slot)
            self.bytes_read += self.reader.bytes_read - before

    def _fetch(self, name: str, planes: int) -> None:
        t = self.tensors[name]
        if t.known >= planes:
            return
        if not t.separable:
            before = self.reader.bytes_read
            t.exact = self.reader.decode(t.manifest.id, t.index)
            self.bytes_read += self.reader.bytes_read - before
            return
        if t.delta:
            t.planes = self._ieee_planes(t.manifest.id, t.index, min(planes, t.width))
        while len(t.planes) < min(planes, t.width):
            t.planes.append(self._stored_planes(t.manifest.id, t.index, len(t.planes) + 1)[-1])
        if len(t.planes) == t.width:
            bits = self._stored_bits(t)
            if digest_bits(bits) != t.record["digest"]:
                raise CorruptObjectError(
                    f"tensor {name!r} of {self.ref} fails its checksum after a plane-wise read; "
                    "run 'modelhub verify'"
                )
            t.exact = bits

    def _stored_planes(self, vid: str, idx: int, q: int) -> list[np.ndarray]:
        """The first ``q`` stored planes of one record, each frame read once."""
        have = self._raw.setdefault((vid, idx), [])
        if len(have) < q:
            m = self.repo.manifest(vid)
            rec = m.tensors[idx]
            while len(have) < q:
                have.append(self._read_plane(m, rec, len(have)))
        return have[:q]

    def _ieee_planes(self, vid: str, idx: int, q: int) -> list[np.ndarray]:
        """The first ``q`` IEEE planes of a tensor in a plane-separable chain."""
        vid, idx = self.reader.resolve(vid, idx)
        rec = self.repo.manifest(vid).tensors[idx]
        data = rec["data"]
        width = np.dtype(uint_dtype(rec["dtype"])).itemsize
        if data.get("base") is None:
            exp_bits = int(data["codec"].get("exp_bits", 0))
            if not exp_bits:
                return self._stored_planes(vid, idx, q)
            need = min(width, q if 8 * q >= exp_bits + 1 else q + 1)  # the sign is in stored plane 1
            word = _word(self._stored_planes(vid, idx, need), width)
            from_exp_first_numpy(word.copy(), exp_bits, word)
            return _split(word, width)[:q]
        base = self._ieee_planes(data["base"]["version"], int(data["base"]["index"]), q)
        deltas = self._stored_planes(vid, idx, q)
        if data["codec"]["op"] == "xor":
            return [b ^ d for b, d in zip(base, deltas)]
        # 1-byte lanes: element byte = base byte + unzigzag(delta byte), mod 256
        return [(b + ((d >> 1) ^ (0 - (d & 1)).astype(np.uint8))).astype(np.uint8) for b, d in zip(base, deltas)]

    def _read_plane(self, m: Manifest, rec: dict[str, Any], p: int) -> np.ndarray:
        chunks = rec["data"]["chunks"]
        cold_from = rec["data"].get("cold_from")
        packs = m.cold_packs if cold_from is not None and p >= cold_from else m.packs
        oid = packs[p] if p < len(packs) else None
        if oid is None:
            raise CorruptObjectError(f"{m.ref} lists no pack for plane {p}")
        ranges = [(int(c["frames"][p][0]), int(c["frames"][p][1])) for c in chunks]
        payloads = self.repo.objects.get_ranges(oid, ranges, self.reader.mapped)
        self.bytes_read += sum(n for _, n in ranges)
        where = f"{m.ref} tensor {rec['path']!r} plane {p}"
        parts = [
            np.frombuffer(entropy.decode_plane(c["frames"][p][2], payload, int(c["n"]), where), np.uint8)
            for c, payload in zip(chunks, payloads)
        ]
        return np.concatenate(parts) if len(parts) != 1 else parts[0].copy()

    def bits(self, name: str) -> np.ndarray:
        """IEEE bit patterns of a weight with the planes read so far (unknown bits zero)."""
        t = self.tensors[name]
        out = self._stored_bits(t)
        return out if t.gather is None else out[t.gather]

    def _stored_bits(self, t: StoredTensor) -> np.ndarray:
        """The same of the stored tensor a weight is (part of)."""
        if t.exact is not None:
            return t.exact
        n = int(np.prod(t.record["shape"], dtype=np.int64))
        out = _word(t.planes, t.width) if t.planes else np.zeros(n, uint_dtype(t.dtype))
        if t.layout == "exp-first":
            exp_bits = {"float32": 8, "float16": 5, "bfloat16": 8}[t.dtype]
            from_exp_first_numpy(out.copy(), exp_bits, out)
        return out

    def tensor(self, name: str) -> Any:
        """The exact weights as a torch tensor (all planes must be known)."""
        import torch

        from modelhub_torch.pas.dtypes import bits_to_tensor

        t = self.tensors[name]
        if t.exact is None:
            raise ModelHubError(f"{name!r} is not fully read yet")
        bits = t.exact.copy() if t.gather is None else t.exact[t.gather]
        return bits_to_tensor(bits, t.dtype, list(t.shape)).to(torch.device("cpu"))


def _whole(data: dict[str, Any], width: int) -> bool:
    """A record stored whole with planes decodable one by one."""
    return (
        data["kind"] == "planes"
        and data.get("base") is None
        and data.get("context") is None
        and data.get("lossy") is None
        and int(data["codec"].get("group_from", 8)) >= width
    )


def _separable_delta(data: dict[str, Any], width: int) -> bool:
    """A delta whose plane p depends only on plane p of its base and of itself."""
    if data["kind"] != "planes" or data.get("base") is None:
        return False
    if data.get("context") is not None or data.get("exponent_context") is not None:
        return False
    codec = data["codec"]
    if data.get("lossy") is not None or int(codec.get("group_from", 8)) < width:
        return False
    return codec["op"] == "xor" or (codec["op"] == "sub" and int(codec.get("lane", 4)) == 1)


def _word(planes: list[np.ndarray], width: int) -> np.ndarray:
    """Elements with the given leading planes (the others zero)."""
    word = np.zeros(planes[0].shape[0], np.uint64)
    for p, plane in enumerate(planes):
        word |= plane.astype(np.uint64) << np.uint64(8 * (width - 1 - p))
    return word.astype(np.dtype(f"u{width}"))


def _split(word: np.ndarray, width: int) -> list[np.ndarray]:
    """The byte planes of elements, most significant first."""
    w = word.astype(np.uint64)
    return [((w >> np.uint64(8 * (width - 1 - p))) & np.uint64(0xFF)).astype(np.uint8) for p in range(width)]
