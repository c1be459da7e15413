"""Tensor codec: delta against a base, split into byte planes, entropy-code each plane.

A tensor is cut into chunks of ``chunk_elems`` elements so both cores work on one
tensor and memory stays bounded; each chunk yields one frame per plane. The codec's
settings are data (:class:`CodecConfig`), stored with every tensor so any version
decodes without guessing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

from modelhub_torch.errors import FormatError
from modelhub_torch.kernels.ops import OP_NONE
from modelhub_torch.pas import entropy
from modelhub_torch.pas.registry import DELTA_OPS, PLANE_CODERS

# exponent width per float dtype (complex: of its components); used by the exp-first layout
EXP_BITS = {
    "float64": 11, "complex128": 11, "float32": 8, "complex64": 8, "bfloat16": 8,
    "float16": 5, "float8_e5m2": 5, "float8_e4m3fn": 4,
}
DEFAULT_CHUNK_ELEMS = 1 << 20
# rANS for a plain delta plane only where it promises this much over zstd: decoding a
# rans8 symbol took 2.3 ns against zstd's 0.35 ns here, and a restore decodes every
# delta of its chain (benchmarks/storage.py --per-version; budget.py's weights)
DELTA_RANS_GAIN = 0.25

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class CodecConfig:
    """How one tensor is coded. ``lane`` only matters for ``sub``; ``group_from`` >= the
    element width means no plane is regrouped."""

    op: str = "none"
    lane: int = 4
    group_from: int = 8
    level: int = 1
    chunk_elems: int = DEFAULT_CHUNK_ELEMS
    exp_bits: int = 0  # exponent width when coded in exponent-first layout, else 0

    def __post_init__(self) -> None:
        # codecs come from manifests and settings files (untrusted): every field is
        # checked here, so no kernel ever sees a shift or a size it was not built for
        DELTA_OPS.get(self.op, "codec")  # an op this version lacks: NewerFormatError
        if not _is_int(self.lane) or self.lane not in (1, 2, 4, 8):
            raise FormatError(f"lane must be 1, 2, 4 or 8 bytes, got {self.lane!r}")
        for name, lo, hi in _INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or not lo <= value <= hi:
                raise FormatError(f"codec field {name} must be an integer in {lo}..{hi}, got {value!r}")

    def check_width(self, width: int, where: str) -> None:
        """Refuse an exponent-first layout wider than the element (its bit shifts would
        leave the element: wrong bits at best)."""
        if self.exp_bits and self.exp_bits > 8 * width - 2:
            raise FormatError(
                f"{where}: codec exp_bits {self.exp_bits} does not fit {width}-byte elements; "
                "the manifest is damaged — run 'modelhub verify'"
            )

    def for_width(self, width: int) -> CodecConfig:
        """The same settings clipped to an element width (lanes never exceed it)."""
        lane = min(self.lane, width)
        group = min(self.group_from, width)
        if lane == self.lane and group == self.group_from:
            return self
        return CodecConfig(self.op, lane, group, self.level, self.chunk_elems, self.exp_bits)

    def for_dtype(self, dtype_name: str, width: int, exp_first: bool = False) -> CodecConfig:
        """The config one tensor is coded with: clipped to its element width, and with
        the exponent-first layout (its exponent width resolved) for whole floats when
        ``exp_first`` asks for it."""
        cfg = self.for_width(width)
        exp_bits = EXP_BITS.get(dtype_name, 0) if cfg.op == "none" and exp_first else 0
        if exp_bits == cfg.exp_bits:
            return cfg
        return CodecConfig(cfg.op, cfg.lane, cfg.group_from, cfg.level, cfg.chunk_elems, exp_bits)

    def to_json(self) -> dict[str, Any]:
        # a fresh dict each time (callers may keep it in a manifest), without the
        # recursive walk of dataclasses.asdict: this runs once per stored tensor
        return {f: getattr(self, f) for f in _FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodecConfig:
        if not isinstance(data, dict):
            raise FormatError(f"bad codec config {str(data)[:200]}: a JSON object expected")
        try:
            return cls(**data)
        except TypeError as exc:
            raise FormatError(f"bad codec config {str(data)[:200]}: {exc}") from exc


_FIELDS = tuple(f.name for f in fields(CodecConfig))
# integer codec fields and their ranges (zstd levels run from -2^17 to 22)
_INT_FIELDS = (("group_from", 0, 8), ("level", -(1 << 17), 22), ("chunk_elems", 1, 1 << 40), ("exp_bits", 0, 11))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RepoCodecs:
    """The codecs a repository's settings (modelhub.json) name for whole tensors and deltas."""

    materialize: CodecConfig
    delta: CodecConfig
    exp_first: bool  # whole floats in exponent-first layout

    @classmethod
    def from_settings(cls, s: dict[str, Any]) -> RepoCodecs:
        return cls(CodecConfig.from_json(s["materialize"]), CodecConfig.from_json(s["delta"]), s["layout"] == "exp-first")

