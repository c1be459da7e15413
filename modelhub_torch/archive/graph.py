"""The matrix storage graph of a repository (the paper's §IV-B), measured from its data.

Vertices: every distinct tensor content (same digest, dtype and shape = one vertex, held
by one record; the others become ``same`` links to it). Groups: each version is a
snapshot, a co-usage group of the tensors it holds. Candidate edges of a tensor at
path P of version V: store it whole, or as a delta from the tensor at P of V's parent,
children (git's reverse deltas), the two versions before and after V in its model
(other snapshots of the run), and V's siblings (other fine-tunes of the same base);
each edge also in a cold-tier variant when a cold location is given (the tier is an edge
option, as the paper proposes: cheaper storage, dearer recreation).

Storage cost = measured encoded bytes (hot + ``cold_price`` x cold). Tensors above
``sample_bytes`` are estimated from 16 evenly spread blocks of 64 Ki elements, scaled
to the tensor's size (per-plane entropy coding makes that a close estimate).
Recreation cost = the calibrated decode-time model of ``costs.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhub_torch.archive.costs import DecodeModel
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas import lossy as lossy_mod
from modelhub_torch.pas.codec import RepoCodecs
from modelhub_torch.pas.dtypes import uint_dtype
from modelhub_torch.pas.planner import ROOT, StorageGraph
from modelhub_torch.writer import encode_all

if TYPE_CHECKING:
    from modelhub_torch.reader import TensorReader
    from modelhub_torch.store.repo import RepoStore

SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_ELEMS = 1 << 16
RUN_NEIGHBOURS = 2  # versions before/after in the same model that are delta candidates


@dataclass
class Unit:
    """One distinct tensor content: a vertex of the graph."""

    name: str
    path: str
    rec: dict[str, Any]  # a record of it (dtype, shape, nbytes, digest)
    occurrences: list[tuple[str, int]]  # (version id, index) of every record holding it
    holder: tuple[str, int]  # the record that will hold the data
    source: tuple[str, int]  # where its bits are decoded from before the archive
    lossy: lossy_mod.LossyScheme | None = None  # a lossy replacement made by this archive
    kept_lossy: bool = False  # already lossy: its coded frames are kept as they are


@dataclass(frozen=True)
class EdgeInfo:
    """What a chosen edge means for the rewrite."""

    base: str | None  # unit name of the delta base, None = whole
    cold: bool  # low-order planes in the cold tier
    hot_bytes: int
    cold_bytes: int


@dataclass
class RepoGraph:
    graph: StorageGraph
    units: dict[str, Unit]
    unit_of: dict[tuple[str, int], str]
    edges: dict[int, EdgeInfo]
    manifests: dict[str, Manifest]
    order: list[str]  # version ids, by model and number
    group_of: dict[str, str] = field(default_factory=dict)  # version id -> group (its ref)


def neighbours(manifests: dict[str, Manifest]) -> dict[str, list[str]]:
    """Per version, the versions whose same-path tensors are delta candidates."""
    by_model: dict[str, list[Manifest]] = {}
    children: dict[str, list[str]] = {}
    for m in manifests.values():
        by_model.setdefault(m.model, []).append(m)
        if m.parent in manifests:
            children.setdefault(m.parent, []).append(m.id)
    for ms in by_model.values():
        ms.sort(key=lambda m: m.number)
    out: dict[str, list[str]] = {}
    for ms in by_model.values():
        for k, m in enumerate(ms):
            near = [x.id for x in ms[max(0, k - RUN_NEIGHBOURS): k + RUN_NEIGHBOURS + 1] if x.id != m.id]
            cand = []
            if m.parent in manifests:
                cand.append(m.parent)
                cand += [c for c in children.get(m.parent, []) if c != m.id]  # siblings
            cand += children.get(m.id, [])
            cand += near
            out[m.id] = list(dict.fromkeys(cand))
    return out


def _sample(bits: np.ndarray, limit: int) -> tuple[np.ndarray, float]:
    """A deterministic sample of a big tensor (whole when small) and the scale to its size."""
    n = bits.shape[0]
    if bits.nbytes <= limit or n <= SAMPLE_BLOCKS * SAMPLE_BLOCK_ELEMS:
        return bits, 1.0
    starts = np.linspace(0, n - SAMPLE_BLOCK_ELEMS, SAMPLE_BLOCKS).astype(np.int64)
    idx = (starts[:, None] + np.arange(SAMPLE_BLOCK_ELEMS)[None, :]).ravel()
    return bits[idx], n / idx.shape[0]


def plane_sizes(chunks: list, scale: float = 1.0) -> list[int]:
    sizes: list[int] = []
    for _, frames in chunks:
        for p, (_, payload) in enumerate(frames):
            while len(sizes) <= p:
                sizes.append(0)
            sizes[p] += len(payload)
    return [round(s * scale) for s in sizes]


class GraphBuilder:
    def __init__(
        self,
        store: RepoStore,
        reader: TensorReader,
        model: DecodeModel,
        *,
        lossy: dict[str, lossy_mod.LossyScheme],
        cold: bool,
        hot_planes: int,
        cold_price: float,
        sample_bytes: int,
    ):
        s = store.settings
        self.store = store
        self.reader = reader
        self.model = model
        self.lossy = lossy
        self.cold = cold
        self.hot_planes = hot_planes
        self.cold_price = cold_price
        self.sample_bytes = sample_bytes
        c = RepoCodecs.from_settings(s)
        self.mat_cfg, self.delta_cfg, self.exp_first = c.materialize, c.delta, c.exp_first

    # ------------------------------------------------------------------ units
    def build(self, manifests: dict[str, Manifest], order: list[str]) -> RepoGraph:
        units: dict[str, Unit] = {}
        unit_of: dict[tuple[str, int], str] = {}
        by_content: dict[tuple, str] = {}
        for vid in order:
            m = manifests[vid]
            scheme = self.lossy.get(vid)
            for i, rec in enumerate(m.tensors):
                data = rec["data"]
                if data["kind"] == DROPPED:
                    continue
                hv, hi = self.reader.resolve(vid, i)
                held = manifests[hv].tensors[hi]["data"] if hv in manifests else data
                if scheme is not None and lossy_mod.applies(rec["dtype"], scheme):
                    name = f"L{len(units)}"
                    units[name] = Unit(name, rec["path"], rec, [(vid, i)], (vid, i), (vid, i), lossy=scheme)
                elif held.get("lossy") is not None:
                    name = f"K{len(units)}"
                    units[name] = Unit(name, rec["path"], rec, [(vid, i)], (vid, i), (hv, hi), kept_lossy=True)
                else:
                    key = (rec["digest"], rec["dtype"], tuple(rec["shape"]))
                    name = by_content.get(key)
                    if name is None:
                        name = by_content[key] = f"u{len(units)}"
                        units[name] = Unit(name, rec["path"], rec, [], (vid, i), (hv, hi))
                    units[name].occurrences.append((vid, i))
                unit_of[(vid, i)] = name
        for u in units.values():  # keep data where it is when its holder survives
            if u.source in u.occurrences:
                u.holder = u.source
        g = StorageGraph()
        rg = RepoGraph(g, units, unit_of, {}, manifests, order)
        for vid in order:
            rg.group_of[vid] = manifests[vid].ref
        for (vid, _), name in unit_of.items():
            g.add_matrix(name, rg.group_of[vid])
        self._edges(rg, neighbours(manifests))
        return rg

    # ------------------------------------------------------------------ edges
    def _edges(self, rg: RepoGraph, near: dict[str, list[str]]) -> None:
        path_index = {vid: {r["path"]: i for i, r in enumerate(m.tensors) if r["data"]["kind"] != DROPPED}
                      for vid, m in rg.manifests.items()}
        cands: dict[str, set[str]] = {}
        for (vid, i), name in rg.unit_of.items():
            u = rg.units[name]
            if u.lossy is not None or u.kept_lossy:
                continue
            path = rg.manifests[vid].tensors[i]["path"]  # (one content may sit at several paths)
            for w in near.get(vid, ()):
                j = path_index[w].get(path)
                if j is None:
                    continue
                other = rg.unit_of.get((w, j))
                if other is None or other == name:
                    continue
                o = rg.units[other]
                if o.lossy is not None or o.kept_lossy:
                    continue
                if o.rec["dtype"] != u.rec["dtype"] or o.rec["shape"] != u.rec["shape"]:
                    continue
                cands.setdefault(name, set()).add(other)
        by_path: dict[str, list[str]] = {}
        for name, u in rg.units.items():
            by_path.setdefault(u.path, []).append(name)
        for names in by_path.values():
            self._measure_path(rg, names, cands)

    def _measure_path(self, rg: RepoGraph, names: list[str], cands: dict[str, set[str]]) -> None:
        """Measure every candidate edge of one path's tensors (only these are decoded)."""
        bits: dict[str, np.ndarray] = {}

        def get(name: str) -> np.ndarray:
            if name not in bits:
                bits[name] = self.reader.decode(*rg.units[name].source)
            return bits[name]

        for name in names:
            u = rg.units[name]
            dtype, width = u.rec["dtype"], int(np.dtype(uint_dtype(u.rec["dtype"])).itemsize)
            raw = int(u.rec["nbytes"])
            if u.kept_lossy:
                data = rg.manifests[u.source[0]].tensors[u.source[1]]["data"]
                sizes = _frame_plane_sizes(data)
                self._add(rg, name, None, raw, sizes, width, delta=False)
                continue
            if u.lossy is not None:
                codes, transform = lossy_mod.encode(values_of(get(name), dtype), dtype, u.lossy)
                cbits = code_bits(codes)
                cfg = self.mat_cfg.for_dtype(transform["code_dtype"], cbits.itemsize, exp_first=self.exp_first)
                sample, scale = _sample(cbits, self.sample_bytes)
                sizes = plane_sizes(encode_all(sample, None, cfg), scale)
                self._add(rg, name, None, raw, sizes, cbits.itemsize, delta=False)
                continue
            x = get(name)
            sample, scale = _sample(x, self.sample_bytes)
            mcfg = self.mat_cfg.for_dtype(dtype, width, exp_first=self.exp_first)
            self._add(rg, name, None, raw, plane_sizes(encode_all(sample, None, mcfg), scale), width, delta=False)
            dcfg = self.delta_cfg.for_dtype(dtype, width)
            for other in sorted(cands.get(name, ())):
                base, _ = _sample(get(other), self.sample_bytes)
                sizes = plane_sizes(encode_all(sample, base, dcfg), scale)
                self._add(rg, name, other, raw, sizes, width, delta=True)

    def _add(self, rg: RepoGraph, name: str, base: str | None, raw: int, sizes: list[int], width: int, delta: bool) -> None:
        total = sum(sizes)
        eid = rg.graph.add_edge(base or ROOT, name, storage=total, recreation=self.model.seconds(raw, total, delta))
        rg.edges[eid] = EdgeInfo(base, False, total, 0)
        if self.cold and width > self.hot_planes:
            hot = sum(sizes[: self.hot_planes])
            cold = total - hot
            if cold > 0:
                eid = rg.graph.add_edge(
                    base or ROOT, name,
                    storage=hot + self.cold_price * cold,
                    recreation=self.model.seconds(raw, hot, delta, cold),
                )
                rg.edges[eid] = EdgeInfo(base, True, hot, cold)


def _frame_plane_sizes(data: dict[str, Any]) -> list[int]:
    sizes: list[int] = []
    for c in data["chunks"]:
        for p, f in enumerate(c["frames"]):
            while len(sizes) <= p:
                sizes.append(0)
            sizes[p] += int(f[1])
    return sizes


def values_of(bits: np.ndarray, dtype: str) -> np.ndarray:
    """A tensor's values as the lossy module takes them (bfloat16 stays as its bits)."""
    if dtype == "bfloat16":
        return bits
    return bits.view(np.dtype(dtype))


def code_bits(codes: np.ndarray) -> np.ndarray:
    """The bit patterns of lossy codes, as the codec takes them."""
    return np.ascontiguousarray(codes).view(np.dtype(f"u{codes.dtype.itemsize}"))
