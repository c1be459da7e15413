"""Sound interval bounds for progressive inference (docs/PROGRESSIVE.md).

A float32 weight known only to its top byte planes is an interval; :func:`weight_bounds`
gives it. :class:`IntervalNet` pushes such intervals through an fx-traced network in
float64 and widens every step by rigorous error terms, so that the value the ordinary
float32 forward pass computes (with the true weights) provably lies inside the bounds.
:func:`decide_topk` then answers an input only where the bounds force the top-k, which
makes a progressive answer identical to ``module(x).topk(k)``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from modelhub_torch.errors import ModelHubError

__all__ = [
    "IntervalNet",
    "UnsupportedLayerError",
    "decide_topk",
    "known_mask",
    "weight_bounds",
]


class UnsupportedLayerError(ModelHubError, TypeError):
    """A layer or function the interval network cannot bound soundly."""


# --------------------------------------------------------------------------- weights

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


# --------------------------------------------------------------------------- rounding

_U32 = 2.0**-24  # unit roundoff, float32
_U64 = 2.0**-53  # unit roundoff, float64
_LIMIT = 2.0**120  # above this a float32 partial result might overflow: give up
_TINY32 = 2.0**-148  # covers one float32 underflow (half the smallest subnormal is 2^-150)
_TRANS_REL = 2.0**-18  # assumed accuracy of float32 transcendental kernels, relative
_TRANS_ABS = 2.0**-100  # ... and absolute (underflow, exp overflow to 0)


def _gamma(n: int, u: float) -> float:
    """γ_n = n·u/(1−n·u), nudged up so its own float64 rounding cannot make it small."""
    nu = n * u
    if nu >= 0.5:
        return math.inf
    return nu / (1.0 - nu) * (1.0 + 2.0**-40)


def _dot_eps(n: int) -> float:
    """Relative error coefficient of a sum of ``n`` products (plus bias) against the
    sum of absolute terms: the float32 reference and our own float64 evaluation."""
    return (_gamma(n + 1, _U32) + 8.0 * _gamma(n + 8, _U64)) * (1.0 + 4.0 * _gamma(n + 4, _U64))


# --------------------------------------------------------------------------- engine


@dataclass
class _Iv:
    """An interval tensor: the float32 reference value lies in [lo, hi] elementwise."""

    lo: torch.Tensor
    hi: torch.Tensor


class _Ctx:
    """Per-call state: weights, the per-input 'give up' mask, the rounding switch."""

    def __init__(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], n: int, rounding: bool):
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
            if not bool((t.abs() <= _LIMIT).all()):
                self.bad[:] = True
            return
        self.bad |= ~(t.abs() <= _LIMIT).reshape(self.n, -1).all(dim=1)

    def widen(self, lo: torch.Tensor, hi: torch.Tensor, eps: torch.Tensor | float) -> _Iv:
        """Widen by ``eps`` and one more ulp outward (the subtraction's own rounding)."""
        if not self.rounding:
            return _Iv(lo, hi)
        lo = torch.nextafter(lo - eps, torch.tensor(-math.inf, dtype=lo.dtype))
        hi = torch.nextafter(hi + eps, torch.tensor(math.inf, dtype=hi.dtype))
        return _Iv(lo, hi)

    def out(self, iv: _Iv) -> _Iv:
        self.flag(iv.lo)
        self.flag(iv.hi)
        return iv


def _amax(iv: _Iv) -> torch.Tensor:
    return torch.maximum(iv.lo.abs(), iv.hi.abs())


def _mid_rad(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and a radius rounded up, so [c − r, c + r] ⊇ [lo, hi]; r = 0 when lo == hi."""
    c = (lo + hi) * 0.5
    r = torch.maximum(hi - c, c - lo)
    r = torch.where(hi == lo, torch.zeros_like(r), torch.nextafter(r, torch.full_like(r, math.inf)))
    return c, r


def _affine(
    ctx: _Ctx,
    x: _Iv,
    wname: str,
    bname: str | None,
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    bshape: tuple[int, ...],
) -> _Iv:
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
        xc, xr = _mid_rad(x.lo, x.hi)
        wc, wr = _mid_rad(w_lo, w_hi)
        ax = _amax(x)
        yc = op(xc, wc)
        yr = op(xr, wc.abs())
        if bool((wr > 0).any()):
            yr = yr + op(ax, wr)
        lo, hi = yc - yr, yc + yr
    s = op(ax, torch.maximum(w_lo.abs(), w_hi.abs()))
    if bname is not None:
        b_lo, b_hi = ctx.param(bname)
        lo = lo + b_lo.reshape(bshape)
        hi = hi + b_hi.reshape(bshape)
        s = s + torch.maximum(b_lo.abs(), b_hi.abs()).reshape(bshape)
    ctx.flag(s)
    eps = s * _dot_eps(n) + (n + 2) * _TINY32
    return ctx.out(ctx.widen(lo, hi, eps))


def _linear(mod: nn.Linear, prefix: str) -> tuple[Callable[[_Ctx, _Iv], _Iv], list[str]]:
    names = [prefix + "weight"] + ([prefix + "bias"] if mod.bias is not None else [])

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
        bname = names[1] if len(names) > 1 else None
        return _affine(ctx, x, names[0], bname, lambda i, w: F.linear(i, w), mod.in_features, (-1,))

    return run, names


def _conv(mod: nn.Conv1d | nn.Conv2d, prefix: str, where: str) -> tuple[Callable[[_Ctx, _Iv], _Iv], list[str]]:
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

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
        bname = names[1] if len(names) > 1 else None
        return _affine(ctx, x, names[0], bname, op, n, (1, -1) + (1,) * spatial)

    return run, names


def _batchnorm(mod: nn.modules.batchnorm._BatchNorm, prefix: str, where: str) -> tuple[Callable[[_Ctx, _Iv], _Iv], list[str]]:
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

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
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
        amag = (_amax(x) + torch.maximum(m_lo.abs(), m_hi.abs()).reshape(shape)) * torch.maximum(
            s_lo.abs(), s_hi.abs()
        )
        if bname is not None:
            b_lo, b_hi = ctx.param(bname)
            lo = lo + b_lo.reshape(shape)
            hi = hi + b_hi.reshape(shape)
            amag = amag + torch.maximum(b_lo.abs(), b_hi.abs()).reshape(shape)
        ctx.flag(amag)
        err = amag * ((_gamma(16, _U32) + 2.0**-48) * (1 + 2.0**-40)) + _TINY32
        return ctx.out(ctx.widen(lo, hi, err))

    return run, names


def _pool_avg(pool: Callable[[torch.Tensor], torch.Tensor], n_of: Callable[[torch.Tensor], int]) -> Callable[[_Ctx, _Iv], _Iv]:
    """Average pools are linear with non-negative coefficients: pool the endpoints;
    the reference sums ≤ n terms and divides (≤ n + 2 roundings)."""

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
        lo, hi = pool(x.lo), pool(x.hi)
        s = pool(_amax(x))
        ctx.flag(s)
        n = n_of(x.lo)
        eps = s * ((_gamma(n + 3, _U32) + 4 * _gamma(n + 3, _U64)) * (1 + 2.0**-40)) + _TINY32
        return ctx.out(ctx.widen(lo, hi, eps))

    return run


def _adaptive_n(out_size: Any, spatial: int) -> Callable[[torch.Tensor], int]:
    """Largest window of an adaptive average pool: ceil(in/out) + 1 per dimension."""

    def n_of(t: torch.Tensor) -> int:
        sizes = out_size if isinstance(out_size, Sequence) else (out_size,) * spatial
        n = 1
        for d, o in zip(t.shape[-spatial:], sizes):
            o = d if o is None else int(o)
            n *= -(-d // max(o, 1)) + 1
        return n

    return n_of


def _monotone(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[_Ctx, _Iv], _Iv]:
    """An exact, non-decreasing elementwise or selection map (ReLU, max pool, reshape)."""

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
        return ctx.out(_Iv(fn(x.lo), fn(x.hi)))

    return run


def _relu(ctx: _Ctx, x: _Iv) -> _Iv:
    return ctx.out(_Iv(x.lo.clamp(min=0), x.hi.clamp(min=0)))


def _leaky(slope: float) -> Callable[[_Ctx, _Iv], _Iv]:
    """Piecewise linear with its kink at 0: extremes are at the ends or at 0. Both the
    float64 slope and its float32 rounding are included (kernels differ)."""
    slopes = (float(slope), float(np.float32(slope)))

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
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
        eps = torch.maximum(lo.abs(), hi.abs()) * 2.0**-23 + _TINY32
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


def _transcendental(
    f: Callable[[torch.Tensor], torch.Tensor],
    minimum: tuple[float, float] | None,
    abs_x: bool,
    extra: Callable[[_Iv], torch.Tensor | float] | None = None,
) -> Callable[[_Ctx, _Iv], _Iv]:
    """Monotone (``minimum`` None) or unimodal activations, evaluated in float64 at the
    endpoints (and at the interior minimum when inside), then widened by the assumed
    float32 kernel error 2^-18·|y| (+ 2^-18·|x| where the kernel cancels, as GELU's
    1 + erf does for x < 0) + 2^-100."""

    def run(ctx: _Ctx, x: _Iv) -> _Iv:
        fl, fh = f(x.lo), f(x.hi)
        lo, hi = torch.minimum(fl, fh), torch.maximum(fl, fh)
        if minimum is not None:
            xm, vm = minimum
            inside = (x.lo < xm) & (x.hi > xm)
            lo = torch.where(inside, torch.clamp(lo, max=vm), lo)
        eps = torch.maximum(lo.abs(), hi.abs()) * _TRANS_REL + _TRANS_ABS
        if abs_x:
            eps = eps + _amax(x) * _TRANS_REL
        if extra is not None:
            eps = eps + extra(x)
        return ctx.out(ctx.widen(lo, hi, eps))

    return run


def _elu(alpha: float) -> Callable[[_Ctx, _Iv], _Iv]:
    if alpha < 0:
        raise UnsupportedLayerError("ELU with negative alpha is not monotone: not supported")

    def extra(x: _Iv) -> torch.Tensor:  # exp(x) − 1 may cancel: 2^-20·alpha absolute
        return torch.where(x.lo > 0, 0.0, 2.0**-20 * alpha)

    return _transcendental(_elu_fn(alpha), None, False, extra)


def _gelu(approximate: str) -> Callable[[_Ctx, _Iv], _Iv]:
    if approximate == "none":
        return _transcendental(_gelu_erf, _minimum("gelu", _gelu_erf), True)
    if approximate == "tanh":
        return _transcendental(_gelu_tanh, _minimum("gelu_tanh", _gelu_tanh), True)
    raise UnsupportedLayerError(f"GELU approximate={approximate!r} is not supported")


def _add(ctx: _Ctx, a: Any, b: Any) -> _Iv:
    """Interval + interval, or + a Python number c (kernels add c or float32(c))."""
    if isinstance(a, _Iv) and isinstance(b, _Iv):
        lo, hi = a.lo + b.lo, a.hi + b.hi
        mag = _amax(a) + _amax(b)
    else:
        iv, c = (a, b) if isinstance(a, _Iv) else (b, a)
        if not isinstance(c, (int, float)) or isinstance(c, bool):
            raise UnsupportedLayerError(f"add of an interval and {type(c).__name__} is not supported")
        c64, c32 = float(c), float(np.float32(c))
        lo, hi = iv.lo + min(c64, c32), iv.hi + max(c64, c32)
        mag = _amax(iv) + abs(c64)
    eps = mag * ((_U32 + 4 * _U64) * (1 + 2.0**-40))
    return ctx.out(ctx.widen(lo, hi, eps))


def _cat(ctx: _Ctx, parts: Sequence[_Iv], dim: int) -> _Iv:
    nd = parts[0].lo.dim()
    if dim % nd == 0:
        raise UnsupportedLayerError("torch.cat along the batch dimension is not supported")
    return ctx.out(_Iv(torch.cat([p.lo for p in parts], dim), torch.cat([p.hi for p in parts], dim)))


def _same_batch(ctx: _Ctx, iv: _Iv, where: str) -> _Iv:
    if iv.lo.dim() == 0 or iv.lo.shape[0] != ctx.n:
        raise UnsupportedLayerError(f"{where}: the result must keep the batch dimension first")
    return iv


# --------------------------------------------------------------------------- graph

SUPPORTED = (
    "modules: Linear, Conv1d, Conv2d (padding_mode='zeros'), ReLU, LeakyReLU, ELU, GELU, "
    "SiLU, Sigmoid, Tanh, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, "
    "BatchNorm1d/2d (eval), Flatten, Dropout (eval), Identity; functions: F.relu, torch.relu, "
    "F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.max_pool1d/2d, "
    "F.avg_pool1d/2d, F.adaptive_avg_pool1d/2d, torch.flatten, torch.cat (not on dim 0), "
    "operator.add / torch.add (alpha=1), F.dropout(training=False); Tensor methods: relu, "
    "sigmoid, tanh, flatten, view, reshape, contiguous, add, size, shape"
)

_MONO_MODULES = (nn.MaxPool1d, nn.MaxPool2d)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d)


def _arg(node: torch.fx.Node, i: int, name: str, default: Any) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _fn_name(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else name


Handler = Callable[[_Ctx, tuple[Any, ...], dict[str, Any]], Any]


class IntervalNet:
    """Bounds of a float32 network's outputs when its weights are intervals.

    The module is traced with ``torch.fx.symbolic_trace``; every node must be one of
    :data:`SUPPORTED`, else :class:`UnsupportedLayerError` is raised here, before any
    weight is read. ``_rounding=False`` drops every rounding widening — a deliberately
    unsound mode that exists only so the tests can show they catch a wrong bound.
    """

    def __init__(self, module: nn.Module, *, _rounding: bool = True) -> None:
        self.module = module
        self._rounding = _rounding
        self._needs_eval: list[tuple[str, nn.Module]] = []
        self._fn_dropout = False
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and t.dtype != torch.float32:
                raise UnsupportedLayerError(f"{name}: dtype {t.dtype}; only float32 models are supported")
        if type(module) in _LEAF_TYPES:
            graph = torch.fx.Graph()
            x = graph.placeholder("x")
            graph.output(graph.call_module("", (x,)))
            self._graph = graph
        else:
            try:
                self._graph = torch.fx.symbolic_trace(module).graph
            except Exception as e:  # data-dependent control flow, unsupported Python
                raise UnsupportedLayerError(f"cannot trace {type(module).__name__} with torch.fx: {e}") from e
        self.param_names: list[str] = []
        self._plan: list[tuple[torch.fx.Node, Handler | None]] = []
        kinds: dict[torch.fx.Node, str] = {}  # "iv" (interval tensor) or "meta" (sizes)
        placeholders = 0
        for node in self._graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise UnsupportedLayerError(f"{node.name}: only one input tensor is supported")
                kinds[node] = "iv"
                self._plan.append((node, None))
            elif node.op == "output":
                res = node.args[0]
                if not isinstance(res, torch.fx.Node) or kinds.get(res) != "iv":
                    raise UnsupportedLayerError("the model must return one tensor")
                self._plan.append((node, None))
            else:
                self._check_inplace(node)
                handler, kind = self._build(node, kinds)
                kinds[node] = kind
                self._plan.append((node, handler))
        if placeholders != 1:
            raise UnsupportedLayerError("the model must take exactly one input tensor")
        self._head = self._linear_head()

    def _linear_head(self) -> tuple[torch.fx.Node, str, str | None, int] | None:
        """The output's producer when it is an ``nn.Linear`` on a 2-d input: its input
        node, weight and bias names, fan-in (for the pairwise decision)."""
        out = next(n for n in self._graph.nodes if n.op == "output")
        head = out.args[0]
        if not isinstance(head, torch.fx.Node) or head.op != "call_module":
            return None
        mod = self.module.get_submodule(str(head.target)) if head.target else self.module
        if type(mod) is not nn.Linear or not isinstance(head.args[0], torch.fx.Node):
            return None
        prefix = f"{head.target}." if head.target else ""
        return head.args[0], prefix + "weight", (prefix + "bias" if mod.bias is not None else None), mod.in_features

    # -- construction ----------------------------------------------------------------

    def _check_inplace(self, node: torch.fx.Node) -> None:
        """An in-place op whose input is used again changes that other use in the real
        forward, which the traced graph does not show: refused, never bounded wrongly.
        (``nn.ReLU(inplace=True)`` in a plain chain is fine: nothing else reads its input.)"""
        inplace = False
        if node.op == "call_module":
            path = str(node.target)
            mod = self.module if path == "" else self.module.get_submodule(path)
            inplace = bool(getattr(mod, "inplace", False))
        elif node.op == "call_function":
            inplace = bool(node.kwargs.get("inplace", False)) or any(
                a is True for a in node.args[1:])  # F.relu(x, True), F.elu(x, 1.0, True), ...
        elif node.op == "call_method":
            inplace = str(node.target).endswith("_")
        first = node.args[0] if node.args else None
        if inplace and isinstance(first, torch.fx.Node) and len(first.users) > 1:
            raise self._refuse(f"{node.name} ({node.target})",
                               "in place on a tensor that is used again; use inplace=False")

    def _refuse(self, what: str, why: str = "") -> UnsupportedLayerError:
        extra = f" ({why})" if why else ""
        return UnsupportedLayerError(f"unsupported layer {what}{extra}; supported: {SUPPORTED}")

    def _need(self, names: list[str]) -> None:
        for n in names:
            if n not in self.param_names:
                self.param_names.append(n)

    def _build(self, node: torch.fx.Node, kinds: dict[torch.fx.Node, str]) -> tuple[Handler, str]:
        ins = [a for a in node.all_input_nodes]
        in_kinds = [kinds[a] for a in ins]
        if node.op == "call_module":
            return self._build_module(node), "iv"
        if node.op == "get_attr":
            raise self._refuse(f"'{node.target}' (a parameter or tensor used directly in forward)")
        if node.op == "call_method":
            return self._build_method(node, in_kinds)
        if node.op == "call_function":
            return self._build_function(node, in_kinds)
        raise self._refuse(f"{node.op} node '{node.name}'")

    def _build_module(self, node: torch.fx.Node) -> Handler:
        path = str(node.target)
        mod = self.module if path == "" else self.module.get_submodule(path)
        where = f"'{path or '<root>'}' ({type(mod).__name__})"
        prefix = f"{path}." if path else ""
        if len(node.args) != 1 or node.kwargs:
            raise self._refuse(where, "called with more than one argument")
        t = type(mod)
        run: Callable[[_Ctx, _Iv], _Iv]
        if t is nn.Linear:
            run, names = _linear(mod, prefix)  # type: ignore[arg-type]
            self._need(names)
        elif t in (nn.Conv1d, nn.Conv2d):
            run, names = _conv(mod, prefix, where)  # type: ignore[arg-type]
            self._need(names)
        elif t in (nn.BatchNorm1d, nn.BatchNorm2d):
            run, names = _batchnorm(mod, prefix, where)  # type: ignore[arg-type]
            self._needs_eval.append((where, mod))
            self._need(names)
        elif t is nn.ReLU:
            run = _relu
        elif t is nn.LeakyReLU:
            run = _leaky(mod.negative_slope)  # type: ignore[arg-type]
        elif t is nn.ELU:
            run = _elu(float(mod.alpha))  # type: ignore[arg-type]
        elif t is nn.GELU:
            run = _gelu(mod.approximate)  # type: ignore[arg-type]
        elif t is nn.SiLU:
            run = _transcendental(_silu, _minimum("silu", _silu), False)
        elif t is nn.Sigmoid:
            run = _transcendental(torch.sigmoid, None, False)
        elif t is nn.Tanh:
            run = _transcendental(torch.tanh, None, False)
        elif t in _MONO_MODULES:
            if mod.return_indices:  # type: ignore[union-attr]
                raise self._refuse(where, "return_indices=True")
            run = _monotone(mod)
        elif t in (nn.AvgPool1d, nn.AvgPool2d):
            k = mod.kernel_size  # type: ignore[union-attr]
            n = math.prod(k) if isinstance(k, Sequence) else int(k)  # type: ignore[arg-type]
            run = _pool_avg(mod, lambda _t, n=n: n)
        elif t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
            spatial = 1 if t is nn.AdaptiveAvgPool1d else 2
            run = _pool_avg(mod, _adaptive_n(mod.output_size, spatial))
        elif t is nn.Flatten:
            run = _monotone(mod)
        elif t in _DROPOUTS:
            if mod.training:
                raise self._refuse(where, "dropout in training mode (call .eval())")
            self._needs_eval.append((where, mod))
            run = _monotone(lambda v: v)
        elif t is nn.Identity:
            run = _monotone(lambda v: v)
        else:
            raise self._refuse(where)

        def handler(ctx: _Ctx, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Iv:
            return _same_batch(ctx, run(ctx, args[0]), where)

        return handler

    def _build_method(self, node: torch.fx.Node, in_kinds: list[str]) -> tuple[Handler, str]:
        name = str(node.target)
        where = f"Tensor.{name} ('{node.name}')"
        if not in_kinds or in_kinds[0] != "iv":
            raise self._refuse(where, "called on a non-tensor")
        if name == "size":
            return (lambda ctx, a, kw: a[0].lo.size(*a[1:], **kw)), "meta"
        if any(k == "iv" for k in in_kinds[1:]) and name != "add":
            raise self._refuse(where, "tensor-valued arguments")
        if name == "relu":
            return (lambda ctx, a, kw: _relu(ctx, a[0])), "iv"
        if name in ("sigmoid", "tanh"):
            run = _transcendental(getattr(torch, name), None, False)
            return (lambda ctx, a, kw: run(ctx, a[0])), "iv"
        if name == "contiguous":
            return (lambda ctx, a, kw: a[0]), "iv"
        if name in ("flatten", "view", "reshape"):

            def shape_op(ctx: _Ctx, a: tuple[Any, ...], kw: dict[str, Any]) -> _Iv:
                iv = a[0]
                res = _Iv(getattr(iv.lo, name)(*a[1:], **kw), getattr(iv.hi, name)(*a[1:], **kw))
                return _same_batch(ctx, res, where)

            return shape_op, "iv"
        if name == "add":
            if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
                raise self._refuse(where, "alpha != 1")
            return (lambda ctx, a, kw: _add(ctx, a[0], a[1])), "iv"
        raise self._refuse(where)

    def _build_function(self, node: torch.fx.Node, in_kinds: list[str]) -> tuple[Handler, str]:
        fn = node.target
        where = f"{_fn_name(fn)} ('{node.name}')"
        if fn is getattr:
            if in_kinds == ["iv"] and node.args[1] == "shape":
                return (lambda ctx, a, kw: a[0].lo.shape), "meta"
            raise self._refuse(where, f"attribute {node.args[1]!r}")
        if all(k == "meta" for k in in_kinds) and fn in _META_OPS:
            return (lambda ctx, a, kw: fn(*a, **kw)), "meta"  # type: ignore[operator]
        if not in_kinds or (in_kinds[0] != "iv" and fn not in (operator.add, torch.add, *_CATS)):
            raise self._refuse(where, "not applied to a tensor")
        if fn in (operator.add, torch.add):
            if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
                raise self._refuse(where, "alpha != 1")
            if "iv" not in in_kinds:
                raise self._refuse(where, "not applied to a tensor")
            return (lambda ctx, a, kw: _add(ctx, a[0], a[1] if len(a) > 1 else kw["other"])), "iv"
        if fn in _CATS:
            dim = _arg(node, 1, "dim", 0)
            if not isinstance(dim, int) or dim == 0:
                raise self._refuse(where, "concatenation along the batch dimension")
            return (lambda ctx, a, kw: _cat(ctx, a[0], dim)), "iv"
        if any(k == "iv" for k in in_kinds[1:]):
            raise self._refuse(where, "tensor-valued arguments")
        run: Callable[[_Ctx, _Iv], _Iv] | None = None
        if fn in (F.relu, torch.relu):
            run = _relu
        elif fn is F.leaky_relu:
            run = _leaky(float(_arg(node, 1, "negative_slope", 0.01)))
        elif fn is F.elu:
            run = _elu(float(_arg(node, 1, "alpha", 1.0)))
        elif fn is F.gelu:
            run = _gelu(str(_arg(node, 1, "approximate", "none")))
        elif fn is F.silu:
            run = _transcendental(_silu, _minimum("silu", _silu), False)
        elif fn in (torch.sigmoid, F.sigmoid):
            run = _transcendental(torch.sigmoid, None, False)
        elif fn in (torch.tanh, F.tanh):
            run = _transcendental(torch.tanh, None, False)
        elif fn is F.dropout:
            if _arg(node, 2, "training", True) is not False:
                raise self._refuse(where, "dropout in training mode")
            self._fn_dropout = True
            run = _monotone(lambda v: v)
        elif fn in (F.max_pool1d, F.max_pool2d):
            if _arg(node, 6, "return_indices", False):
                raise self._refuse(where, "return_indices=True")
        elif fn not in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.flatten):
            raise self._refuse(where)
        if run is not None:
            r = run
            return (lambda ctx, a, kw: r(ctx, a[0])), "iv"

        def call(ctx: _Ctx, a: tuple[Any, ...], kw: dict[str, Any]) -> _Iv:
            pooled = lambda t: fn(t, *a[1:], **kw)  # noqa: E731
            if fn in (F.avg_pool1d, F.avg_pool2d):
                k = a[1] if len(a) > 1 else kw["kernel_size"]
                n = math.prod(k) if isinstance(k, Sequence) else int(k) ** (1 if fn is F.avg_pool1d else 2)
                return _same_batch(ctx, _pool_avg(pooled, lambda _t: n)(ctx, a[0]), where)
            if fn in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
                out = a[1] if len(a) > 1 else kw["output_size"]
                spatial = 1 if fn is F.adaptive_avg_pool1d else 2
                return _same_batch(ctx, _pool_avg(pooled, _adaptive_n(out, spatial))(ctx, a[0]), where)
            return _same_batch(ctx, _monotone(pooled)(ctx, a[0]), where)

        return call, "iv"

    # -- evaluation ------------------------------------------------------------------

    def _check_eval(self) -> None:
        for where, mod in self._needs_eval:
            if mod.training:
                raise UnsupportedLayerError(f"{where} is in training mode (call .eval())")
        if self._fn_dropout and any(m.training for m in self.module.modules()):
            raise UnsupportedLayerError("F.dropout in a module in training mode (call .eval())")

    def _weights(
        self, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        state = dict(self.module.state_dict(keep_vars=True))
        out = {}
        for name in self.param_names:
            if name not in weights:
                raise KeyError(f"no bounds for weight {name!r}")
            lo, hi = (torch.as_tensor(v).to(torch.float64) for v in weights[name])
            shape = state[name].shape
            if lo.shape != shape or hi.shape != shape:
                raise ValueError(f"{name}: bounds of shape {tuple(lo.shape)}/{tuple(hi.shape)}, weight is {tuple(shape)}")
            if bool(torch.isnan(lo).any() | torch.isnan(hi).any()) or bool((lo > hi).any()):
                raise ValueError(f"{name}: bounds must satisfy lo <= hi (no NaN)")
            out[name] = (lo, hi)
        return out

    @torch.no_grad()
    def bounds(
        self, x: torch.Tensor, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 ``(lo, hi)`` containing ``module(x)`` as float32 computes it.

        ``x`` is the exact float32 batch; ``weights`` maps every name in
        :attr:`param_names` to float64 ``(lo, hi)`` of its shape. Rows where a value
        could be non-finite or overflow float32 come back as ``(-inf, inf)``.
        """
        if x.dtype != torch.float32:
            raise TypeError(f"x must be float32 (the reference input), got {x.dtype}")
        if x.dim() == 0:
            raise ValueError("x must be a batch (dimension 0 is the batch)")
        self._check_eval()
        ctx = _Ctx(self._weights(weights), int(x.shape[0]), self._rounding)
        env: dict[torch.fx.Node, Any] = {}
        result: _Iv | None = None
        for node, handler in self._plan:
            if node.op == "placeholder":
                xd = x.detach().to(torch.float64)
                env[node] = ctx.out(_Iv(xd, xd))
            elif node.op == "output":
                result = env[node.args[0]]
            else:
                args = torch.fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
                env[node] = handler(ctx, tuple(args), dict(kwargs))  # type: ignore[misc]
        assert result is not None
        self._last_head_input = env.get(self._head[0]) if self._head is not None else None
        self._last_ctx = ctx
        lo, hi = result.lo, result.hi
        if bool(ctx.bad.any()):
            shape = (-1,) + (1,) * (lo.dim() - 1)
            bad = ctx.bad.reshape(shape)
            lo = torch.where(bad, -math.inf, lo)
            hi = torch.where(bad, math.inf, hi)
        return lo, hi


    @torch.no_grad()
    def decide(
        self, x: torch.Tensor, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], k: int,
        affine: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``decide_topk(*self.bounds(x, weights), k)``, and more often decided when
        the network ends in ``nn.Linear``: the logit *differences* l_a − l_b are then
        bounded directly, (W_a − W_b)·h + (b_a − b_b) with one interval h for the
        penultimate activations, so the uncertainty that h shares between two logits
        cancels instead of counting twice. Each difference is widened by both logits'
        float32 rounding (each within γ_{n+1}·(|W|·|h| + |b|)) and our float64 rounding.
        Inputs both rules leave open get a third pass with affine forms, which keep the
        dependence between layers (``progressive/affine.py``). Any rule deciding is sound,
        so the result is their union. ``affine=False`` skips the third pass (cheaper when
        sharper weights are about to arrive anyway)."""
        decided, topk = self._decide_intervals(x, weights, k)
        if not (affine and self._rounding):
            return decided, topk
        from modelhub_torch.progressive.affine import AffineNet, within_reach  # imports this module

        lo, hi = self._last_bounds
        rest = (~decided & ~self._last_ctx.bad & within_reach(lo, hi, k)).nonzero().flatten()
        if rest.numel():
            ok, top = AffineNet(self).decide(x[rest], self._last_ctx.weights, k)
            decided[rest[ok]] = True
            topk[rest[ok]] = top[ok]
        return decided, topk

    def _decide_intervals(
        self, x: torch.Tensor, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.bounds(x, weights)
        self._last_bounds = (lo, hi)
        decided, topk = decide_topk(lo, hi, k)
        h = self._last_head_input
        if self._head is None or h is None or h.lo.dim() != 2 or bool(decided.all()):
            return decided, topk
        ctx = self._last_ctx
        _, wname, bname, n = self._head
        w_lo, w_hi = ctx.param(wname)
        b_lo, b_hi = ctx.param(bname) if bname else (torch.zeros(w_lo.shape[0], dtype=torch.float64),) * 2
        todo = (~decided & ~ctx.bad).nonzero().flatten()
        if todo.numel() == 0:
            return decided, topk
        centre = ((lo + hi) / 2)[todo]
        order = torch.argsort(centre, dim=1, descending=True, stable=True)
        wmax = torch.maximum(w_lo.abs(), w_hi.abs())
        bmax = torch.maximum(b_lo.abs(), b_hi.abs())
        # a handful of float64 [rows, classes, fan-in] arrays live at once: ~32 MiB each
        step = max(1, (1 << 22) // max(1, lo.shape[1] * n))
        for start in range(0, todo.numel(), step):
            rows = todo[start : start + step]
            ordr = order[start : start + step]
            ok = self._pairs_positive(h.lo[rows], h.hi[rows], ordr, k, w_lo, w_hi, b_lo, b_hi, wmax, bmax, n)
            decided[rows[ok]] = True
            topk[rows[ok]] = ordr[ok, :k]
        return decided, topk

    def _pairs_positive(self, h_lo, h_hi, order, k, w_lo, w_hi, b_lo, b_hi, wmax, bmax, n) -> torch.Tensor:
        """Rows where every needed difference l_a − l_b (a ranked above b) is > 0: the
        k candidates in order, and the k-th above every other class."""
        a_idx, b_idx = needed_pairs(order, k)  # [rows, c-1] pairs (a, b)
        d_lo = w_lo[a_idx] - w_hi[b_idx]  # [rows, c-1, n], exact or one rounding (widened below)
        d_hi = w_hi[a_idx] - w_lo[b_idx]
        hl, hh = h_lo.unsqueeze(1), h_hi.unsqueeze(1)
        if bool((h_lo >= 0).all()):
            low = (d_lo.clamp(min=0) * hl - (-d_lo).clamp(min=0) * hh).sum(-1)
        else:
            hc, hr = (hl + hh) / 2, (hh - hl) / 2
            dc, dr = (d_lo + d_hi) / 2, (d_hi - d_lo) / 2
            low = (dc * hc).sum(-1) - (dc.abs() * hr + dr * torch.maximum(hl.abs(), hh.abs())).sum(-1)
        low = low + (b_lo[a_idx] - b_hi[b_idx])
        hmax = torch.maximum(h_lo.abs(), h_hi.abs()).unsqueeze(1)
        s_a = (wmax[a_idx] * hmax).sum(-1) + bmax[a_idx]  # bounds |W_a|·|h| + |b_a|
        s_b = (wmax[b_idx] * hmax).sum(-1) + bmax[b_idx]
        # float32 rounding of both logits, float64 rounding of this sum of 2n+2 terms
        # (each difference term carries one more rounding: hence 2·eps on its size)
        err = (s_a + s_b) * (2.0 * _dot_eps(2 * n + 2)) + 2 * (n + 2) * _TINY32
        if not self._rounding:
            err = torch.zeros_like(err)
        return (low - err > 0).all(dim=1)


_LEAF_TYPES = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU,
    nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Identity,
)
_CATS = (torch.cat, torch.concat, torch.concatenate)
_META_OPS = (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv)


# --------------------------------------------------------------------------- decision


def needed_pairs(order: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The class pairs (a, b), a ranked above b, that an ordered top-k needs apart: each
    of the first k above the next, the k-th above every class outside ([rows, c−1] each)."""
    rows, c = order.shape
    a_idx = torch.cat([order[:, : k - 1], order[:, k - 1 : k].expand(rows, c - k)], dim=1)
    b_idx = torch.cat([order[:, 1:k], order[:, k:]], dim=1)
    return a_idx, b_idx


def decide_topk(lo: torch.Tensor, hi: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose ordered top-k the bounds force, and that top-k.

    With classes sorted by lower bound, input i is decided when lo of the j-th class
    exceeds hi of the (j+1)-th for j < k, and lo of the k-th exceeds hi of every class
    outside the top k (strictly): then every value inside the bounds — the float32
    output included — has exactly this ordered top-k, ties impossible. Undecided rows
    hold −1.
    """
    if lo.shape != hi.shape or lo.dim() != 2:
        raise ValueError("lo and hi must be [N, C] tensors of the same shape")
    c = lo.shape[1]
    if not 1 <= k <= c:
        raise ValueError(f"k must be between 1 and {c}, got {k}")
    order = torch.argsort(lo, dim=1, descending=True, stable=True)
    top = order[:, :k]
    lo_top = lo.gather(1, top)
    hi_sorted = hi.gather(1, order)
    decided = (lo_top[:, : k - 1] > hi_sorted[:, 1:k]).all(dim=1)
    if k < c:
        decided &= lo_top[:, k - 1] > hi_sorted[:, k:].amax(dim=1)
    decided &= ~(torch.isnan(lo).any(dim=1) | torch.isnan(hi).any(dim=1))
    topk = torch.where(decided.unsqueeze(1), top, torch.full_like(top, -1))
    return decided, topk
