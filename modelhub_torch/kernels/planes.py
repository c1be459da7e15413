"""Byte-plane split/merge fused with bit-pattern deltas and exponent grouping.

A tensor of n elements of W bytes is viewed as unsigned integers (uint8..uint64) and
written as W byte planes, plane 0 holding the most significant byte (sign and high
exponent bits of a float). Before the split an element may be replaced by a delta
against a base element of the same width:

- ``OP_XOR``: ``t ^ b``
- ``OP_SUB``: ``zigzag(t - b)`` computed independently in lanes of ``lane`` bytes
  (``lane == W``: ordinary wrap-around subtraction; ``lane < W``: no carry crosses a
  lane boundary, so the high planes of ``t`` can be rebuilt from the high planes of
  the delta and the base alone — the plane-separable form progressive reads need).

Planes ``>= group_from`` are written in *grouped* order: elements sorted (stably)
by a one-byte key, so bytes from weights of similar magnitude sit together and the
entropy coder sees homogeneous statistics. The key is ``top byte & 0x7F`` (the high
exponent bits) of the base, or of the element itself when there is no base (then
plane 0 is stored ungrouped and the decoder derives the order from it).

All arithmetic is on bit patterns, never floats, so every value (NaN payloads, -0.0,
denormals) round-trips exactly. ``encode_planes``/``decode_planes`` are the Numba
kernels; the ``*_numpy`` functions are their vectorised twins used as test oracles.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from modelhub_torch.kernels.ops import OP_NONE, OP_SUB, OP_XOR

_U64 = np.uint64
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_KEY_MASK = 0x7F


# ---------------------------------------------------------------- numba kernels
# Plane-major passes with a fixed shift per inner loop, so LLVM vectorises them.


@njit(nogil=True, cache=True)
def _delta_into(target, base, op, lane, d):
    n = target.shape[0]
    nbits = 8 * target.itemsize
    if op == OP_XOR:
        for i in range(n):
            d[i] = _U64(target[i]) ^ _U64(base[i])
        return
    lane_bits = 8 * lane
    mask = _ALL_ONES >> _U64(64 - lane_bits)
    top = _U64(lane_bits - 1)
    if lane_bits == nbits:
        for i in range(n):
            x = (_U64(target[i]) - _U64(base[i])) & mask
            d[i] = ((x << _U64(1)) ^ (_U64(0) - (x >> top))) & mask
        return
    for i in range(n):
        d[i] = 0
    for shift in range(0, nbits, lane_bits):
        s = _U64(shift)
        for i in range(n):
            x = ((_U64(target[i]) >> s) - (_U64(base[i]) >> s)) & mask
            d[i] |= (((x << _U64(1)) ^ (_U64(0) - (x >> top))) & mask) << s


@njit(nogil=True, cache=True)
def _undelta_inplace(d, base, op, lane):
    n = d.shape[0]
    nbits = 8 * d.itemsize
    if op == OP_XOR:
        for i in range(n):
            d[i] = _U64(d[i]) ^ _U64(base[i])
        return
    lane_bits = 8 * lane
    mask = _ALL_ONES >> _U64(64 - lane_bits)
    if lane_bits == nbits:
        for i in range(n):
            z = _U64(d[i])
            d[i] = (_U64(base[i]) + ((z >> _U64(1)) ^ (_U64(0) - (z & _U64(1))))) & mask
        return
    for i in range(n):
        acc = _U64(0)
        z_all = _U64(d[i])
        b_all = _U64(base[i])
        for shift in range(0, nbits, lane_bits):
            s = _U64(shift)
            z = (z_all >> s) & mask
            acc |= ((((b_all >> s) & mask) + ((z >> _U64(1)) ^ (_U64(0) - (z & _U64(1)))))
                    & mask) << s
        d[i] = acc


@njit(nogil=True, cache=True)
def group_permutation(keys):
    """Position of each element in the stable order of ``keys & 0x7F`` (counting sort)."""
    n = keys.shape[0]
    counts = _group_starts(keys)
    pos = np.empty(n, np.int64)
    for i in range(n):
        k = keys[i] & _KEY_MASK
        pos[i] = counts[k]
        counts[k] += 1
    return pos


@njit(nogil=True, cache=True)
def _group_starts(keys):
    counts = np.zeros(_KEY_MASK + 2, np.int64)
    for i in range(keys.shape[0]):
        counts[(keys[i] & _KEY_MASK) + 1] += 1
    for k in range(1, _KEY_MASK + 2):
        counts[k] += counts[k - 1]
    return counts


@njit(nogil=True, cache=True)
def _top_bytes(values):
    n = values.shape[0]
    out = np.empty(n, np.uint8)
    shift = _U64(8 * (values.itemsize - 1))
    for i in range(n):
        out[i] = np.uint8(_U64(values[i]) >> shift)
    return out


@njit(nogil=True, cache=True)
def encode_planes(target, base, op, lane, group_from, out):
    """Write ``target`` (minus ``base`` under ``op``) into ``out[W, n]`` byte planes.

    ``base`` is ignored (may be empty) when ``op == OP_NONE``. Planes with index
    ``>= group_from`` are written in grouped order (``group_from >= W``: none).
    """
    n = target.shape[0]
    nbytes = out.shape[0]
    if op == OP_NONE and group_from < 1:
        group_from = 1  # without a base, plane 0 carries the keys: never grouped
    if op == OP_NONE:
        d = target
    else:
        d = np.empty_like(target)
        _delta_into(target, base, op, lane, d)
    grouped = group_from < nbytes
    if grouped:
        keys = _top_bytes(target if op == OP_NONE else base)
        cursor = _group_starts(keys)
        for i in range(n):
            k = keys[i] & _KEY_MASK
            j = cursor[k]
            cursor[k] = j + 1
            x = _U64(d[i])
            for p in range(group_from, nbytes):
                out[p, j] = np.uint8((x >> _U64(8 * (nbytes - 1 - p))) & _U64(0xFF))
    for p in range(group_from if grouped else nbytes):
        s = _U64(8 * (nbytes - 1 - p))
        row = out[p]
        for i in range(n):
            row[i] = np.uint8((_U64(d[i]) >> s) & _U64(0xFF))


@njit(nogil=True, cache=True)
def decode_planes(planes, base, op, lane, group_from, out):
    """Inverse of :func:`encode_planes`: rebuild ``out`` from planes (and ``base``).

    ``planes`` may hold only the first P planes (P <= W): the missing low bytes are
    taken as zero, which is how progressive reads see a partially fetched tensor
    (valid for ``OP_NONE``, ``OP_XOR`` and lane-separable ``OP_SUB`` when P is a
    multiple of the lane width).
    """
    n = out.shape[0]
    nplanes = planes.shape[0]
    nbytes = out.itemsize
    # no bounds checks below: operands that do not fit are refused here, once (callers
    # check first and raise the library's errors; this is the last line of defence)
    if nplanes > nbytes or planes.shape[1] < n or (op != OP_NONE and base.shape[0] < n):
        raise ValueError("decode_planes: planes or base do not fit the output")
    if op == OP_NONE and group_from < 1:
        group_from = 1  # plane 0 is stored ungrouped: it carries the keys
    grouped = group_from < nplanes
    for i in range(n):
        out[i] = 0
    for p in range(group_from if grouped else nplanes):
        s = _U64(8 * (nbytes - 1 - p))
        row = planes[p]
        for i in range(n):
            out[i] |= _U64(row[i]) << s
    if grouped:
        keys = planes[0] if op == OP_NONE else _top_bytes(base)
        cursor = _group_starts(keys)
        for i in range(n):
            k = keys[i] & _KEY_MASK
            j = cursor[k]
            cursor[k] = j + 1
            x = _U64(0)
            for p in range(group_from, nplanes):
                x |= _U64(planes[p, j]) << _U64(8 * (nbytes - 1 - p))
            out[i] |= x
    if op != OP_NONE:
        _undelta_inplace(out, base, op, lane)


# ------------------------------------------------------------------ numpy twins


def _zigzag_np(d: np.ndarray, bits: int) -> np.ndarray:
    mask = np.uint64((1 << bits) - 1)
    d = d & mask
    return ((d << np.uint64(1)) ^ (np.uint64(0) - (d >> np.uint64(bits - 1)))) & mask


def _unzigzag_np(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))


def _lanes_np(t: np.ndarray, b: np.ndarray, lane: int, nbytes: int, fn) -> np.ndarray:
    bits = 8 * lane
    mask = np.uint64((1 << bits) - 1)
    out = np.zeros_like(t)
    for shift in range(0, 8 * nbytes, bits):
        s = np.uint64(shift)
        out |= (fn((t >> s) & mask, (b >> s) & mask, bits) & mask) << s
    return out


def group_permutation_numpy(keys: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`group_permutation`."""
    order = np.argsort(keys & _KEY_MASK, kind="stable")
    pos = np.empty(keys.shape[0], np.int64)
    pos[order] = np.arange(keys.shape[0])
    return pos


