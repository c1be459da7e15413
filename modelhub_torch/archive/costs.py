"""How long recreating a tensor from one storage edge takes: a calibrated model.

The planner needs a recreation cost per edge before anything is rewritten, so the
archive measures this machine once (decode throughput of whole tensors and of deltas,
read throughput and per-request latency of each storage tier) and prices an edge as

    seconds = hop + raw_bytes / decode_rate + hot_bytes / read_rate
              (+ cold_hop + cold_bytes / cold_read_rate when frames are in the cold tier)

A delta's base is recreated by the edges on its own path, so path sums add up as the
paper's recreation cost does.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from modelhub_torch.pas import codec
from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.writer import encode_all

PROBE_ELEMS = 1 << 20  # 4 MiB of float32: big enough for steady throughput, ~0.1 s to measure


@dataclass(frozen=True)
class DecodeModel:
    hop_s: float  # fixed cost of one tensor on a path (record lookup, small reads, checks)
    whole_Bps: float  # raw bytes per second decoding a whole tensor
    delta_Bps: float  # raw bytes per second applying a delta (base already decoded)
    read_Bps: float  # stored bytes per second read from the repository
    cold_hop_s: float = 0.0  # extra latency of one read from the cold tier
    cold_read_Bps: float = 0.0  # stored bytes per second read from the cold tier (0: none)

    def seconds(self, raw: int, hot: int, delta: bool, cold: int = 0) -> float:
        s = self.hop_s + raw / (self.delta_Bps if delta else self.whole_Bps) + hot / self.read_Bps
        if cold:
            s += self.cold_hop_s + cold / self.cold_read_Bps
        return s

    def to_json(self) -> dict[str, float]:
        return dict(self.__dict__)

    @classmethod
    def calibrate(
        cls, objects: ObjectStore, whole: codec.CodecConfig, delta: codec.CodecConfig, cold: ObjectStore | None = None
    ) -> DecodeModel:
        """Measure this machine and these stores (median of three runs each)."""
        rng = np.random.default_rng(0)
        weights = (rng.standard_normal(PROBE_ELEMS) * 0.05).astype(np.float32)
        step = (rng.standard_normal(PROBE_ELEMS) * 1e-4).astype(np.float32)
        bits = weights.view(np.uint32)
        base = (weights + step).view(np.uint32)
        wcfg = whole.for_dtype("float32", 4, exp_first=True)
        dcfg = delta.for_dtype("float32", 4)
        wchunks = encode_all(bits, None, wcfg)
        dchunks = encode_all(bits, base, dcfg)
        out = np.empty_like(bits)
        t_whole = _median(lambda: codec.decode_tensor(wchunks, out, None, wcfg, "probe"))
        t_delta = _median(lambda: codec.decode_tensor(dchunks, out, base, dcfg, "probe"))
        tiny = bits[:64].copy()
        tchunks = encode_all(tiny, None, wcfg)
        small = np.empty_like(tiny)
        t_tiny = _median(lambda: codec.decode_tensor(tchunks, small, None, wcfg, "probe"))
        read_Bps, hop = _read_speed(objects.loc)
        cold_hop = cold_Bps = 0.0
        if cold is not None:
            cold_Bps, cold_hop = _read_speed(cold.loc)
        return cls(
            hop_s=hop + t_tiny,
            whole_Bps=bits.nbytes / max(t_whole, 1e-9),
            delta_Bps=bits.nbytes / max(t_delta, 1e-9),
            read_Bps=read_Bps,
            cold_hop_s=cold_hop,
            cold_read_Bps=cold_Bps,
        )


def _median(fn, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _read_speed(loc: Location) -> tuple[float, float]:
    """(bytes/s, seconds per request) of one store, from a probe file in its ``tmp/``."""
    import os
    import uuid

    data = os.urandom(4 << 20)
    rel = f"tmp/probe-{uuid.uuid4().hex}"
    loc.write_atomic(rel, data, durable=False)
    try:
        big = _median(lambda: loc.read_ranges(rel, [(0, len(data))]))
        small = _median(lambda: loc.read_ranges(rel, [(0, 64)]))
    finally:
        loc.delete(rel)
    return len(data) / max(big - small, 1e-9), small
