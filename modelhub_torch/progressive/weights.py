"""What the first stored byte planes say about a weight: the bits known, and the
interval of every float those bits allow (docs/PROGRESSIVE.md §1)."""

from __future__ import annotations

import numpy as np

__all__ = ["known_mask", "weight_bounds"]

# dtype -> (bits, exponent bits, unsigned container)
_DTYPES: dict[str, tuple[int, int, type[np.unsignedinteger]]] = {
    "float32": (32, 8, np.uint32),
    "float16": (16, 5, np.uint16),
    "bfloat16": (16, 8, np.uint16),
}
_LAYOUTS = ("ieee", "exp-first")


def _dtype_info(dtype: str) -> tuple[int, int, type[np.unsignedinteger]]:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


def known_mask(dtype: str, planes: int, layout: str) -> int:
    """IEEE bits known once the first ``planes`` stored byte planes are read.

    Planes are bytes of the stored word from the most significant; in the exp-first
    layout the stored word is ``[exponent][sign][mantissa]``, so its top bits map back
    to scattered IEEE positions (one float32 plane = the exponent only).
    """
    width, ebits, _ = _dtype_info(dtype)
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if not 0 <= planes <= width // 8:
        raise ValueError(f"{dtype} has {width // 8} planes, got planes={planes}")
    known = 8 * planes
    if layout == "ieee":
        return ((1 << known) - 1) << (width - known)
    mask = 0
    for i in range(known):  # i: bit index of the stored word, counted from the MSB
        ieee = i + 1 if i < ebits else (0 if i == ebits else i)
        mask |= 1 << (width - 1 - ieee)
    return mask


@np.errstate(invalid="ignore")  # NaN patterns convert to NaN, as they should
def _values(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return bits.view(np.float32).astype(np.float64)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def weight_bounds(bits: np.ndarray, mask: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``(lo, hi)`` of every float whose bit pattern agrees with ``bits`` on ``mask``.

    For non-negative patterns the bit order is the magnitude order, so the smallest and
    largest magnitudes are the completions with all unknown bits 0 and 1; both bounds
    are attained. Where an infinity or NaN is a possible completion the weight is
    unbounded: ``(-inf, inf)``.
    """
    width, ebits, utype = _dtype_info(dtype)
    b = np.asarray(bits)
    if b.dtype.kind not in "ui":
        raise TypeError(f"bits must be an integer array, got {b.dtype}")
    if b.dtype.itemsize != width // 8:
        raise TypeError(f"{dtype} bits must be {width}-bit integers, got {b.dtype}")
    b = b.astype(utype, copy=False)
    full = (1 << width) - 1
    mask &= full
    m = utype(mask)
    unknown = utype(~mask & full)
    magnitude = utype(full >> 1)
    exponent = utype(((1 << ebits) - 1) << (width - 1 - ebits))
    known = b & m
    lo_mag = _values(np.asarray(known & magnitude), dtype)
    hi_bits = np.asarray((known | unknown) & magnitude)
    hi_mag = _values(hi_bits, dtype)
    if mask >> (width - 1):  # sign known
        neg = (b >> utype(width - 1)) != 0
        lo = np.where(neg, -hi_mag, lo_mag)
        hi = np.where(neg, -lo_mag, hi_mag)
    else:
        lo, hi = -hi_mag, hi_mag.copy()
    nonfinite = (hi_bits & exponent) == exponent  # inf or NaN reachable
    lo = np.where(nonfinite, -np.inf, lo)
    hi = np.where(nonfinite, np.inf, hi)
    return lo, hi
