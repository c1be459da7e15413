"""Interval bounds of the weighted and structural layers: Linear, ConvNd, BatchNorm,
pools, reshapes, addition and concatenation (docs/PROGRESSIVE.md §2).

Each function returns a :data:`Layer` (and the weight names it reads); each result is
widened by the rounding model so the float32 reference provably lies inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelhub_torch.progressive.context import (
    Interval,
    Layer,
    PassContext,
    UnsupportedLayerError,
    amax,
    mid_rad,
)
from modelhub_torch.progressive.rounding import TINY32, U32, U64, dot_eps, gamma


def _dot_layer(
    ctx: PassContext,
    x: Interval,
    wname: str,
    bname: str | None,
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    bshape: tuple[int, ...],
) -> Interval:
    """``op(x, W) + b`` (Linear, ConvNd) for interval x and W.

    Non-negative x (after ReLU, pooled images): exact lower/upper form per term,
    lo = W_lo⁺·x_lo − W_lo⁻·x_hi, hi = W_hi⁺·x_hi − W_hi⁻·x_lo. Otherwise centre/radius:
    yc = Wc·xc, yr = |Wc|·xr + Wr·|x|max. Then widen by γ_{n+1}·(|W|max·|x|max + |b|max)
    for the float32 reference and the float64 evaluation alike.
    """
    w_lo, w_hi = ctx.param(wname)
    if bool((x.lo >= 0).all()):
        lo = op(x.lo, w_lo.clamp(min=0)) - op(x.hi, (-w_lo).clamp(min=0))
        hi = op(x.hi, w_hi.clamp(min=0)) - op(x.lo, (-w_hi).clamp(min=0))
        ax = x.hi
    else:
        xc, xr = mid_rad(x.lo, x.hi)
        wc, wr = mid_rad(w_lo, w_hi)
        ax = amax(x)
        yc = op(xc, wc)
        yr = op(xr, wc.abs())
        if bool((wr > 0).any()):
            yr = yr + op(ax, wr)
        lo, hi = yc - yr, yc + yr
    s = op(ax, torch.maximum(w_lo.abs(), w_hi.abs()))
    lo, hi, s = _add_bias(ctx, bname, bshape, lo, hi, s)
    ctx.flag(s)
    eps = s * dot_eps(n) + (n + 2) * TINY32
    return ctx.out(ctx.widen(lo, hi, eps))


def _add_bias(
    ctx: PassContext, bname: str | None, shape: tuple[int, ...], lo: torch.Tensor, hi: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[lo, hi] plus the bias ``bname`` (None: no bias), and the error's size plus |bias|."""
    if bname is None:
        return lo, hi, size
    b_lo, b_hi = ctx.param(bname)
    size = size + torch.maximum(b_lo.abs(), b_hi.abs()).reshape(shape)
    return lo + b_lo.reshape(shape), hi + b_hi.reshape(shape), size


def linear(mod: nn.Linear, prefix: str) -> tuple[Layer, list[str]]:
    names = [prefix + "weight"] + ([prefix + "bias"] if mod.bias is not None else [])

    def run(ctx: PassContext, x: Interval) -> Interval:
        bname = names[1] if len(names) > 1 else None
        return _dot_layer(ctx, x, names[0], bname, lambda i, w: F.linear(i, w), mod.in_features, (-1,))

    return run, names


