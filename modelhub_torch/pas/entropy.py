"""Entropy coding of one byte plane: zstd, order-0 rANS, or raw when coding does not pay.

zstd rather than the paper's zlib: it decodes 3-5x faster at the same ratio on byte
planes, and its Huffman literal coder is what captures the low entropy of exponent
planes (float data has almost no LZ matches). Level 1 is the default: on exponent
planes it matched level 3's ratio at twice the speed (see benchmarks/storage.py).
Where a plane has no LZ structure but a skewed byte distribution (the exponent plane
of whole weights), Huffman wastes a fraction of a bit per byte; rANS (kernels/rans.py)
is then chosen, frame by frame, from the measured order-0 entropy.
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

import numpy as np
import zstandard

from modelhub_torch.errors import CorruptObjectError
from modelhub_torch.pas.registry import PLANE_CODERS, PlaneCoder, PlaneDecoder

if TYPE_CHECKING:
    from types import ModuleType

RAW = "raw"
ZSTD = "zstd"
RANS = "rans0"  # four interleaved states: frames of earlier versions, still decoded
RANS8 = "rans8"  # eight interleaved states: what new frames use (faster to decode)
RANS_CTX = "rans_ctx"

# Try rANS when the plane's order-0 entropy promises this much over zstd's output.
RANS_GAIN = 0.03
# zstd output below this share of the sample: the plane is nearly constant, keep zstd.
NEARLY_CONSTANT = 0.02

# Store raw unless zstd saves at least this share: a near-random plane decodes for free raw.
MIN_SAVING = 0.02
# Below this, rANS is not tried: its 512-byte frequency table would not pay for itself.
RANS_MIN_BYTES = 4096

_local = threading.local()


def _rans() -> ModuleType:
    # numba loads with the first coded plane, not with this module (import stays cheap)
    from modelhub_torch.kernels import rans

    return rans


def _rans_ctx() -> ModuleType:
    from modelhub_torch.kernels import rans_ctx

    return rans_ctx


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def encode_plane(plane: memoryview | bytes, level: int, rans_gain: float = RANS_GAIN) -> tuple[str, bytes]:
    """Code one plane; returns ``(codec, payload)``, codec one of raw/zstd/rans8.
    rANS is chosen only where it promises ``rans_gain`` more than zstd (it decodes
    several times slower than zstd's Huffman stage).

    The choice is measured, not guessed: zstd's result and the order-0 entropy on a
    64 KiB sample decide which coder runs on the whole plane, so a near-random plane
    costs one small probe and no full compression.
    """
    n = len(plane)
    if n == 0:
        return RAW, b""
    if n < RANS_MIN_BYTES:  # rANS's 512-byte table cannot pay: zstd or raw, one call
        return _zstd_or_raw(plane, _compressor(level).compress(plane))
    rans = _rans()
    sample = _sample(plane, n)
    z_bytes = _compressor(level).compress(sample)
    z_sample = len(z_bytes)
    h_sample = _entropy_bytes(rans.histogram(np.frombuffer(sample, np.uint8)), len(sample))
    if min(z_sample, h_sample) > len(sample) * (1.0 - MIN_SAVING):
        return RAW, bytes(plane)  # neither LZ nor order-0 coding pays on the sample
    # a nearly constant plane (a delta's top plane) is left to zstd: rANS could save at
    # most a few bytes per thousand there, at a per-symbol cost zstd's runs do not pay
    nearly_constant = z_sample <= len(sample) * NEARLY_CONSTANT
    if not nearly_constant and z_sample > (h_sample + rans.HEADER_BYTES * len(sample) / n) * (1.0 + rans_gain):
        arr = np.frombuffer(plane, np.uint8)
        coded = _rans_encode(arr, rans.histogram(arr))
        if len(coded) <= n * (1.0 - MIN_SAVING):
            return RANS8, coded
        return RAW, bytes(plane)
    # a plane no bigger than the sample was just compressed whole
    return _zstd_or_raw(plane, z_bytes if n <= SAMPLE_BYTES else _compressor(level).compress(plane))


def _zstd_or_raw(plane: memoryview | bytes, packed: bytes) -> tuple[str, bytes]:
    if len(packed) <= len(plane) * (1.0 - MIN_SAVING):
        return ZSTD, packed
    return RAW, bytes(plane)


def encode_plane_ctx(plane: memoryview | bytes, ctx: np.ndarray, level: int) -> tuple[str, bytes]:
    """Like :func:`encode_plane`, also trying per-context rANS; keeps the smaller.

    ``rans_ctx`` frame: uint32 length of the zstd-compressed tables, the tables
    (16 x 256 uint16 frequencies), then the rANS stream (kernels/rans_ctx.py).
    """
    best = encode_plane(plane, level)
    arr = np.frombuffer(plane, np.uint8)
    if arr.size == 0:
        return best
    rans_ctx = _rans_ctx()
    freqs = rans_ctx.normalize_freqs2d(rans_ctx.histogram2d(arr, ctx))
    tables = _compressor(3).compress(freqs.astype("<u2").tobytes())
    out = np.empty(2 * arr.size + 64, np.uint8)
    used = rans_ctx.rans_ctx_encode(arr, ctx, freqs, out)
    if 4 + len(tables) + used < len(best[1]):
        return RANS_CTX, struct.pack("<I", len(tables)) + tables + out[:used].tobytes()
    return best


def _decode_rans_ctx(payload: bytes | memoryview, size: int, where: str, ctx: np.ndarray | None) -> memoryview:
    if ctx is None or len(ctx) != size:
        raise CorruptObjectError(f"{where}: a context-coded frame needs its context tensor")
    if len(payload) < 4:
        raise CorruptObjectError(f"{where}: context rANS frame of {len(payload)} bytes has no table length")
    rans_ctx = _rans_ctx()
    (tlen,) = struct.unpack_from("<I", payload, 0)
    if 4 + tlen > len(payload):
        raise CorruptObjectError(f"{where}: context rANS tables ({tlen} bytes) run past the frame's {len(payload)}")
    tables = _zstd(payload[4 : 4 + tlen], rans_ctx.K * 512, f"{where}: context rANS tables")
    freqs = np.frombuffer(tables, "<u2").astype(np.int64).reshape(rans_ctx.K, 256)
    stream = np.frombuffer(payload, np.uint8)[4 + tlen :]
    out = np.empty(size, np.uint8)
    if rans_ctx.rans_ctx_decode(stream, ctx, freqs, out) != stream.shape[0]:
        raise CorruptObjectError(f"{where}: context rANS frame does not decode")
    return out.data


def _zstd(payload: bytes | memoryview, size: int, where: str) -> bytes:
    """One zstd frame that must hold exactly ``size`` bytes. The size its header declares
    is checked first: zstandard would otherwise allocate whatever a forged header asks
    for (a bomb), ignoring ``max_output_size``."""
    try:
        declared = zstandard.frame_content_size(payload)
        if declared not in (-1, size):
            raise CorruptObjectError(f"{where}: zstd frame declares {declared} bytes, expected {size}")
        data = _decompressor().decompress(payload, max_output_size=max(size, 1))
    except zstandard.ZstdError as exc:
        raise CorruptObjectError(f"{where}: zstd frame does not decode ({exc})") from exc
    if len(data) != size:
        raise CorruptObjectError(f"{where}: zstd frame holds {len(data)} bytes, expected {size}")
    return data


SAMPLE_BYTES = 1 << 16


SAMPLE_SLICES = 8


def _sample(plane: memoryview | bytes, n: int) -> memoryview | bytes:
    """SAMPLE_BYTES taken as slices spread over the plane (structure is often local)."""
    if n <= SAMPLE_BYTES:
        return plane
    step = SAMPLE_BYTES // SAMPLE_SLICES
    view = memoryview(plane)
    starts = np.linspace(0, n - step, SAMPLE_SLICES).astype(np.int64)
    return b"".join(view[s : s + step] for s in starts)


def _entropy_bytes(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum() * n / 8)


def _rans_encode(arr: np.ndarray, counts: np.ndarray) -> bytes:
    rans = _rans()
    freqs = rans.normalize_freqs(counts)
    out = np.empty(rans.HEADER_BYTES + 2 * arr.shape[0] + 64, np.uint8)
    used = rans.rans_encode8(arr, freqs, out)
    return out[:used].tobytes()


def _decode_raw(payload: bytes | memoryview, size: int, where: str, ctx: np.ndarray | None) -> bytes | memoryview:
    return payload


def _decode_zstd(payload: bytes | memoryview, size: int, where: str, ctx: np.ndarray | None) -> bytes:
    return _zstd(payload, size, where)


def _rans_decoder(decode_name: str) -> PlaneDecoder:
    def decode(payload: bytes | memoryview, size: int, where: str, ctx: np.ndarray | None) -> memoryview:
        out = np.empty(size, np.uint8)
        used = getattr(_rans(), decode_name)(np.frombuffer(payload, np.uint8), out)
        if used != len(payload):
            raise CorruptObjectError(f"{where}: rANS frame does not decode")
        return out.data

    return decode


PLANE_CODERS.register(PlaneCoder(RAW, _decode_raw))
PLANE_CODERS.register(PlaneCoder(ZSTD, _decode_zstd))
PLANE_CODERS.register(PlaneCoder(RANS, _rans_decoder("rans_decode"), feature="rans0"))
PLANE_CODERS.register(PlaneCoder(RANS8, _rans_decoder("rans_decode8"), feature="rans8"))
PLANE_CODERS.register(PlaneCoder(RANS_CTX, _decode_rans_ctx, feature="rans_ctx", needs_context=True))
# every coder a frame may name (FORMAT.md); manifests naming another are refused
CODERS = PLANE_CODERS.ids()


def decode_plane(
    codec: str, payload: bytes | memoryview, size: int, where: str, ctx: np.ndarray | None = None
) -> bytes | memoryview:
    """Inverse of :func:`encode_plane` / :func:`encode_plane_ctx`; ``where`` names the
    data in error messages; ``ctx`` is the per-element context of ``rans_ctx`` frames.
    An unknown ``codec`` was written by a newer modelhub_torch (NewerFormatError)."""
    data = PLANE_CODERS.get(codec, where).decode(payload, size, where, ctx)
    if len(data) != size:
        raise CorruptObjectError(f"{where}: plane has {len(data)} bytes, expected {size}")
    return data
