"""Read a version's weights one byte plane at a time, counting every byte read.

A tensor stored whole is plane-separable: plane p of every chunk is one frame of the
manifest's pack p, decodable alone. Such tensors are fetched plane by plane, only as
far as the caller asks, and each frame is read once. Everything else (reverse deltas
with context coding, integer buffers) is read whole on first use: its bits are then
known exactly, and the bytes it cost are counted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhub_torch.errors import CorruptObjectError, ModelHubError
from modelhub_torch.kernels.layout import from_exp_first_numpy
from modelhub_torch.manifest import Manifest
from modelhub_torch.pas import entropy
from modelhub_torch.pas.dtypes import uint_dtype
from modelhub_torch.reader import digest_bits
from modelhub_torch.skeleton import state_dict_paths

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository

FLOATS = ("float32", "float16", "bfloat16")


@dataclass
class StoredTensor:
    """One state_dict entry: where its bytes are and what has been read of them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    width: int  # bytes per element = number of planes
    manifest: Manifest  # the manifest that stores the data (after `same` links)
    index: int  # the record's index in that manifest
    record: dict[str, Any]
    separable: bool
    layout: str  # "exp-first" | "ieee"
    planes: list[np.ndarray] = field(default_factory=list)  # decoded planes read so far
    exact: np.ndarray | None = None  # all bits (non-separable tensors, or all planes read)

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
        paths = state_dict_paths(m.skeleton)
        if not paths:
            raise ModelHubError(f"{self.ref} holds no state_dict: progressive inference needs model weights")
        wanted = list(paths) if names is None else names
        missing = [n for n in wanted if n not in paths]
        if missing:
            raise ModelHubError(
                f"{self.ref} has no weights named {', '.join(missing[:5])}: is the module the "
                "architecture this version was saved from?"
            )
        self.bytes_read = 0
        self.tensors: dict[str, StoredTensor] = {}
        for name in wanted:
            hv, hi = self.reader.resolve(self.vid, paths[name])
            hm = repo.manifest(hv)
            rec = hm.tensors[hi]
            data = rec["data"]
            width = np.dtype(uint_dtype(rec["dtype"])).itemsize
            separable = (
                rec["dtype"] in FLOATS
                and data["kind"] == "planes"
                and data.get("base") is None
                and data.get("context") is None
                and data.get("lossy") is None
                and int(data["codec"].get("group_from", 8)) >= width
            )
            layout = "exp-first" if int(data["codec"].get("exp_bits", 0)) else "ieee"
            self.tensors[name] = StoredTensor(name, rec["dtype"], tuple(rec["shape"]), width, hm, hi, rec,
                                              separable, layout)
        seen: set[tuple[str, int]] = set()
        self.bytes_full = sum(self._full_bytes(t.manifest.id, t.index, seen) for t in self.tensors.values())

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
        """Make at least ``planes`` planes of ``name`` known (reading only new frames)."""
        t = self.tensors[name]
        if t.known >= planes:
            return
        if not t.separable:
            before = self.reader.bytes_read
            t.exact = self.reader.decode(t.manifest.id, t.index)
            self.bytes_read += self.reader.bytes_read - before
            return
        while len(t.planes) < min(planes, t.width):
            t.planes.append(self._read_plane(t, len(t.planes)))
        if len(t.planes) == t.width:
            bits = self.bits(name)
            if digest_bits(bits) != t.record["digest"]:
                raise CorruptObjectError(
                    f"tensor {name!r} of {self.ref} fails its checksum after a plane-wise read; "
                    "run 'modelhub verify'"
                )
            t.exact = bits

    def _read_plane(self, t: StoredTensor, p: int) -> np.ndarray:
        chunks = t.record["data"]["chunks"]
        cold_from = t.record["data"].get("cold_from")
        packs = t.manifest.cold_packs if cold_from is not None and p >= cold_from else t.manifest.packs
        oid = packs[p] if p < len(packs) else None
        if oid is None:
            raise CorruptObjectError(f"{t.manifest.ref} lists no pack for plane {p}")
        ranges = [(int(c["frames"][p][0]), int(c["frames"][p][1])) for c in chunks]
        payloads = self.repo.objects.get_ranges(oid, ranges)
        self.bytes_read += sum(n for _, n in ranges)
        where = f"{t.manifest.ref} tensor {t.name!r} plane {p}"
        parts = [
            np.frombuffer(entropy.decode_plane(c["frames"][p][2], payload, int(c["n"]), where), np.uint8)
            for c, payload in zip(chunks, payloads)
        ]
        return np.concatenate(parts) if len(parts) != 1 else parts[0].copy()

    def bits(self, name: str) -> np.ndarray:
        """IEEE bit patterns with the planes read so far (unknown bits zero)."""
        t = self.tensors[name]
        if t.exact is not None:
            return t.exact
        udt = np.dtype(uint_dtype(t.dtype))
        n = int(np.prod(t.shape, dtype=np.int64))
        word = np.zeros(n, np.uint64)
        for p, plane in enumerate(t.planes):
            word |= plane.astype(np.uint64) << np.uint64(8 * (t.width - 1 - p))
        out = word.astype(udt)
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
        return bits_to_tensor(t.exact.copy(), t.dtype, list(t.shape)).to(torch.device("cpu"))
