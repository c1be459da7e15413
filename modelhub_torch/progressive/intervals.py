"""Sound interval bounds for progressive inference (docs/PROGRESSIVE.md).

A float32 weight known only to its top byte planes is an interval (``weights.py``).
:class:`IntervalNet` pushes such intervals through an fx-traced network (``plan.py``) in
float64 and widens every step by rigorous error terms (``rounding.py``), so that the
value the ordinary float32 forward pass computes (with the true weights) provably lies
inside the bounds. ``decision.py`` answers an input only where the bounds force the
top-k, which makes a progressive answer identical to ``module(x).topk(k)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.fx
from torch import nn

from modelhub_torch.progressive.context import (
    Interval,
    PassContext,
    UnsupportedLayerError,
    WeightBounds,
)
from modelhub_torch.progressive.plan import build_plan, trace
from modelhub_torch.progressive.topk import decide_topk
from modelhub_torch.progressive.weights import known_mask, weight_bounds

__all__ = [
    "Bounds",
    "IntervalNet",
    "LinearHead",
    "UnsupportedLayerError",
    "decide_topk",  # re-exported: callers imported these from here before they moved
    "known_mask",
    "weight_bounds",
]


class LinearHead(NamedTuple):
    """The network's last layer when it is an ``nn.Linear`` (for the pairwise rule)."""

    input: torch.fx.Node  # the node whose value the Linear reads
    weight: str
    bias: str | None
    fan_in: int


@dataclass(frozen=True)
class Bounds:
    """What one :meth:`IntervalNet.bounds` call found: the output bounds, and what the
    later decision rules need from the same pass (so nothing is left on the network for
    the next call). Unpacks as ``lo, hi``."""

    lo: torch.Tensor  # [N, ...] float64; (-inf, inf) on undecidable rows
    hi: torch.Tensor
    undecidable: torch.Tensor  # [N] bool: a value might be non-finite or overflow float32
    weights: WeightBounds  # the checked float64 weight bounds the pass used
    head_input: Interval | None  # the final Linear's input, when the network ends in one
    rounding: bool  # False only in the deliberately unsound test mode

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.lo, self.hi))


class IntervalNet:
    """Bounds of a float32 network's outputs when its weights are intervals.

    The module is traced with ``torch.fx.symbolic_trace``; every node must be one of
    :data:`~modelhub_torch.progressive.plan.SUPPORTED`, else :class:`UnsupportedLayerError`
    is raised here, before any weight is read. ``_rounding=False`` drops every rounding
    widening — a deliberately unsound mode that exists only so the tests can show they
    catch a wrong bound.
    """

    def __init__(self, module: nn.Module, *, _rounding: bool = True) -> None:
        self.module = module
        self._rounding = _rounding
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and t.dtype != torch.float32:
                raise UnsupportedLayerError(f"{name}: dtype {t.dtype}; only float32 models are supported")
        graph = trace(module)
        self.plan = build_plan(module, graph)  # the affine pass reuses its handlers
        self.param_names: list[str] = self.plan.param_names
        self.head = _linear_head(module, graph)

    def checked_weights(self, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> WeightBounds:
        """``weights`` as float64 ``(lo, hi)`` for every name in :attr:`param_names`,
        after checking each is present, of the weight's shape, and ``lo <= hi``."""
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
    def bounds(self, x: torch.Tensor, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Bounds:
        """Float64 ``(lo, hi)`` containing ``module(x)`` as float32 computes it, with the
        context the decision rules need (:class:`Bounds`).

        ``x`` is the exact float32 batch; ``weights`` maps every name in
        :attr:`param_names` to float64 ``(lo, hi)`` of its shape. Rows where a value
        could be non-finite or overflow float32 come back as ``(-inf, inf)``.
        """
        if x.dtype != torch.float32:
            raise TypeError(f"x must be float32 (the reference input), got {x.dtype}")
        if x.dim() == 0:
            raise ValueError("x must be a batch (dimension 0 is the batch)")
        self.plan.check_eval(self.module)
        ctx = PassContext(self.checked_weights(weights), int(x.shape[0]), self._rounding)
        env: dict[torch.fx.Node, Any] = {}
        result: Interval | None = None
        for node, handler in self.plan.steps:
            if node.op == "placeholder":
                xd = x.detach().to(torch.float64)
                env[node] = ctx.out(Interval(xd, xd))
            elif node.op == "output":
                result = env[node.args[0]]
            else:
                args = torch.fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
                env[node] = handler(ctx, tuple(args), dict(kwargs))  # type: ignore[misc]
        assert result is not None
        lo, hi = result.lo, result.hi
        if bool(ctx.bad.any()):
            shape = (-1,) + (1,) * (lo.dim() - 1)
            bad = ctx.bad.reshape(shape)
            lo = torch.where(bad, -math.inf, lo)
            hi = torch.where(bad, math.inf, hi)
        head_input = env.get(self.head.input) if self.head is not None else None
        return Bounds(lo, hi, ctx.bad, ctx.weights, head_input, self._rounding)


def _linear_head(module: nn.Module, graph: torch.fx.Graph) -> LinearHead | None:
    """The output's producer when it is an ``nn.Linear`` whose input is a node."""
    out = next(n for n in graph.nodes if n.op == "output")
    head = out.args[0]
    if not isinstance(head, torch.fx.Node) or head.op != "call_module":
        return None
    mod = module.get_submodule(str(head.target)) if head.target else module
    if type(mod) is not nn.Linear or not isinstance(head.args[0], torch.fx.Node):
        return None
    prefix = f"{head.target}." if head.target else ""
    return LinearHead(head.args[0], prefix + "weight", (prefix + "bias" if mod.bias is not None else None), mod.in_features)