Frame = tuple[str, "bytes | memoryview"]  # (plane codec, payload)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


_POOLS: dict[str, ThreadPoolExecutor] = {}


def shared_pool(kind: str = "chunk") -> ThreadPoolExecutor:
    """Process-wide pools (numba kernels, zstd and blake3 all release the GIL).

    ``"chunk"`` runs leaf work that never waits on other tasks; ``"tensor"`` runs
    per-tensor jobs, which may wait on chunk tasks — two pools, so no job can block
    the very workers it is waiting for.
    """
    pool = _POOLS.get(kind)
    if pool is None:
        pool = _POOLS.setdefault(
            kind, ThreadPoolExecutor(default_workers(), thread_name_prefix=f"modelhub-{kind}")
        )
    return pool


def ordered_map(fn: Callable[[T], R], items: Iterable[T], pool: Executor, window: int) -> Iterator[R]:
    """``map`` over a pool keeping at most ``window`` results in flight (bounded memory)."""
    pending: list[Future[R]] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for fut in pending:
        yield fut.result()


def chunk_bounds(n: int, chunk_elems: int) -> list[tuple[int, int]]:
    if n == 0:
        return [(0, 0)]
    return [(s, min(n, s + chunk_elems)) for s in range(0, n, chunk_elems)]


def _kernels():
    # Imported lazily: numba is heavy and only needed when data is coded.
    from modelhub_torch import kernels

    return kernels


def _fused(width: int, base: np.ndarray | None, cfg: CodecConfig, nplanes: int) -> str | None:
    """Which one-pass kernel pair serves this chunk (4-byte elements, all four planes,
    ungrouped): "exp-first" for whole floats, "sub" for full-width deltas, else None."""
    if width != 4 or nplanes != 4 or cfg.group_from < 4:
        return None
    if base is None:
        return "exp-first" if cfg.exp_bits > 0 else None
    return "sub" if cfg.op == "sub" and cfg.lane == 4 else None


@dataclass(frozen=True)
class ExponentContext:
    """Context of a delta from its base alone: bucket ``clip(exponent field of the base
    element - lo, 0, 15)`` (``exp_bits``: the dtype's exponent width). For the newest
    delta of a history, whose neighbouring delta does not exist yet."""

    lo: int
    exp_bits: int

    @classmethod
    def for_base(cls, base: np.ndarray, dtype_name: str) -> ExponentContext | None:
        """Buckets spanning the base's 16 largest exponents; None for non-floats."""
        from modelhub_torch.kernels import rans_ctx

        exp_bits = EXP_BITS.get(dtype_name, 0)
        if not exp_bits or dtype_name.startswith("complex") or base.size == 0:
            return None
        shift, mask = 8 * base.itemsize - 1 - exp_bits, (1 << exp_bits) - 1
        top = int(rans_ctx.max_exponent(base, shift, mask))
        return cls(top - (rans_ctx.K - 1), exp_bits) if top >= 0 else None

    def to_json(self) -> dict[str, int]:
        return {"from": self.lo, "bits": self.exp_bits}

    @classmethod
    def from_json(cls, data: Any) -> ExponentContext:
        lo = data.get("from") if isinstance(data, dict) else None
        bits = data.get("bits") if isinstance(data, dict) else None
        if not (_is_int(lo) and _is_int(bits) and 1 <= bits <= 11 and abs(lo) < 1 << 12):
            raise FormatError(
                f"bad exponent context {str(data)[:200]}: "
                '{"from": small integer, "bits": exponent width 1..11} expected'
            )
        return cls(lo, bits)


@dataclass(frozen=True)
class ContextBuckets:
    """Neighbour-delta context buckets computed ahead (:func:`context_buckets`), so an
    encoder need not hold the context tensor itself (a quarter of its memory)."""

    values: np.ndarray  # uint8, one bucket per element

    def __getitem__(self, item: slice) -> ContextBuckets:
        return ContextBuckets(self.values[item])


