"""Fused single-pass kernels for the hot paths of 4-byte elements, four planes, no
grouping: whole float32 in exponent-first layout (every latest version's restore) and
full-width zigzag subtraction (every reverse delta).

The generic path copies each plane into a 2-D array, merges plane by plane and then
rewrites the layout: six passes over memory. These read or write the four planes as
separate 1-D arrays (zero-copy views of the fetched frames) in one pass. NumPy twins
compose the generic kernels' twins, so the tests compare against the reference path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from modelhub_torch.kernels.layout import from_exp_first_numpy, to_exp_first_numpy
from modelhub_torch.kernels.planes import (
    OP_NONE,
    OP_SUB,
    decode_planes_numpy,
    encode_planes_numpy,
)


@njit(nogil=True, cache=True)
def _check_merge4(p0, p1, p2, p3, base, out):
    """Refuse planes or a base shorter than the output, once per call (the merge loops
    do not check bounds; callers check first, this is the last line of defence)."""
    n = out.shape[0]
    if min(p0.shape[0], p1.shape[0], p2.shape[0], p3.shape[0], base.shape[0]) < n:
        raise ValueError("merge4: planes or base shorter than the output")


@njit(nogil=True, cache=True)
def merge4_exp_first(p0, p1, p2, p3, exp_bits, out):
    """``out[i]`` = IEEE bits of the exponent-first element whose bytes are p0..p3[i]."""
    _check_merge4(p0, p1, p2, p3, p0, out)
    mbits = np.uint32(31 - exp_bits)
    emask = np.uint32((1 << exp_bits) - 1)
    mmask = np.uint32((1 << (31 - exp_bits)) - 1)
    one = np.uint32(1)
    for i in range(out.shape[0]):
        u = (
            (np.uint32(p0[i]) << np.uint32(24))
            | (np.uint32(p1[i]) << np.uint32(16))
            | (np.uint32(p2[i]) << np.uint32(8))
            | np.uint32(p3[i])
        )
        e = (u >> (mbits + one)) & emask
        s = (u >> mbits) & one
        out[i] = (s << np.uint32(31)) | (e << mbits) | (u & mmask)


@njit(nogil=True, cache=True)
def split4_exp_first(bits, exp_bits, p0, p1, p2, p3):
    """Inverse of :func:`merge4_exp_first`: IEEE float32 bits to exponent-first planes."""
    mbits = np.uint32(31 - exp_bits)
    emask = np.uint32((1 << exp_bits) - 1)
    mmask = np.uint32((1 << (31 - exp_bits)) - 1)
    one = np.uint32(1)
    for i in range(bits.shape[0]):
        u = np.uint32(bits[i])
        e = (u >> mbits) & emask
        s = u >> np.uint32(31)
        v = (e << (mbits + one)) | (s << mbits) | (u & mmask)
        p0[i] = np.uint8(v >> np.uint32(24))
        p1[i] = np.uint8((v >> np.uint32(16)) & np.uint32(0xFF))
        p2[i] = np.uint8((v >> np.uint32(8)) & np.uint32(0xFF))
        p3[i] = np.uint8(v & np.uint32(0xFF))


def merge4_exp_first_numpy(p0, p1, p2, p3, exp_bits, out) -> None:
    """Twin: generic plane merge, then the generic layout inverse."""
    planes = np.stack([p0, p1, p2, p3])
    tmp = np.empty_like(out)
    decode_planes_numpy(planes, out[:0], OP_NONE, 4, 4, tmp)
    from_exp_first_numpy(tmp, exp_bits, out)


def split4_exp_first_numpy(bits, exp_bits, p0, p1, p2, p3) -> None:
    """Twin: generic layout transform, then the generic plane split."""
    swapped = np.empty_like(bits)
    to_exp_first_numpy(bits, exp_bits, swapped)
    planes = np.empty((4, bits.shape[0]), np.uint8)
    encode_planes_numpy(swapped, bits[:0], OP_NONE, 4, 4, planes)
    p0[:], p1[:], p2[:], p3[:] = planes


@njit(nogil=True, cache=True)
def split4_sub(target, base, p0, p1, p2, p3):
    """Planes of ``zigzag(target - base)`` over 32-bit patterns (wrap-around).

    Arithmetic is in uint64 with explicit 32-bit masks: numba promotes uint32 - uint32
    to a signed 64-bit integer, which would break the wrap-around."""
    m32 = np.uint64(0xFFFFFFFF)
    for i in range(target.shape[0]):
        d = (np.uint64(target[i]) - np.uint64(base[i])) & m32
        z = ((d << np.uint64(1)) ^ (np.uint64(0) - (d >> np.uint64(31)))) & m32
        p0[i] = np.uint8(z >> np.uint64(24))
        p1[i] = np.uint8((z >> np.uint64(16)) & np.uint64(0xFF))
        p2[i] = np.uint8((z >> np.uint64(8)) & np.uint64(0xFF))
        p3[i] = np.uint8(z & np.uint64(0xFF))


@njit(nogil=True, cache=True)
def merge4_sub(p0, p1, p2, p3, base, out):
    """Inverse of :func:`split4_sub`: ``out = base + unzigzag(planes)``."""
    _check_merge4(p0, p1, p2, p3, base, out)
    m32 = np.uint64(0xFFFFFFFF)
    for i in range(out.shape[0]):
        z = (
            (np.uint64(p0[i]) << np.uint64(24))
            | (np.uint64(p1[i]) << np.uint64(16))
            | (np.uint64(p2[i]) << np.uint64(8))
            | np.uint64(p3[i])
        )
        d = (z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))
        out[i] = (np.uint64(base[i]) + d) & m32


def split4_sub_numpy(target, base, p0, p1, p2, p3) -> None:
    """Twin: the generic split with OP_SUB over the full 4-byte lane."""
    planes = np.empty((4, target.shape[0]), np.uint8)
    encode_planes_numpy(target, base, OP_SUB, 4, 4, planes)
    p0[:], p1[:], p2[:], p3[:] = planes


def merge4_sub_numpy(p0, p1, p2, p3, base, out) -> None:
    """Twin: the generic merge with OP_SUB over the full 4-byte lane."""
    decode_planes_numpy(np.stack([p0, p1, p2, p3]), base, OP_SUB, 4, 4, out)
