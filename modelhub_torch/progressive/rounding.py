"""The rounding model every bound shares (docs/PROGRESSIVE.md).

The interval pass, the pairwise rule and the affine pass all widen by the same terms:
the float32 reference's rounding and our own float64 evaluation's. They live here once
so that a change to the error model cannot reach one pass and miss another.
"""

from __future__ import annotations

import math

U32 = 2.0**-24  # unit roundoff, float32
U64 = 2.0**-53  # unit roundoff, float64
LIMIT = 2.0**120  # above this a float32 partial result might overflow: give up
TINY32 = 2.0**-148  # covers one float32 underflow (half the smallest subnormal is 2^-150)
TRANS_REL = 2.0**-18  # assumed accuracy of float32 transcendental kernels, relative
TRANS_ABS = 2.0**-100  # ... and absolute (underflow, exp overflow to 0)


def gamma(n: int, u: float) -> float:
    """γ_n = n·u/(1−n·u), nudged up so its own float64 rounding cannot make it small."""
    nu = n * u
    if nu >= 0.5:
        return math.inf
    return nu / (1.0 - nu) * (1.0 + 2.0**-40)


def dot_eps(n: int) -> float:
    """Relative error coefficient of a sum of ``n`` products (plus bias) against the
    sum of absolute terms: the float32 reference and our own float64 evaluation."""
    return (gamma(n + 1, U32) + 8.0 * gamma(n + 8, U64)) * (1.0 + 4.0 * gamma(n + 4, U64))
