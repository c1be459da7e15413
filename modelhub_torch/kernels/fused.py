"""Fused single-pass kernels for the hot path: whole float32 tensors in exponent-first
layout, four planes, no base, no grouping — every latest version's restore.

The generic path copies each plane into a 2-D array, merges plane by plane and then
rewrites the layout: six passes over memory. These read or write the four planes as
separate 1-D arrays (zero-copy views of the fetched frames) in one pass. NumPy twins
compose the generic kernels' twins, so the tests compare against the reference path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from modelhub_torch.kernels.layout import from_exp_first_numpy, to_exp_first_numpy
from modelhub_torch.kernels.planes import OP_NONE, decode_planes_numpy, encode_planes_numpy


@njit(nogil=True, cache=True)
def merge4_exp_first(p0, p1, p2, p3, exp_bits, out):
    """``out[i]`` = IEEE bits of the exponent-first element whose bytes are p0..p3[i]."""
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
