"""Exponent-first bit layout for whole (non-delta) float tensors.

IEEE floats are ``[sign][exponent][mantissa]``; plane 0 then mixes a random sign bit
with 7 exponent bits, and the exponent's last bit lands among random mantissa bits.
Rewriting each element as ``[exponent][sign][mantissa]`` puts the whole exponent —
the only low-entropy field of trained weights — in the leading bits, so plane 0 codes
to ~2.2 bits instead of ~3. Two planes carry the same information in either layout
(sign, exponent, top mantissa bits), so progressive reads from plane 2 on are unchanged.
Deltas keep the IEEE layout: there, bit-pattern subtraction needs sign-magnitude order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U64 = np.uint64


@njit(nogil=True, cache=True)
def to_exp_first(bits, exp_bits, out):
    """``[s][e][m] -> [e][s][m]`` for elements of ``8 * itemsize`` bits."""
    nbits = 8 * bits.itemsize
    mbits = _U64(nbits - 1 - exp_bits)
    emask = (_U64(1) << _U64(exp_bits)) - _U64(1)
    mmask = (_U64(1) << mbits) - _U64(1)
    top = _U64(nbits - 1)
    for i in range(bits.shape[0]):
        u = _U64(bits[i])
        e = (u >> mbits) & emask
        s = (u >> top) & _U64(1)
        out[i] = (e << (mbits + _U64(1))) | (s << mbits) | (u & mmask)


@njit(nogil=True, cache=True)
def from_exp_first(bits, exp_bits, out):
    """Inverse of :func:`to_exp_first`."""
    nbits = 8 * bits.itemsize
    if out.shape[0] < bits.shape[0] or exp_bits < 0 or exp_bits > nbits - 2:
        raise ValueError("from_exp_first: output too short or exponent wider than the element")
    mbits = _U64(nbits - 1 - exp_bits)
    emask = (_U64(1) << _U64(exp_bits)) - _U64(1)
    mmask = (_U64(1) << mbits) - _U64(1)
    top = _U64(nbits - 1)
    for i in range(bits.shape[0]):
        u = _U64(bits[i])
        e = (u >> (mbits + _U64(1))) & emask
        s = (u >> mbits) & _U64(1)
        out[i] = (s << top) | (e << mbits) | (u & mmask)


def _fields(dtype: np.dtype, exp_bits: int) -> tuple[int, int, int, int]:
    nbits = 8 * dtype.itemsize
    mbits = nbits - 1 - exp_bits
    return nbits, mbits, (1 << exp_bits) - 1, (1 << mbits) - 1


def to_exp_first_numpy(bits: np.ndarray, exp_bits: int, out: np.ndarray) -> None:
    """NumPy twin of :func:`to_exp_first`."""
    nbits, mbits, emask, mmask = _fields(bits.dtype, exp_bits)
    u = bits.astype(np.uint64)
    e = (u >> np.uint64(mbits)) & np.uint64(emask)
    s = (u >> np.uint64(nbits - 1)) & np.uint64(1)
    v = (e << np.uint64(mbits + 1)) | (s << np.uint64(mbits)) | (u & np.uint64(mmask))
    out[:] = v.astype(bits.dtype)


def from_exp_first_numpy(bits: np.ndarray, exp_bits: int, out: np.ndarray) -> None:
    """NumPy twin of :func:`from_exp_first`."""
    nbits, mbits, emask, mmask = _fields(bits.dtype, exp_bits)
    u = bits.astype(np.uint64)
    e = (u >> np.uint64(mbits + 1)) & np.uint64(emask)
    s = (u >> np.uint64(mbits)) & np.uint64(1)
    v = (s << np.uint64(nbits - 1)) | (e << np.uint64(mbits)) | (u & np.uint64(mmask))
    out[:] = v.astype(bits.dtype)
