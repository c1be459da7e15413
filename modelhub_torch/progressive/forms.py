"""Affine forms (zonotopes) and the layers that keep them exact or relax them soundly.

Each activation is ``c + Σ_s g_s·ε_s`` with independent noise symbols ``ε_s ∈ [−1, 1]``
shared across the network (DeepZ-style relaxation, extended to uncertain weights as in
CROWN-style bounds under weight perturbation):

* ``W·x + b`` with ``W ∈ W0 ± R``, ``b ∈ b0 ± rb``: ``W0·x + b0`` is applied to the form
  exactly; ``ΔW·x + Δb`` — bounded by ``R·|x|max + rb`` — gets one fresh symbol per
  output, together with the float32 reference's rounding and our float64 rounding
  (the same γ_n bound the interval pass uses, ``rounding.dot_eps``);
* ReLU: exact on neurons of one sign; on a crossing neuron with bounds ``[l, u]``,
  ``λ·x + μ/2 + (μ/2)·ε_new`` with ``λ = u/(u − l)`` and ``μ`` the largest of
  ``−λ·l`` and ``u·(1 − λ)`` (sound for whatever λ float64 computed);
* max-pooling: the window's element with the highest lower bound passes its form through,
  plus a fresh symbol over ``[0, max(0, others' highest upper bound − its lower bound)]``
  (exact when it wins outright);
* view / flatten / reshape and ``+`` are exact on forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from modelhub_torch.progressive.context import Interval, PassContext, WeightBounds, mid_rad
from modelhub_torch.progressive.rounding import TINY32, U32, U64, dot_eps, gamma

# a convolution's weight symbols per row at most (symbols × output elements)
WEIGHT_SYMBOL_ELEMS = 1 << 21


@dataclass
class Form:
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
        slack = (self.c.abs() + r) * gamma(self.symbols + 2, U64) + TINY32
        r = torch.nextafter(r + slack, torch.full_like(r, math.inf))
        self.__dict__["_radius"] = r
        return r

    def box(self) -> Interval:
        r = self.radius()
        return Interval(self.c - r, self.c + r)



class FormContext(PassContext):
    """The interval pass's per-call state plus the count of noise symbols created so far.

    Symbols are numbered globally in creation order and every form's generators are
    indexed by that number (zeros for symbols it does not depend on), so two forms from
    different branches never mistake each other's fresh symbols for one shared symbol."""

    def __init__(self, weights: WeightBounds, n: int) -> None:
        super().__init__(weights, n, True)
        self.symbols = 0


def _pad(g: torch.Tensor, s: int) -> torch.Tensor:
    """Generators ``g`` extended with zeros to the first ``s`` symbols."""
    if g.shape[1] == s:
        return g
    extra = torch.zeros((g.shape[0], s - g.shape[1], *g.shape[2:]), dtype=g.dtype)
    return torch.cat([g, extra], dim=1)


def _append(ctx: FormContext, g: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``g`` followed by the generators ``new`` of brand-new symbols (numbered next)."""
    out = torch.cat([_pad(g, ctx.symbols), new], dim=1)
    ctx.symbols += new.shape[1]
    return out


def fresh(ctx: FormContext, c: torch.Tensor, g: torch.Tensor, rad: torch.Tensor) -> Form:
    """``c + g·ε`` plus one new symbol per element with radius ``rad`` (zeros dropped)."""
    n = c.shape[0]
    flat = rad.reshape(n, -1)
    keep = (flat > 0).any(dim=0).nonzero().flatten()
    if keep.numel() == 0:
        return Form(c, g)
    m = flat.shape[1]
    new = torch.zeros((n, keep.numel(), m), dtype=c.dtype)
    new[:, torch.arange(keep.numel()), keep] = flat[:, keep]
    return Form(c, _append(ctx, g, new.reshape(n, keep.numel(), *c.shape[1:])))


def from_box(ctx: FormContext, iv: Interval) -> Form:
    """A form over the box ``iv``: its centre plus one new symbol per element."""
    c, r = mid_rad(iv.lo, iv.hi)
    return fresh(ctx, c, torch.zeros((c.shape[0], 0, *c.shape[1:]), dtype=c.dtype), r)


# --------------------------------------------------------------------------- layers on forms


def affine_map(
    ctx: FormContext, x: Form, wname: str, bname: str | None, op: Any, n: int, bshape: tuple,
    patches: Any = None,
) -> Form:
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
        noise = op(x.g.abs().sum(1), wr) + op(x.c.abs(), wr) * (4 * U64)
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
    rad = noise * (1.0 + 4.0 * gamma(n + 4, U64)) + s * dot_eps(n) + (n + 2) * TINY32
    return fresh(ctx, c, g, torch.nextafter(rad, torch.full_like(rad, math.inf)))


def _weight_symbols_fit(w0: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether a symbol per weight stays within the generator budget for one row."""
    return w0.numel() * out[0].numel() <= WEIGHT_SYMBOL_ELEMS


def relu(ctx: FormContext, x: Form) -> Form:
    box = x.box()
    lo, hi = box.lo, box.hi
    pos, neg = lo >= 0, hi <= 0
    cross = ~pos & ~neg
    lam = torch.where(cross, hi / torch.where(cross, hi - lo, torch.ones_like(hi)), pos.to(hi.dtype))
    lam = lam.clamp(0.0, 1.0)
    mu = torch.where(cross, torch.maximum(-lam * lo, hi * (1.0 - lam)), torch.zeros_like(hi))
    mu = torch.nextafter(mu * (1.0 + 4 * U64), torch.full_like(mu, math.inf))
    c = lam * x.c + mu * 0.5
    g = lam.unsqueeze(1) * x.g
    # float64 rounding of λ·c and λ·g, outward
    err = (x.c.abs() + x.g.abs().sum(1)) * lam * (4 * gamma(x.symbols + 2, U64)) + TINY32 * cross
    return fresh(ctx, c, g, torch.where(cross, mu * 0.5 + err, torch.zeros_like(err)))


def maxpool2d(ctx: FormContext, x: Form, k: int, s: int) -> Form:
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
    err = torch.where(mu > 0, (c.abs() + mu) * (2 * U64) + TINY32, torch.zeros_like(mu))
    return fresh(ctx, c + mu * 0.5, g, torch.nextafter(mu * 0.5 + err, torch.full_like(mu, math.inf)))


def reshape(x: Form, fn: Any) -> Form | None:
    c = fn(x.c)
    if c.shape[0] != x.c.shape[0] or c.numel() != x.c.numel():
        return None
    return Form(c, x.g.reshape(x.g.shape[0], x.symbols, *c.shape[1:]))


def add(ctx: FormContext, a: Form, b: Form) -> Form:
    s = max(a.symbols, b.symbols)
    c = a.c + b.c
    g = _pad(a.g, s) + _pad(b.g, s)
    # the float32 reference's rounding of a + b, and ours of the centre and each generator
    ba, bb = a.box(), b.box()
    mag = torch.maximum(ba.lo.abs(), ba.hi.abs()) + torch.maximum(bb.lo.abs(), bb.hi.abs())
    err = mag * ((U32 + 4 * U64) * (1 + 2.0**-40)) + (c.abs() + g.abs().sum(1)) * (2 * U64) + TINY32
    return fresh(ctx, c, g, torch.nextafter(err, torch.full_like(c, math.inf)))