def conv(mod: nn.Conv1d | nn.Conv2d, prefix: str, where: str) -> tuple[Layer, list[str]]:
    if mod.padding_mode != "zeros":
        raise UnsupportedLayerError(
            f"{where}: padding_mode={mod.padding_mode!r} is not supported (only 'zeros')"
        )
    names = [prefix + "weight"] + ([prefix + "bias"] if mod.bias is not None else [])
    conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
    n = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
    spatial = len(mod.kernel_size)

    def op(i: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv(i, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)

    def run(ctx: PassContext, x: Interval) -> Interval:
        bname = names[1] if len(names) > 1 else None
        return _dot_layer(ctx, x, names[0], bname, op, n, (1, -1) + (1,) * spatial)

    return run, names


def batchnorm(mod: nn.modules.batchnorm._BatchNorm, prefix: str, where: str) -> tuple[Layer, list[str]]:
    """Eval BatchNorm as y = (x − mean)·s + β, s = γ/sqrt(var + eps), all in outward-
    rounded interval arithmetic (each variable appears once: the range is exact); the
    float32 reference is bounded by γ_16·((|x|+|mean|)·|s| + |β|) whatever its order."""
    if mod.training:
        raise UnsupportedLayerError(f"{where}: BatchNorm in training mode (call .eval())")
    if mod.running_mean is None or mod.running_var is None:
        raise UnsupportedLayerError(f"{where}: BatchNorm without running statistics")
    mean, var = prefix + "running_mean", prefix + "running_var"
    wname = prefix + "weight" if mod.weight is not None else None
    bname = prefix + "bias" if mod.bias is not None else None
    names = [mean, var] + [n for n in (wname, bname) if n is not None]
    eps = float(mod.eps)
    eps32 = float(np.float32(eps))
    e_lo, e_hi = min(eps, eps32), max(eps, eps32)
    up = torch.tensor(math.inf, dtype=torch.float64)
    down = -up

    def run(ctx: PassContext, x: Interval) -> Interval:
        if mod.training:
            raise UnsupportedLayerError(f"{where}: BatchNorm in training mode (call .eval())")
        shape = (1, -1) + (1,) * (x.lo.dim() - 2)
        m_lo, m_hi = ctx.param(mean)
        v_lo, v_hi = ctx.param(var)
        den_lo = torch.nextafter(v_lo + e_lo, down)
        den_hi = torch.nextafter(v_hi + e_hi, up)
        if not bool((den_lo > 0).all()):  # the variance might be negative: sqrt of < 0
            ctx.bad[:] = True
            den_lo = den_lo.clamp(min=2.0**-1000)
        inv_lo = torch.nextafter(1.0 / torch.nextafter(torch.sqrt(den_hi), up), down)
        inv_hi = torch.nextafter(1.0 / torch.nextafter(torch.sqrt(den_lo), down), up)
        if wname is not None:
            g_lo, g_hi = ctx.param(wname)
            s_lo = torch.nextafter(torch.minimum(g_lo * inv_lo, g_lo * inv_hi), down)
            s_hi = torch.nextafter(torch.maximum(g_hi * inv_lo, g_hi * inv_hi), up)
        else:
            s_lo, s_hi = inv_lo, inv_hi
        s_lo, s_hi = s_lo.reshape(shape), s_hi.reshape(shape)
        d_lo = x.lo - m_hi.reshape(shape)
        d_hi = x.hi - m_lo.reshape(shape)
        p = (d_lo * s_lo, d_lo * s_hi, d_hi * s_lo, d_hi * s_hi)
        lo = torch.minimum(torch.minimum(p[0], p[1]), torch.minimum(p[2], p[3]))
        hi = torch.maximum(torch.maximum(p[0], p[1]), torch.maximum(p[2], p[3]))
        amag = (amax(x) + torch.maximum(m_lo.abs(), m_hi.abs()).reshape(shape)) * torch.maximum(
            s_lo.abs(), s_hi.abs()
        )
        lo, hi, amag = _add_bias(ctx, bname, shape, lo, hi, amag)
        ctx.flag(amag)
        err = amag * ((gamma(16, U32) + 2.0**-48) * (1 + 2.0**-40)) + TINY32
        return ctx.out(ctx.widen(lo, hi, err))

    return run, names


def avg_pool(pool: Callable[[torch.Tensor], torch.Tensor], n_of: Callable[[torch.Tensor], int]) -> Layer:
    """Average pools are linear with non-negative coefficients: pool the endpoints;
    the reference sums ≤ n terms and divides (≤ n + 2 roundings)."""

    def run(ctx: PassContext, x: Interval) -> Interval:
        lo, hi = pool(x.lo), pool(x.hi)
        s = pool(amax(x))
        ctx.flag(s)
        n = n_of(x.lo)
        eps = s * ((gamma(n + 3, U32) + 4 * gamma(n + 3, U64)) * (1 + 2.0**-40)) + TINY32
        return ctx.out(ctx.widen(lo, hi, eps))

    return run


def adaptive_window(out_size: Any, spatial: int) -> Callable[[torch.Tensor], int]:
    """Largest window of an adaptive average pool: ceil(in/out) + 1 per dimension."""

    def n_of(t: torch.Tensor) -> int:
        sizes = out_size if isinstance(out_size, Sequence) else (out_size,) * spatial
        n = 1
        for d, o in zip(t.shape[-spatial:], sizes):
            o = d if o is None else int(o)
            n *= -(-d // max(o, 1)) + 1
        return n

    return n_of


def monotone(fn: Callable[[torch.Tensor], torch.Tensor]) -> Layer:
    """An exact, non-decreasing elementwise or selection map (ReLU, max pool, reshape)."""

    def run(ctx: PassContext, x: Interval) -> Interval:
        return ctx.out(Interval(fn(x.lo), fn(x.hi)))

    return run



def add(ctx: PassContext, a: Any, b: Any) -> Interval:
    """Interval + interval, or + a Python number c (kernels add c or float32(c))."""
    if isinstance(a, Interval) and isinstance(b, Interval):
        lo, hi = a.lo + b.lo, a.hi + b.hi
        mag = amax(a) + amax(b)
    else:
        iv, c = (a, b) if isinstance(a, Interval) else (b, a)
        if not isinstance(c, (int, float)) or isinstance(c, bool):
            raise UnsupportedLayerError(f"add of an interval and {type(c).__name__} is not supported")
        c64, c32 = float(c), float(np.float32(c))
        lo, hi = iv.lo + min(c64, c32), iv.hi + max(c64, c32)
        mag = amax(iv) + abs(c64)
    eps = mag * ((U32 + 4 * U64) * (1 + 2.0**-40))
    return ctx.out(ctx.widen(lo, hi, eps))


def cat(ctx: PassContext, parts: Sequence[Interval], dim: int) -> Interval:
    nd = parts[0].lo.dim()
    if dim % nd == 0:
        raise UnsupportedLayerError("torch.cat along the batch dimension is not supported")
    return ctx.out(Interval(torch.cat([p.lo for p in parts], dim), torch.cat([p.hi for p in parts], dim)))


def same_batch(ctx: PassContext, iv: Interval, where: str) -> Interval:
    if iv.lo.dim() == 0 or iv.lo.shape[0] != ctx.n:
        raise UnsupportedLayerError(f"{where}: the result must keep the batch dimension first")
    return iv