def encode_planes_numpy(target, base, op, lane, group_from, out) -> None:
    """NumPy twin of :func:`encode_planes` (same arguments, same output)."""
    nbytes = out.shape[0]
    if op == OP_NONE:
        group_from = max(group_from, 1)
    t = target.astype(np.uint64)
    if op == OP_NONE:
        d = t
    else:
        b = base.astype(np.uint64)
        if op == OP_XOR:
            d = t ^ b
        else:
            d = _lanes_np(t, b, lane, nbytes, lambda x, y, bits: _zigzag_np(x - y, bits))
    pos = None
    if group_from < nbytes:
        key_src = t if op == OP_NONE else base.astype(np.uint64)
        keys = (key_src >> np.uint64(8 * (nbytes - 1))).astype(np.uint8)
        pos = group_permutation_numpy(keys)
    for p in range(nbytes):
        byte = ((d >> np.uint64(8 * (nbytes - 1 - p))) & np.uint64(0xFF)).astype(np.uint8)
        if pos is not None and p >= group_from:
            out[p, pos] = byte
        else:
            out[p, :] = byte


def decode_planes_numpy(planes, base, op, lane, group_from, out) -> None:
    """NumPy twin of :func:`decode_planes`."""
    nplanes = planes.shape[0]
    nbytes = out.itemsize
    if op == OP_NONE:
        group_from = max(group_from, 1)
    pos = None
    if group_from < nplanes:
        if op == OP_NONE:
            keys = planes[0]
        else:
            keys = (base.astype(np.uint64) >> np.uint64(8 * (nbytes - 1))).astype(np.uint8)
        pos = group_permutation_numpy(keys)
    d = np.zeros(out.shape[0], np.uint64)
    for p in range(nplanes):
        plane = planes[p][pos] if (pos is not None and p >= group_from) else planes[p]
        d |= plane.astype(np.uint64) << np.uint64(8 * (nbytes - 1 - p))
    if op == OP_XOR:
        d = d ^ base.astype(np.uint64)
    elif op == OP_SUB:
        b = base.astype(np.uint64)
        d = _lanes_np(d, b, lane, nbytes, lambda z, y, bits: y + _unzigzag_np(z))
    out[:] = d.astype(out.dtype)
