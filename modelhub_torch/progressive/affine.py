"""The affine pass: the third, tighter rule for inputs the interval rules leave open.

Interval arithmetic forgets that two activations share a cause: after two layers every
uncertainty has been counted once per path. Affine forms (``forms.py``) keep it: a
linear map with the weights' centres carries the shared parts exactly and a logit
difference cancels them. Every layer the forms do not model is bounded by the interval
pass itself on the forms' boxes (its result becomes fresh symbols), so the forms are
sound wherever the intervals are. Inputs are decided when every needed logit difference
has a positive lower bound.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from modelhub_torch.progressive import forms
from modelhub_torch.progressive.context import Interval, WeightBounds
from modelhub_torch.progressive.forms import Form, FormContext
from modelhub_torch.progressive.intervals import IntervalNet
from modelhub_torch.progressive.rounding import LIMIT, TINY32, U64, gamma
from modelhub_torch.progressive.topk import needed_pairs

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


class _TooCostly(Exception):
    """A form outgrew ``MAX_ROW_ELEMS`` per row: the pass gives up (rows stay undecided)."""



# --------------------------------------------------------------------------- network


class AffineNet:
    """Affine-form evaluation over an :class:`IntervalNet`'s traced graph."""

    def __init__(self, net: IntervalNet) -> None:
        self.net = net
        self.module = net.module

    def _module_of(self, node: torch.fx.Node) -> nn.Module:
        path = str(node.target)
        return self.module if path == "" else self.module.get_submodule(path)

    def _exact(self, ctx: FormContext, node: torch.fx.Node, args: tuple, kwargs: dict) -> Form | None:
        """The affine handler of one node, or None to bound it by the interval pass."""
        form_args = [a for a in args if isinstance(a, Form)]
        if node.op == "call_module":
            mod = self._module_of(node)
            prefix = f"{node.target}." if node.target else ""
            t = type(mod)
            x = args[0] if args and isinstance(args[0], Form) else None
            if x is None:
                return None
            if t is nn.Linear:
                b = prefix + "bias" if mod.bias is not None else None
                return forms.affine_map(ctx, x, prefix + "weight", b, lambda i, w: F.linear(i, w), mod.in_features,
                                   (1, -1))
            if t is nn.Conv2d and mod.padding_mode == "zeros":
                n = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
                b = prefix + "bias" if mod.bias is not None else None

                def conv(i: torch.Tensor, w: torch.Tensor, mod: nn.Conv2d = mod) -> torch.Tensor:
                    return F.conv2d(i, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)

                def patches(i: torch.Tensor, mod: nn.Conv2d = mod) -> torch.Tensor:
                    return F.unfold(i, mod.kernel_size, mod.dilation, mod.padding, mod.stride)

                return forms.affine_map(ctx, x, prefix + "weight", b, conv, n, (1, -1, 1, 1),
                                   patches if mod.groups == 1 and not isinstance(mod.padding, str) else None)
            if t is nn.ReLU:
                return forms.relu(ctx, x)
            if t is nn.MaxPool2d:
                k, s = _pool_args(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
                return forms.maxpool2d(ctx, x, k, s) if k and x.c.dim() == 4 else None
            if t is nn.Flatten:
                return forms.reshape(x, mod)
            if t is nn.Identity or (t in (nn.Dropout, nn.Dropout1d, nn.Dropout2d) and not mod.training):
                return x
            return None
        if node.op == "call_function":
            fn = node.target
            if fn in (F.relu, torch.relu) and form_args and not kwargs.get("inplace", False):
                return forms.relu(ctx, args[0])
            if fn is F.max_pool2d and args and isinstance(args[0], Form) and args[0].c.dim() == 4:
                k = args[1] if len(args) > 1 else kwargs.get("kernel_size")
                stride = args[2] if len(args) > 2 else kwargs.get("stride")
                k, s = _pool_args(k, stride, kwargs.get("padding", 0), kwargs.get("dilation", 1),
                                  kwargs.get("ceil_mode", False))
                return forms.maxpool2d(ctx, args[0], k, s) if k and len(args) <= 3 else None
            if fn is torch.flatten and args and isinstance(args[0], Form):
                return forms.reshape(args[0], lambda t: torch.flatten(t, *args[1:], **kwargs))
            if fn in (operator.add, torch.add) and len(form_args) == 2 and len(args) == 2 and not kwargs:
                return forms.add(ctx, args[0], args[1])
            return None
        if node.op == "call_method" and args and isinstance(args[0], Form):
            name = str(node.target)
            if name in ("view", "reshape", "flatten"):
                rest = args[1:]
                return forms.reshape(args[0], lambda t: getattr(t, name)(*rest, **kwargs))
            if name == "relu":
                return forms.relu(ctx, args[0])
        return None

    def logits(self, x: torch.Tensor, weights: WeightBounds) -> tuple[Form, torch.Tensor]:
        """The output form and the rows that must not be decided (overflow risk)."""
        form, bad, _ = self._evaluate(x, weights, None)
        return form, bad

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, weights: WeightBounds, limit: int | None) -> tuple[Form, torch.Tensor, int]:
        """:meth:`logits` and the generator elements per row of the widest form; raises
        ``_TooCostly`` when a form needs more than ``limit`` of them."""
        ctx = FormContext(weights, int(x.shape[0]))
        env: dict[torch.fx.Node, Any] = {}
        result = None
        peak = 0
        for node, handler in self.net.plan.steps:
            if node.op == "placeholder":
                xd = x.detach().to(torch.float64)
                env[node] = Form(xd, torch.zeros((xd.shape[0], 0, *xd.shape[1:]), dtype=xd.dtype))
                continue
            if node.op == "output":
                result = env[node.args[0]]
                continue
            args = tuple(torch.fx.node.map_arg(node.args, lambda n: env[n]))
            kwargs = dict(torch.fx.node.map_arg(node.kwargs, lambda n: env[n]))
            form = self._exact(ctx, node, args, kwargs)
            if form is None:  # bound by the interval pass on the boxes
                def boxed(v: Any) -> Any:
                    return v.box() if isinstance(v, Form) else v

                iv_args = tuple(torch.fx.node.map_aggregate(args, boxed))
                iv_kwargs = dict(torch.fx.node.map_aggregate(kwargs, boxed))
                out = handler(ctx, iv_args, iv_kwargs)  # type: ignore[misc]
                form = forms.from_box(ctx, out) if isinstance(out, Interval) else out
            if isinstance(form, Form):
                peak = max(peak, form.g[:1].numel())
                if limit is not None and peak > limit:
                    raise _TooCostly  # stop before the next layer makes it worse
                box = form.box()
                ctx.flag(box.lo)
                ctx.flag(box.hi)
            env[node] = form
        assert isinstance(result, Form)
        return result, ctx.bad, peak

    def decide(self, x: torch.Tensor, weights: WeightBounds, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows whose ordered top-k the forms force (ranked by the forms' centres: each of
        the first k above the next, the k-th above every class outside), and that top-k."""
        n = x.shape[0]
        decided = torch.zeros(n, dtype=torch.bool)
        topk = torch.full((n, k), -1, dtype=torch.long)
        start, step = 0, 1  # the first row measures the widest generator array
        while start < n:
            rows = slice(start, min(n, start + step))
            try:
                form, bad, peak = self._evaluate(x[rows], weights, MAX_ROW_ELEMS)
            except _TooCostly:
                break  # too costly for this network: the remaining rows stay undecided
            order = torch.argsort(form.c, dim=1, descending=True, stable=True)
            ok = _pairs_positive(form, order, k) & ~bad
            decided[rows] = ok
            topk[rows] = torch.where(ok.unsqueeze(1), order[:, :k], torch.full_like(order[:, :k], -1))
            per_row = max(1, peak)
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


def _pairs_positive(form: Form, order: torch.Tensor, k: int) -> torch.Tensor:
    """Every needed difference z_a − z_b (a ranked above b) has a positive lower bound."""
    rows = order.shape[0]
    a_idx, b_idx = needed_pairs(order, k)
    ca, cb = form.c.gather(1, a_idx), form.c.gather(1, b_idx)
    s = form.symbols
    ga = form.g.gather(2, a_idx.unsqueeze(1).expand(rows, s, -1))
    gb = form.g.gather(2, b_idx.unsqueeze(1).expand(rows, s, -1))
    spread = (ga - gb).abs().sum(1)
    size = ca.abs() + cb.abs() + ga.abs().sum(1) + gb.abs().sum(1)
    low = (ca - cb) - spread - size * (4 * gamma(s + 4, U64)) - 2 * TINY32
    return (low > 0).all(dim=1) & (size < LIMIT).all(dim=1)


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