Context = np.ndarray | ExponentContext | ContextBuckets  # what conditions a delta's coding


def context_buckets(base: np.ndarray, context: np.ndarray) -> ContextBuckets:
    """The buckets a delta against ``base`` is coded with, from its neighbour ``context``."""
    return ContextBuckets(_context(base, context))


def _context(base: np.ndarray, context: Context) -> np.ndarray:
    """Per-element context bucket of a delta: the size of the neighbouring delta
    ``base - context``, or the base's exponent (:class:`ExponentContext`)."""
    from modelhub_torch.kernels import rans_ctx

    if isinstance(context, ContextBuckets):
        if context.values.shape != base.shape:
            raise FormatError(f"{context.values.shape[0]} context buckets for {base.shape[0]} elements")
        return context.values
    ctx = np.empty(base.shape[0], np.uint8)
    if isinstance(context, ExponentContext):
        shift = 8 * base.itemsize - 1 - context.exp_bits
        if shift < 0:
            raise FormatError(f"an exponent context of {context.exp_bits} bits does not fit {base.itemsize}-byte elements")
        rans_ctx.exponent_buckets(base, shift, (1 << context.exp_bits) - 1, context.lo, ctx)
    else:
        rans_ctx.context_buckets(base, context, ctx)
    return ctx


def _chunk_of(context: Context | None, s: int, e: int) -> Context | None:
    return context[s:e] if isinstance(context, (np.ndarray, ContextBuckets)) else context


def _code_planes(planes: np.ndarray, level: int, ctx: np.ndarray | None, delta: bool = False) -> list[Frame]:
    """Entropy-code each plane; with a context, planes below the top may use it.
    Plain delta planes take rANS only for a large gain (DELTA_RANS_GAIN): a restore
    decodes every delta on its chain, and zstd decodes them several times faster."""
    if ctx is None:
        gain = DELTA_RANS_GAIN if delta else entropy.RANS_GAIN
        return [entropy.encode_plane(memoryview(planes[p]), level, gain) for p in range(planes.shape[0])]
    return [entropy.encode_plane(memoryview(planes[0]), level)] + [
        entropy.encode_plane_ctx(memoryview(planes[p]), ctx, level) for p in range(1, planes.shape[0])
    ]


def encode_chunk(
    target: np.ndarray,
    base: np.ndarray | None,
    cfg: CodecConfig,
    context: Context | None = None,
) -> list[Frame]:
    """Code one chunk into one frame per plane. ``context`` (a delta only): the tensor
    whose difference from ``base`` conditions the coding of this delta's planes, or an
    :class:`ExponentContext` (the base's exponents condition them)."""
    k = _kernels()
    width = target.itemsize
    planes = np.empty((width, target.shape[0]), np.uint8)
    ctx = _context(base, context) if (context is not None and base is not None) else None
    fused = _fused(width, base, cfg, width)
    if fused is not None:
        if fused == "exp-first":
            k.split4_exp_first(target, cfg.exp_bits, planes[0], planes[1], planes[2], planes[3])
        else:
            k.split4_sub(target, base, planes[0], planes[1], planes[2], planes[3])
        return _code_planes(planes, cfg.level, ctx, base is not None)
    op = DELTA_OPS.get(cfg.op, "codec").kernel_op if base is not None else OP_NONE
    if cfg.exp_bits and base is None:
        swapped = np.empty_like(target)
        k.to_exp_first(target, cfg.exp_bits, swapped)
        target = swapped
    empty = target[:0]
    k.encode_planes(target, empty if base is None else base, op, cfg.lane, cfg.group_from, planes)
    return _code_planes(planes, cfg.level, ctx, base is not None)


