"""Affine-form (zonotope) bounds: the second, tighter pass for inputs intervals leave open.

Interval arithmetic forgets that two activations share a cause: after two layers every
uncertainty has been counted once per path. An *affine form* keeps it: each activation
is ``c + Σ_s g_s·ε_s`` with independent noise symbols ``ε_s ∈ [−1, 1]`` shared across
the network, so a linear map with the weights' centres ``W0`` carries the shared parts
exactly and a logit difference cancels them (DeepZ-style relaxation, extended to
uncertain weights as in CROWN-style bounds under weight perturbation):

* ``W·x + b`` with ``W ∈ W0 ± R``, ``b ∈ b0 ± rb``: ``W0·x + b0`` is applied to the form
  exactly; ``ΔW·x + Δb`` — bounded by ``R·|x|max + rb`` — gets one fresh symbol per
  output, together with the float32 reference's rounding and our float64 rounding
  (the same γ_n bound the interval pass uses, ``_dot_eps``);
* ReLU: exact on neurons of one sign; on a crossing neuron with bounds ``[l, u]``,
  ``λ·x + μ/2 + (μ/2)·ε_new`` with ``λ = u/(u − l)`` and ``μ`` the largest of
  ``−λ·l`` and ``u·(1 − λ)`` (sound for whatever λ float64 computed);
* max-pooling: the window's element with the highest lower bound passes its form through,
  plus a fresh symbol over ``[0, max(0, others' highest upper bound − its lower bound)]``
  (exact when it wins outright);
* view / flatten / reshape and ``+`` are exact on forms.

Every other layer is bounded by the interval pass itself on the forms' boxes (its result
becomes fresh symbols), so the forms are sound wherever the intervals are. Inputs are
decided when every needed logit difference has a positive lower bound.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from modelhub_torch.progressive.intervals import (
    _LIMIT,
    _TINY32,
    _U32,
    _U64,
    _Ctx,
    _dot_eps,
    _gamma,
    _Iv,
    needed_pairs,
)

if TYPE_CHECKING:
    from modelhub_torch.progressive.intervals import IntervalNet

# float64 elements of generator arrays alive at once (per layer): ~64 MiB each
BUDGET_ELEMS = 1 << 23
# a network whose widest form needs more generator elements per input row than this is
# left to the interval rules: the pass would cost seconds per row
MAX_ROW_ELEMS = 1 << 20
# rows go to the pass only when the interval bounds' spread of every needed difference
# is within REACH times its gap: beyond that no measured form decided (largest ratio
# seen deciding: 7.3, LeNet-like CNN at 2 planes), and rows at 1 plane are all beyond
REACH = 16.0
# when the forms decide none of the first PROBE_ROWS rows, the others are not tried
PROBE_ROWS = 32
# a convolution's weight symbols per row at most (symbols × output elements)
WEIGHT_SYMBOL_ELEMS = 1 << 21


@dataclass
class _Form:
    """An affine form per input row: centre [N, *shape], generators [N, S, *shape]."""

    c: torch.Tensor
    g: torch.Tensor

    @property
    def symbols(self) -> int:
        return self.g.shape[1]

    def radius(self) -> torch.Tensor:
        """Σ|g_s| per element, rounded outward (computed once: forms are never mutated)."""
        cached = self.__dict__.get("_radius")
        if cached is not None:
            return cached
        r = self.g.abs().sum(1)
        # float64 rounding of the sum (and of c's own last operation), outward
        slack = (self.c.abs() + r) * _gamma(self.symbols + 2, _U64) + _TINY32
        r = torch.nextafter(r + slack, torch.full_like(r, math.inf))
        self.__dict__["_radius"] = r
        return r

    def box(self) -> _Iv:
        r = self.radius()
        return _Iv(self.c - r, self.c + r)


class _TooCostly(Exception):
    """A form outgrew ``MAX_ROW_ELEMS`` per row: the pass gives up (rows stay undecided)."""


class _AffineCtx(_Ctx):
    """The interval pass's per-call state plus the count of noise symbols created so far.

    Symbols are numbered globally in creation order and every form's generators are
    indexed by that number (zeros for symbols it does not depend on), so two forms from
    different branches never mistake each other's fresh symbols for one shared symbol."""

    def __init__(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        super().__init__(weights, n, True)
        self.symbols = 0


def _pad(g: torch.Tensor, s: int) -> torch.Tensor:
    """Generators ``g`` extended with zeros to the first ``s`` symbols."""
    if g.shape[1] == s:
        return g
    extra = torch.zeros((g.shape[0], s - g.shape[1], *g.shape[2:]), dtype=g.dtype)
    return torch.cat([g, extra], dim=1)


def _append(ctx: _AffineCtx, g: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``g`` followed by the generators ``new`` of brand-new symbols (numbered next)."""
    out = torch.cat([_pad(g, ctx.symbols), new], dim=1)
    ctx.symbols += new.shape[1]
    return out


def _fresh(ctx: _AffineCtx, c: torch.Tensor, g: torch.Tensor, rad: torch.Tensor) -> _Form:
    """``c + g·ε`` plus one new symbol per element with radius ``rad`` (zeros dropped)."""
    n = c.shape[0]
    flat = rad.reshape(n, -1)
    keep = (flat > 0).any(dim=0).nonzero().flatten()
    if keep.numel() == 0:
        return _Form(c, g)
    m = flat.shape[1]
    new = torch.zeros((n, keep.numel(), m), dtype=c.dtype)
    new[:, torch.arange(keep.numel()), keep] = flat[:, keep]
    return _Form(c, _append(ctx, g, new.reshape(n, keep.numel(), *c.shape[1:])))


def _from_box(ctx: _AffineCtx, iv: _Iv) -> _Form:
    c = (iv.lo + iv.hi) * 0.5
    r = torch.maximum(iv.hi - c, c - iv.lo)
    r = torch.where(iv.hi == iv.lo, torch.zeros_like(r), torch.nextafter(r, torch.full_like(r, math.inf)))
    return _fresh(ctx, c, torch.zeros((c.shape[0], 0, *c.shape[1:]), dtype=c.dtype), r)


# --------------------------------------------------------------------------- layers


def _affine_map(
    ctx: _AffineCtx, x: _Form, wname: str, bname: str | None, op: Any, n: int, bshape: tuple,
    patches: Any = None,
) -> _Form:
    """``W·x + b`` on a form. ``patches`` (convolutions) maps the centre to its
    receptive fields [N, J, L]: then each weight and bias gets its own noise symbol,
    shared by every position that uses it, instead of a fresh symbol per output."""
    w_lo, w_hi = ctx.param(wname)
    w0 = (w_lo + w_hi) * 0.5
    wr = torch.nextafter(torch.maximum(w_hi - w0, w0 - w_lo), torch.full_like(w0, math.inf))
    box = x.box()
    ax = torch.maximum(box.lo.abs(), box.hi.abs())
    N, S = x.c.shape[0], x.symbols
    c = op(x.c, w0)
    g = op(x.g.reshape(N * S, *x.c.shape[1:]), w0).reshape(N, S, *c.shape[1:]) if S else (
        torch.zeros((N, 0, *c.shape[1:]), dtype=c.dtype))
    s = op(ax, torch.maximum(w_lo.abs(), w_hi.abs()))
    shared = patches is not None and _weight_symbols_fit(w0, c)
    if shared:
        # ΔW·c exactly, one symbol per weight: coefficient wr[o, j]·patch[n, j, l] on output o
        # (its float64 product rounds within u64 of itself, bounded below with the rest)
        p = patches(x.c)
        out, j = w0.shape[0], p.shape[1]
        eye = torch.eye(out, dtype=c.dtype)
        wg = torch.einsum("oj,njl,op->nojpl", wr.reshape(out, j), p, eye)
        g = _append(ctx, g, wg.reshape(N, out * j, *c.shape[1:]))
        # ΔW·(x − c): the generators' part, a fresh symbol per output below
        noise = op(x.g.abs().sum(1), wr) + op(x.c.abs(), wr) * (4 * _U64)
    else:
        noise = op(ax, wr)
    if bname is not None:
        b_lo, b_hi = ctx.param(bname)
        b0 = (b_lo + b_hi) * 0.5
        br = torch.nextafter(torch.maximum(b_hi - b0, b0 - b_lo), torch.full_like(b0, math.inf))
        c = c + b0.reshape(bshape)
        if shared:
            eye = torch.eye(c.shape[1], dtype=c.dtype).reshape(1, c.shape[1], c.shape[1], *([1] * (c.dim() - 2)))
            bg = (br.reshape(1, -1, *([1] * (c.dim() - 1))) * eye).expand(N, -1, *c.shape[1:])
            g = _append(ctx, g, bg)
        else:
            noise = noise + br.reshape(bshape)
        s = s + torch.maximum(b_lo.abs(), b_hi.abs()).reshape(bshape)
    ctx.flag(s)
    # the float32 reference's rounding and ours (centre and every generator)
    rad = noise * (1.0 + 4.0 * _gamma(n + 4, _U64)) + s * _dot_eps(n) + (n + 2) * _TINY32
    return _fresh(ctx, c, g, torch.nextafter(rad, torch.full_like(rad, math.inf)))


def _weight_symbols_fit(w0: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether a symbol per weight stays within the generator budget for one row."""
    return w0.numel() * out[0].numel() <= WEIGHT_SYMBOL_ELEMS


def _relu(ctx: _AffineCtx, x: _Form) -> _Form:
    box = x.box()
    lo, hi = box.lo, box.hi
    pos, neg = lo >= 0, hi <= 0
    cross = ~pos & ~neg
    lam = torch.where(cross, hi / torch.where(cross, hi - lo, torch.ones_like(hi)), pos.to(hi.dtype))
    lam = lam.clamp(0.0, 1.0)
    mu = torch.where(cross, torch.maximum(-lam * lo, hi * (1.0 - lam)), torch.zeros_like(hi))
    mu = torch.nextafter(mu * (1.0 + 4 * _U64), torch.full_like(mu, math.inf))
    c = lam * x.c + mu * 0.5
    g = lam.unsqueeze(1) * x.g
    # float64 rounding of λ·c and λ·g, outward
    err = (x.c.abs() + x.g.abs().sum(1)) * lam * (4 * _gamma(x.symbols + 2, _U64)) + _TINY32 * cross
    return _fresh(ctx, c, g, torch.where(cross, mu * 0.5 + err, torch.zeros_like(err)))


def _maxpool2d(ctx: _AffineCtx, x: _Form, k: int, s: int) -> _Form:
    box = x.box()
    N, S = x.c.shape[0], x.symbols
    lo = box.lo.unfold(2, k, s).unfold(3, k, s)  # [N, C, Ho, Wo, k, k]
    hi = box.hi.unfold(2, k, s).unfold(3, k, s)
    shp = lo.shape[:4]
    lo, hi = lo.reshape(*shp, k * k), hi.reshape(*shp, k * k)
    best = lo.argmax(-1, keepdim=True)
    blo = lo.gather(-1, best)
    others = hi.scatter(-1, best, torch.full_like(blo, -math.inf)).amax(-1)  # [N, C, Ho, Wo]
    c = x.c.unfold(2, k, s).unfold(3, k, s).reshape(*shp, k * k).gather(-1, best).squeeze(-1)
    g = x.g.unfold(3, k, s).unfold(4, k, s).reshape(N, S, *shp[1:], k * k)
    g = g.gather(-1, best.unsqueeze(1).expand(N, S, *best.shape[1:])).squeeze(-1)
    # max − x_best lies in [0, max(0, max others' upper − x_best's lower)]
    gap = (others - blo.squeeze(-1)).clamp(min=0.0)
    mu = torch.where(gap > 0, torch.nextafter(gap, torch.full_like(gap, math.inf)), gap)
    err = torch.where(mu > 0, (c.abs() + mu) * (2 * _U64) + _TINY32, torch.zeros_like(mu))
    return _fresh(ctx, c + mu * 0.5, g, torch.nextafter(mu * 0.5 + err, torch.full_like(mu, math.inf)))


def _reshape(x: _Form, fn: Any) -> _Form | None:
    c = fn(x.c)
    if c.shape[0] != x.c.shape[0] or c.numel() != x.c.numel():
        return None
    return _Form(c, x.g.reshape(x.g.shape[0], x.symbols, *c.shape[1:]))


def _add(ctx: _AffineCtx, a: _Form, b: _Form) -> _Form:
    s = max(a.symbols, b.symbols)
    c = a.c + b.c
    g = _pad(a.g, s) + _pad(b.g, s)
    # the float32 reference's rounding of a + b, and ours of the centre and each generator
    ba, bb = a.box(), b.box()
    mag = torch.maximum(ba.lo.abs(), ba.hi.abs()) + torch.maximum(bb.lo.abs(), bb.hi.abs())
    err = mag * ((_U32 + 4 * _U64) * (1 + 2.0**-40)) + (c.abs() + g.abs().sum(1)) * (2 * _U64) + _TINY32
    return _fresh(ctx, c, g, torch.nextafter(err, torch.full_like(c, math.inf)))


# --------------------------------------------------------------------------- network


class AffineNet:
    """Affine-form evaluation over an :class:`IntervalNet`'s traced graph."""

    def __init__(self, net: IntervalNet) -> None:
        self.net = net
        self.module = net.module
        self._peak = 0  # generator elements per row of the widest form of the last pass

    def _module_of(self, node: torch.fx.Node) -> nn.Module:
        path = str(node.target)
        return self.module if path == "" else self.module.get_submodule(path)

    def _exact(self, ctx: _AffineCtx, node: torch.fx.Node, args: tuple, kwargs: dict) -> _Form | None:
        """The affine handler of one node, or None to bound it by the interval pass."""
        forms = [a for a in args if isinstance(a, _Form)]
        if node.op == "call_module":
            mod = self._module_of(node)
            prefix = f"{node.target}." if node.target else ""
            t = type(mod)
            x = args[0] if args and isinstance(args[0], _Form) else None
            if x is None:
                return None
            if t is nn.Linear:
                b = prefix + "bias" if mod.bias is not None else None
                return _affine_map(ctx, x, prefix + "weight", b, lambda i, w: F.linear(i, w), mod.in_features,
                                   (1, -1))
            if t is nn.Conv2d and mod.padding_mode == "zeros":
                n = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
                b = prefix + "bias" if mod.bias is not None else None

                def conv(i: torch.Tensor, w: torch.Tensor, mod: nn.Conv2d = mod) -> torch.Tensor:
                    return F.conv2d(i, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)

                def patches(i: torch.Tensor, mod: nn.Conv2d = mod) -> torch.Tensor:
                    return F.unfold(i, mod.kernel_size, mod.dilation, mod.padding, mod.stride)

                return _affine_map(ctx, x, prefix + "weight", b, conv, n, (1, -1, 1, 1),
                                   patches if mod.groups == 1 and not isinstance(mod.padding, str) else None)
            if t is nn.ReLU:
                return _relu(ctx, x)
            if t is nn.MaxPool2d:
                k, s = _pool_args(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
                return _maxpool2d(ctx, x, k, s) if k and x.c.dim() == 4 else None
            if t is nn.Flatten:
                return _reshape(x, mod)
            if t is nn.Identity or (t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d) and not mod.training):
                return x
            return None
        if node.op == "call_function":
            fn = node.target
            if fn in (F.relu, torch.relu) and forms and not kwargs.get("inplace", False):
                return _relu(ctx, args[0])
            if fn is F.max_pool2d and args and isinstance(args[0], _Form) and args[0].c.dim() == 4:
                k = args[1] if len(args) > 1 else kwargs.get("kernel_size")
                stride = args[2] if len(args) > 2 else kwargs.get("stride")
                k, s = _pool_args(k, stride, kwargs.get("padding", 0), kwargs.get("dilation", 1),
                                  kwargs.get("ceil_mode", False))
                return _maxpool2d(ctx, args[0], k, s) if k and len(args) <= 3 else None
            if fn is torch.flatten and args and isinstance(args[0], _Form):
                return _reshape(args[0], lambda t: torch.flatten(t, *args[1:], **kwargs))
            if fn in (operator.add, torch.add) and len(forms) == 2 and len(args) == 2 and not kwargs:
                return _add(ctx, args[0], args[1])
            return None
        if node.op == "call_method" and args and isinstance(args[0], _Form):
            name = str(node.target)
            if name in ("view", "reshape", "flatten"):
                rest = args[1:]
                return _reshape(args[0], lambda t: getattr(t, name)(*rest, **kwargs))
            if name == "relu":
                return _relu(ctx, args[0])
        return None

    @torch.no_grad()
    def logits(
        self, x: torch.Tensor, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], limit: int | None = None
    ) -> tuple[_Form, torch.Tensor]:
        """The output form and the rows that must not be decided (overflow risk); raises
        ``_TooCostly`` when a form needs more than ``limit`` generator elements per row."""
        ctx = _AffineCtx(weights, int(x.shape[0]))
        env: dict[torch.fx.Node, Any] = {}
        result = None
        for node, handler in self.net._plan:
            if node.op == "placeholder":
                xd = x.detach().to(torch.float64)
                env[node] = _Form(xd, torch.zeros((xd.shape[0], 0, *xd.shape[1:]), dtype=xd.dtype))
                continue
            if node.op == "output":
                result = env[node.args[0]]
                continue
            args = tuple(torch.fx.node.map_arg(node.args, lambda n: env[n]))
            kwargs = dict(torch.fx.node.map_arg(node.kwargs, lambda n: env[n]))
            form = self._exact(ctx, node, args, kwargs)
            if form is None:  # bound by the interval pass on the boxes
                def boxed(v: Any) -> Any:
                    return v.box() if isinstance(v, _Form) else v

                iv_args = tuple(torch.fx.node.map_aggregate(args, boxed))
                iv_kwargs = dict(torch.fx.node.map_aggregate(kwargs, boxed))
                out = handler(ctx, iv_args, iv_kwargs)  # type: ignore[misc]
                form = _from_box(ctx, out) if isinstance(out, _Iv) else out
            if isinstance(form, _Form):
                self._peak = max(self._peak, form.g[:1].numel())
                if limit is not None and self._peak > limit:
                    raise _TooCostly  # stop before the next layer makes it worse
                box = form.box()
                ctx.flag(box.lo)
                ctx.flag(box.hi)
            env[node] = form
        assert isinstance(result, _Form)
        return result, ctx.bad

    def decide(
        self, x: torch.Tensor, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows whose ordered top-k the forms force (ranked by the forms' centres: each of
        the first k above the next, the k-th above every class outside), and that top-k."""
        n = x.shape[0]
        decided = torch.zeros(n, dtype=torch.bool)
        topk = torch.full((n, k), -1, dtype=torch.long)
        start, step = 0, 1  # the first row measures the widest generator array
        while start < n:
            rows = slice(start, min(n, start + step))
            self._peak = 0
            try:
                form, bad = self.logits(x[rows], weights, limit=MAX_ROW_ELEMS)
            except _TooCostly:
                break  # too costly for this network: the remaining rows stay undecided
            order = torch.argsort(form.c, dim=1, descending=True, stable=True)
            ok = _pairs_positive(form, order, k) & ~bad
            decided[rows] = ok
            topk[rows] = torch.where(ok.unsqueeze(1), order[:, :k], torch.full_like(order[:, :k], -1))
            per_row = max(1, self._peak)
            start = rows.stop
            if start >= PROBE_ROWS and not bool(decided.any()):
                break  # the forms decide none of a first sample: not worth the rest
            step = max(1, BUDGET_ELEMS // per_row)
            if start < PROBE_ROWS:
                step = min(step, PROBE_ROWS - start)
        return decided, topk


def _pool_args(k: Any, s: Any, padding: Any, dilation: Any, ceil: bool) -> tuple[int, int]:
    """(kernel, stride) of a square max-pool without padding or dilation; (0, 0) otherwise."""
    def one(v: Any) -> int | None:
        if isinstance(v, int):
            return v
        if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1]:
            return int(v[0])
        return None

    kk = one(k)
    ss = kk if s is None or s == () or s == [] else one(s)
    if kk is None or ss is None or one(padding) != 0 or one(dilation) != 1 or ceil:
        return 0, 0
    return kk, ss


def _pairs_positive(form: _Form, order: torch.Tensor, k: int) -> torch.Tensor:
    """Every needed difference z_a − z_b (a ranked above b) has a positive lower bound."""
    rows = order.shape[0]
    a_idx, b_idx = needed_pairs(order, k)
    ca, cb = form.c.gather(1, a_idx), form.c.gather(1, b_idx)
    s = form.symbols
    ga = form.g.gather(2, a_idx.unsqueeze(1).expand(rows, s, -1))
    gb = form.g.gather(2, b_idx.unsqueeze(1).expand(rows, s, -1))
    spread = (ga - gb).abs().sum(1)
    size = ca.abs() + cb.abs() + ga.abs().sum(1) + gb.abs().sum(1)
    low = (ca - cb) - spread - size * (4 * _gamma(s + 4, _U64)) - 2 * _TINY32
    return (low > 0).all(dim=1) & (size < _LIMIT).all(dim=1)


def within_reach(lo: torch.Tensor, hi: torch.Tensor, k: int) -> torch.Tensor:
    """Rows whose interval bounds leave every needed difference (classes ranked by the
    centres) with a spread of at most ``REACH`` times its gap: the only rows worth the
    affine pass. A choice of work, not of soundness."""
    c, r = (lo + hi) * 0.5, (hi - lo) * 0.5
    order = torch.argsort(c, dim=1, descending=True, stable=True)
    a_idx, b_idx = needed_pairs(order, k)
    gap = c.gather(1, a_idx) - c.gather(1, b_idx)
    spread = r.gather(1, a_idx) + r.gather(1, b_idx)
    return (spread <= REACH * gap).all(dim=1) & torch.isfinite(spread).all(dim=1)
