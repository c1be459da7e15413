"""Turn a storage plan into new manifests: one per version, same tensors, new layout.

Every distinct content is held by one record (the others link to it with ``same``),
stored whole or as a delta from the holder of its planned base, with its low-order
planes in the cold tier when the plan chose a cold edge. All bits come from the
current (old) manifests, which stay untouched until the switch; each new manifest
owns fresh packs, so the old and new layouts never share an object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from modelhub_torch.archive.graph import EdgeInfo, RepoGraph, Unit, code_bits, values_of
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas import lossy as lossy_mod
from modelhub_torch.pas.codec import RepoCodecs
from modelhub_torch.pas.dtypes import uint_dtype
from modelhub_torch.pas.planner import Plan
from modelhub_torch.reader import digest_bits
from modelhub_torch.writer import PackSet, encode_all

if TYPE_CHECKING:
    from modelhub_torch.reader import TensorReader
    from modelhub_torch.store.repo import RepoStore


class Rewriter:
    def __init__(self, store: RepoStore, reader: TensorReader, rg: RepoGraph, plan: Plan, hot_planes: int):
        s = store.settings
        self.store = store
        self.reader = reader
        self.rg = rg
        self.plan = plan
        self.hot_planes = hot_planes
        c = RepoCodecs.from_settings(s)
        self.mat_cfg, self.delta_cfg, self.exp_first = c.materialize, c.delta, c.exp_first
        self.lossy_digest: dict[str, str] = {}  # unit -> digest of its lossy values

    def run(self) -> list[Manifest]:
        """The new manifests, in the order of ``rg.order`` (packs written, not switched)."""
        out = []
        for vid in self.rg.order:
            out.append(self._version(self.rg.manifests[vid]))
        return out

    def _version(self, m: Manifest) -> Manifest:
        recs = m.copy_records()
        hot = PackSet(self.store.objects)
        cold = PackSet(self.store.objects.cold) if self.store.objects.cold is not None else None
        schemes = set()
        try:
            for i, rec in enumerate(recs):
                if rec["data"]["kind"] == DROPPED:
                    continue
                u = self.rg.units[self.rg.unit_of[(m.id, i)]]
                if u.lossy is not None:
                    schemes.add(str(u.lossy))
                if (m.id, i) != u.holder:
                    hv, hi = u.holder
                    rec["data"] = {"kind": "same", "version": hv, "index": hi}
                    continue
                info = self.rg.edges[self.plan.edge[u.name]]
                rec["data"] = self._data(u, info, rec, hot, cold)
            new = Manifest(**{**m.__dict__, "tensors": recs, "packs": hot.commit(),
                              "cold_packs": cold.commit() if cold is not None else []})
        except BaseException:
            hot.abort()
            if cold is not None:
                cold.abort()
            raise
        if schemes:
            new.extra = {**new.extra, "lossy": sorted(schemes)}
            new.extra["info"] = {**new.info, "lossy": ",".join(sorted(schemes))}
        return new

    def _data(self, u: Unit, info: EdgeInfo, rec: dict[str, Any], hot: PackSet, cold: PackSet | None) -> dict[str, Any]:
        cold_from = self.hot_planes if info.cold and cold is not None else None
        if u.kept_lossy:
            sv, si = u.source
            old = self.rg.manifests[sv].tensors[si]["data"]
            chunks = self.reader.fetch(self.rg.manifests[sv], old["chunks"], None, old.get("cold_from"))
            data = {k: v for k, v in old.items() if k not in ("chunks", "cold_from")}
        elif u.lossy is not None:
            dtype = rec["dtype"]
            codes, transform = lossy_mod.encode(values_of(self.reader.decode(*u.source), dtype), dtype, u.lossy)
            values = lossy_mod.decode(codes, transform, dtype)
            rec["digest"] = self.lossy_digest[u.name] = digest_bits(
                np.ascontiguousarray(values).view(uint_dtype(dtype))
            )
            cbits = code_bits(codes)
            cfg = self.mat_cfg.for_dtype(transform["code_dtype"], cbits.itemsize, exp_first=self.exp_first)
            chunks = encode_all(cbits, None, cfg)
            data = {"kind": "planes", "codec": cfg.to_json(), "base": None, "lossy": transform}
        else:
            dtype = rec["dtype"]
            bits = self.reader.decode(*u.source)
            width = bits.itemsize
            if info.base is None:
                cfg = self.mat_cfg.for_dtype(dtype, width, exp_first=self.exp_first)
                chunks = encode_all(bits, None, cfg)
                data = {"kind": "planes", "codec": cfg.to_json(), "base": None}
            else:
                b = self.rg.units[info.base]
                cfg = self.delta_cfg.for_dtype(dtype, width)
                chunks = encode_all(bits, self.reader.decode(*b.source), cfg)
                data = {"kind": "planes", "codec": cfg.to_json(),
                        "base": {"version": b.holder[0], "index": b.holder[1]}}
        if cold_from is not None and all(len(f) > cold_from for _, f in chunks):
            data["cold_from"] = cold_from
        else:
            cold_from = None
        data["chunks"] = hot.add(chunks, cold, cold_from)
        return data
