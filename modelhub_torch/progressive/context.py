"""Interval tensors, the per-call state of a bounds pass, and the error for a layer
that has no sound bound.

Shared by the interval layers and the affine forms (which fall back on the interval
layers for what they do not model), so neither has to reach into the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modelhub_torch.errors import ModelHubError
from modelhub_torch.progressive.rounding import LIMIT

WeightBounds = dict[str, tuple[torch.Tensor, torch.Tensor]]


class UnsupportedLayerError(ModelHubError, TypeError):
    """A layer or function the interval network cannot bound soundly."""


@dataclass
class Interval:
    """An interval tensor: the float32 reference value lies in [lo, hi] elementwise."""

    lo: torch.Tensor
    hi: torch.Tensor


class PassContext:
    """Per-call state: weights, the per-input 'give up' mask, the rounding switch."""

    def __init__(self, weights: WeightBounds, n: int, rounding: bool) -> None:
        self.weights = weights
        self.n = n
        self.rounding = rounding
        self.bad = torch.zeros(n, dtype=torch.bool)

    def param(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weights[name]

    def flag(self, t: torch.Tensor) -> None:
        """Inputs whose values are non-finite or near float32 overflow are never decided:
        the error model (and NaN's absence) holds only for finite, in-range values."""
        if t.dim() == 0 or t.shape[0] != self.n:
            if not bool((t.abs() <= LIMIT).all()):
                self.bad[:] = True
            return
        self.bad |= ~(t.abs() <= LIMIT).reshape(self.n, -1).all(dim=1)

    def widen(self, lo: torch.Tensor, hi: torch.Tensor, eps: torch.Tensor | float) -> Interval:
        """Widen by ``eps`` and one more ulp outward (the subtraction's own rounding)."""
        if not self.rounding:
            return Interval(lo, hi)
        lo = torch.nextafter(lo - eps, torch.tensor(-math.inf, dtype=lo.dtype))
        hi = torch.nextafter(hi + eps, torch.tensor(math.inf, dtype=hi.dtype))
        return Interval(lo, hi)

    def out(self, iv: Interval) -> Interval:
        self.flag(iv.lo)
        self.flag(iv.hi)
        return iv


Layer = Callable[[PassContext, Interval], Interval]  # one layer's bound, weights bound already


def amax(iv: Interval) -> torch.Tensor:
    """Largest magnitude of each element of ``iv``."""
    return torch.maximum(iv.lo.abs(), iv.hi.abs())


def mid_rad(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and a radius rounded up, so [c − r, c + r] ⊇ [lo, hi]; r = 0 when lo == hi."""
    c = (lo + hi) * 0.5
    r = torch.maximum(hi - c, c - lo)
    r = torch.where(hi == lo, torch.zeros_like(r), torch.nextafter(r, torch.full_like(r, math.inf)))
    return c, r