def _check_chunk(
    frames: Sequence[Frame],
    n: int,
    out: np.ndarray,
    base: np.ndarray | None,
    context: Context | None,
    cfg: CodecConfig,
    where: str,
) -> None:
    """What the kernels take for granted, checked once per chunk (they do not check
    bounds): the output, base and neighbour hold ``n`` elements of one width (the
    kernels index all three with the same ``i``), and there are no more planes than
    bytes per element."""
    if n < 0 or out.shape[0] != n:
        raise FormatError(f"{where}: a chunk of {n} elements does not fit its {out.shape[0]}-element slot")
    if len(frames) > out.itemsize:
        raise FormatError(f"{where}: {len(frames)} planes for {out.itemsize}-byte elements")
    for name, arr in (("base", base), ("context", context)):
        if isinstance(arr, np.ndarray) and (arr.shape != out.shape or arr.dtype != out.dtype):
            raise FormatError(
                f"{where}: {name} tensor holds {arr.shape[0]} {arr.dtype} elements, expected "
                f"{n} {out.dtype}; the manifest is damaged — run 'modelhub verify'"
            )
    cfg.check_width(out.itemsize, where)


def decode_chunk(
    frames: Sequence[Frame],
    n: int,
    out: np.ndarray,
    base: np.ndarray | None,
    cfg: CodecConfig,
    where: str,
    context: Context | None = None,
) -> None:
    """Rebuild ``out`` (``n`` elements) from the frames of its leading planes."""
    k = _kernels()
    _check_chunk(frames, n, out, base, context, cfg, where)
    ctx = None
    if any(PLANE_CODERS.get(codec, where).needs_context for codec, _ in frames):
        if context is None or base is None:
            raise FormatError(f"{where}: context-coded frames need the base and context tensors")
        ctx = _context(base, context)
    fused = _fused(out.itemsize, base, cfg, len(frames))
    if fused is not None:
        v = [
            np.frombuffer(entropy.decode_plane(codec, payload, n, f"{where} plane {p}", ctx), np.uint8)
            for p, (codec, payload) in enumerate(frames)
        ]
        if fused == "exp-first":
            k.merge4_exp_first(v[0], v[1], v[2], v[3], cfg.exp_bits, out)
        else:
            k.merge4_sub(v[0], v[1], v[2], v[3], base, out)
        return
    planes = np.empty((len(frames), n), np.uint8)
    for p, (codec, payload) in enumerate(frames):
        data = entropy.decode_plane(codec, payload, n, f"{where} plane {p}", ctx)
        planes[p] = np.frombuffer(data, np.uint8)
    op = DELTA_OPS.get(cfg.op, where).kernel_op if base is not None else OP_NONE
    empty = out[:0]
    k.decode_planes(planes, empty if base is None else base, op, cfg.lane, cfg.group_from, out)
    if cfg.exp_bits and base is None:
        k.from_exp_first(out, cfg.exp_bits, out)


def encode_tensor(
    bits: np.ndarray,
    base: np.ndarray | None,
    cfg: CodecConfig,
    pool: Executor | None = None,
    context: Context | None = None,
) -> Iterator[tuple[int, list[Frame]]]:
    """Yield ``(n_elems, frames)`` per chunk, in order, coding chunks in parallel."""
    pool = pool or shared_pool()
    bounds = chunk_bounds(bits.shape[0], cfg.chunk_elems)

    def work(b: tuple[int, int]) -> tuple[int, list[Frame]]:
        s, e = b
        return e - s, encode_chunk(
            bits[s:e],
            None if base is None else base[s:e],
            cfg,
            _chunk_of(context, s, e),
        )

    if len(bounds) == 1:
        yield work(bounds[0])
        return
    yield from ordered_map(work, bounds, pool, window=2 * default_workers())


def decode_tensor(
    chunks: Sequence[tuple[int, Sequence[Frame]]],
    out: np.ndarray,
    base: np.ndarray | None,
    cfg: CodecConfig,
    where: str,
    pool: Executor | None = None,
    context: Context | None = None,
) -> np.ndarray:
    """Decode all chunks into ``out`` (a flat uint array), in parallel; returns ``out``."""
    starts = np.cumsum([0] + [n for n, _ in chunks])
    if starts[-1] != out.shape[0] or any(n < 0 for n, _ in chunks):
        raise FormatError(f"{where}: chunks hold {starts[-1]} elements, expected {out.shape[0]}")

    def work(i: int) -> None:
        s, e = int(starts[i]), int(starts[i + 1])
        n, frames = chunks[i]
        decode_chunk(
            frames,
            n,
            out[s:e],
            None if base is None else base[s:e],
            cfg,
            where,
            _chunk_of(context, s, e),
        )

    if len(chunks) == 1:
        work(0)
    else:
        pool = pool or shared_pool()
        for _ in pool.map(work, range(len(chunks))):
            pass
    return out
