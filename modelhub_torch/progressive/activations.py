"""Interval bounds of the elementwise activations (ReLU, LeakyReLU, ELU, GELU, SiLU,
sigmoid, tanh): monotone or unimodal maps evaluated at the ends, widened by the assumed
accuracy of the float32 kernels."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from modelhub_torch.progressive.context import (
    Interval,
    Layer,
    PassContext,
    UnsupportedLayerError,
    amax,
)
from modelhub_torch.progressive.rounding import TINY32, TRANS_ABS, TRANS_REL


def relu(ctx: PassContext, x: Interval) -> Interval:
    return ctx.out(Interval(x.lo.clamp(min=0), x.hi.clamp(min=0)))


def leaky_relu(slope: float) -> Layer:
    """Piecewise linear with its kink at 0: extremes are at the ends or at 0. Both the
    float64 slope and its float32 rounding are included (kernels differ)."""
    slopes = (float(slope), float(np.float32(slope)))

    def run(ctx: PassContext, x: Interval) -> Interval:
        lo = hi = None
        for a in slopes:
            for e in (x.lo, x.hi):
                y = torch.where(e >= 0, e, e * a)
                lo = y if lo is None else torch.minimum(lo, y)
                hi = y if hi is None else torch.maximum(hi, y)
        assert lo is not None and hi is not None
        straddle = (x.lo < 0) & (x.hi > 0)  # the kink: f(0) = 0 is an extreme for slope < 0
        lo = torch.where(straddle, lo.clamp(max=0), lo)
        hi = torch.where(straddle, hi.clamp(min=0), hi)
        eps = torch.maximum(lo.abs(), hi.abs()) * 2.0**-23 + TINY32
        return ctx.out(ctx.widen(lo, hi, eps))

    return run


def _golden_min(f: Callable[[torch.Tensor], torch.Tensor], a: float, b: float) -> tuple[float, float]:
    """Argmin and minimum of a unimodal function on [a, b] (float64 golden section)."""
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if float(f(torch.tensor(c, dtype=torch.float64))) < float(f(torch.tensor(d, dtype=torch.float64))):
            b = d
        else:
            a = c
    x = (a + b) / 2
    return x, float(f(torch.tensor(x, dtype=torch.float64)))


def _gelu_erf(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t * torch.special.erfc(-t * (1 / math.sqrt(2)))


def _gelu_tanh(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t * t * t)))


def _silu(t: torch.Tensor) -> torch.Tensor:
    return t * torch.sigmoid(t)


def _elu_fn(alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: torch.where(t > 0, t, alpha * torch.expm1(t))


_MINIMA: dict[str, tuple[float, float]] = {}


def _minimum(name: str, f: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    if name not in _MINIMA:
        x, v = _golden_min(f, -3.0, 0.0)
        _MINIMA[name] = (x, v - 1e-9)  # a margin: the argmin is only approximate
    return _MINIMA[name]


def transcendental(
    f: Callable[[torch.Tensor], torch.Tensor],
    minimum: tuple[float, float] | None,
    abs_x: bool,
    extra: Callable[[Interval], torch.Tensor | float] | None = None,
) -> Layer:
    """Monotone (``minimum`` None) or unimodal activations, evaluated in float64 at the
    endpoints (and at the interior minimum when inside), then widened by the assumed
    float32 kernel error 2^-18·|y| (+ 2^-18·|x| where the kernel cancels, as GELU's
    1 + erf does for x < 0) + 2^-100."""

    def run(ctx: PassContext, x: Interval) -> Interval:
        fl, fh = f(x.lo), f(x.hi)
        lo, hi = torch.minimum(fl, fh), torch.maximum(fl, fh)
        if minimum is not None:
            xm, vm = minimum
            inside = (x.lo < xm) & (x.hi > xm)
            lo = torch.where(inside, torch.clamp(lo, max=vm), lo)
        eps = torch.maximum(lo.abs(), hi.abs()) * TRANS_REL + TRANS_ABS
        if abs_x:
            eps = eps + amax(x) * TRANS_REL
        if extra is not None:
            eps = eps + extra(x)
        return ctx.out(ctx.widen(lo, hi, eps))

    return run


def elu(alpha: float) -> Layer:
    if alpha < 0:
        raise UnsupportedLayerError("ELU with negative alpha is not monotone: not supported")

    def extra(x: Interval) -> torch.Tensor:  # exp(x) − 1 may cancel: 2^-20·alpha absolute
        return torch.where(x.lo > 0, 0.0, 2.0**-20 * alpha)

    return transcendental(_elu_fn(alpha), None, False, extra)


def gelu(approximate: str) -> Layer:
    if approximate == "none":
        return transcendental(_gelu_erf, _minimum("gelu", _gelu_erf), True)
    if approximate == "tanh":
        return transcendental(_gelu_tanh, _minimum("gelu_tanh", _gelu_tanh), True)
    raise UnsupportedLayerError(f"GELU approximate={approximate!r} is not supported")


def silu() -> Layer:
    return transcendental(_silu, _minimum("silu", _silu), False)
