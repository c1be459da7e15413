"""From a module to a plan: one interval handler per fx node, or a refusal that names
the node and lists what is supported (docs/PROGRESSIVE.md §2). No weight is read here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from modelhub_torch.progressive import activations, layers
from modelhub_torch.progressive.context import Interval, Layer, PassContext, UnsupportedLayerError

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


Handler = Callable[[PassContext, tuple[Any, ...], dict[str, Any]], Any]

Step = tuple[torch.fx.Node, Handler | None]  # a node and its handler (None: input, output)


@dataclass
class Plan:
    """What evaluating a traced module takes: the steps in graph order, the weights
    they read, and the layers whose mode must still be eval when bounds are asked for."""

    steps: list[Step] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)
    needs_eval: list[tuple[str, nn.Module]] = field(default_factory=list)
    fn_dropout: bool = False  # F.dropout(training=False) seen: the module must stay in eval

    def check_eval(self, module: nn.Module) -> None:
        """Refuse to bound a module that was put back into training mode since."""
        for where, mod in self.needs_eval:
            if mod.training:
                raise UnsupportedLayerError(f"{where} is in training mode (call .eval())")
        if self.fn_dropout and any(m.training for m in module.modules()):
            raise UnsupportedLayerError("F.dropout in a module in training mode (call .eval())")


def trace(module: nn.Module) -> torch.fx.Graph:
    """The module's fx graph; a single supported layer is its own one-node graph."""
    if type(module) in _LEAF_TYPES:
        graph = torch.fx.Graph()
        x = graph.placeholder("x")
        graph.output(graph.call_module("", (x,)))
        return graph
    try:
        return torch.fx.symbolic_trace(module).graph
    except Exception as e:  # data-dependent control flow, unsupported Python
        raise UnsupportedLayerError(f"cannot trace {type(module).__name__} with torch.fx: {e}") from e


def build_plan(module: nn.Module, graph: torch.fx.Graph) -> Plan:
    """A handler for every node of ``graph``, or :class:`UnsupportedLayerError`."""
    return _PlanBuilder(module).build(graph)


class _PlanBuilder:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.plan = Plan()

    def build(self, graph: torch.fx.Graph) -> Plan:
        kinds: dict[torch.fx.Node, str] = {}  # "iv" (interval tensor) or "meta" (sizes)
        placeholders = 0
        for node in graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise UnsupportedLayerError(f"{node.name}: only one input tensor is supported")
                kinds[node] = "iv"
                self.plan.steps.append((node, None))
            elif node.op == "output":
                res = node.args[0]
                if not isinstance(res, torch.fx.Node) or kinds.get(res) != "iv":
                    raise UnsupportedLayerError("the model must return one tensor")
                self.plan.steps.append((node, None))
            else:
                self._check_inplace(node)
                handler, kind = self._build(node, kinds)
                kinds[node] = kind
                self.plan.steps.append((node, handler))
        if placeholders != 1:
            raise UnsupportedLayerError("the model must take exactly one input tensor")
        return self.plan

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
            if n not in self.plan.param_names:
                self.plan.param_names.append(n)

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
        run: Layer
        if t is nn.Linear:
            run, names = layers.linear(mod, prefix)  # type: ignore[arg-type]
            self._need(names)
        elif t in (nn.Conv1d, nn.Conv2d):
            run, names = layers.conv(mod, prefix, where)  # type: ignore[arg-type]
            self._need(names)
        elif t in (nn.BatchNorm1d, nn.BatchNorm2d):
            run, names = layers.batchnorm(mod, prefix, where)  # type: ignore[arg-type]
            self.plan.needs_eval.append((where, mod))
            self._need(names)
        elif t is nn.ReLU:
            run = activations.relu
        elif t is nn.LeakyReLU:
            run = activations.leaky_relu(mod.negative_slope)  # type: ignore[arg-type]
        elif t is nn.ELU:
            run = activations.elu(float(mod.alpha))  # type: ignore[arg-type]
        elif t is nn.GELU:
            run = activations.gelu(mod.approximate)  # type: ignore[arg-type]
        elif t is nn.SiLU:
            run = activations.silu()
        elif t is nn.Sigmoid:
            run = activations.transcendental(torch.sigmoid, None, False)
        elif t is nn.Tanh:
            run = activations.transcendental(torch.tanh, None, False)
        elif t in _MONO_MODULES:
            if mod.return_indices:  # type: ignore[union-attr]
                raise self._refuse(where, "return_indices=True")
            run = layers.monotone(mod)
        elif t in (nn.AvgPool1d, nn.AvgPool2d):
            k = mod.kernel_size  # type: ignore[union-attr]
            n = math.prod(k) if isinstance(k, Sequence) else int(k)  # type: ignore[arg-type]
            run = layers.avg_pool(mod, lambda _t, n=n: n)
        elif t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
            spatial = 1 if t is nn.AdaptiveAvgPool1d else 2
            run = layers.avg_pool(mod, layers.adaptive_window(mod.output_size, spatial))
        elif t is nn.Flatten:
            run = layers.monotone(mod)
        elif t in _DROPOUTS:
            if mod.training:
                raise self._refuse(where, "dropout in training mode (call .eval())")
            self.plan.needs_eval.append((where, mod))
            run = layers.monotone(lambda v: v)
        elif t is nn.Identity:
            run = layers.monotone(lambda v: v)
        else:
            raise self._refuse(where)

        def handler(ctx: PassContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Interval:
            return layers.same_batch(ctx, run(ctx, args[0]), where)

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
            return (lambda ctx, a, kw: activations.relu(ctx, a[0])), "iv"
        if name in ("sigmoid", "tanh"):
            run = activations.transcendental(getattr(torch, name), None, False)
            return (lambda ctx, a, kw: run(ctx, a[0])), "iv"
        if name == "contiguous":
            return (lambda ctx, a, kw: a[0]), "iv"
        if name in ("flatten", "view", "reshape"):

            def shape_op(ctx: PassContext, a: tuple[Any, ...], kw: dict[str, Any]) -> Interval:
                iv = a[0]
                res = Interval(getattr(iv.lo, name)(*a[1:], **kw), getattr(iv.hi, name)(*a[1:], **kw))
                return layers.same_batch(ctx, res, where)

            return shape_op, "iv"
        if name == "add":
            if node.kwargs.get("alpha", 1) != 1 or len(node.args) > 2:
                raise self._refuse(where, "alpha != 1")
            return (lambda ctx, a, kw: layers.add(ctx, a[0], a[1])), "iv"
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
            return (lambda ctx, a, kw: layers.add(ctx, a[0], a[1] if len(a) > 1 else kw["other"])), "iv"
        if fn in _CATS:
            dim = _arg(node, 1, "dim", 0)
            if not isinstance(dim, int) or dim == 0:
                raise self._refuse(where, "concatenation along the batch dimension")
            return (lambda ctx, a, kw: layers.cat(ctx, a[0], dim)), "iv"
        if any(k == "iv" for k in in_kinds[1:]):
            raise self._refuse(where, "tensor-valued arguments")
        run: Layer | None = None
        if fn in (F.relu, torch.relu):
            run = activations.relu
        elif fn is F.leaky_relu:
            run = activations.leaky_relu(float(_arg(node, 1, "negative_slope", 0.01)))
        elif fn is F.elu:
            run = activations.elu(float(_arg(node, 1, "alpha", 1.0)))
        elif fn is F.gelu:
            run = activations.gelu(str(_arg(node, 1, "approximate", "none")))
        elif fn is F.silu:
            run = activations.silu()
        elif fn in (torch.sigmoid, F.sigmoid):
            run = activations.transcendental(torch.sigmoid, None, False)
        elif fn in (torch.tanh, F.tanh):
            run = activations.transcendental(torch.tanh, None, False)
        elif fn is F.dropout:
            if _arg(node, 2, "training", True) is not False:
                raise self._refuse(where, "dropout in training mode")
            self.plan.fn_dropout = True
            run = layers.monotone(lambda v: v)
        elif fn in (F.max_pool1d, F.max_pool2d):
            if _arg(node, 6, "return_indices", False):
                raise self._refuse(where, "return_indices=True")
        elif fn not in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.flatten):
            raise self._refuse(where)
        if run is not None:
            r = run
            return (lambda ctx, a, kw: r(ctx, a[0])), "iv"

        def call(ctx: PassContext, a: tuple[Any, ...], kw: dict[str, Any]) -> Interval:
            pooled = lambda t: fn(t, *a[1:], **kw)  # noqa: E731
            if fn in (F.avg_pool1d, F.avg_pool2d):
                k = a[1] if len(a) > 1 else kw["kernel_size"]
                n = math.prod(k) if isinstance(k, Sequence) else int(k) ** (1 if fn is F.avg_pool1d else 2)
                return layers.same_batch(ctx, layers.avg_pool(pooled, lambda _t: n)(ctx, a[0]), where)
            if fn in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
                out = a[1] if len(a) > 1 else kw["output_size"]
                spatial = 1 if fn is F.adaptive_avg_pool1d else 2
                return layers.same_batch(ctx, layers.avg_pool(pooled, layers.adaptive_window(out, spatial))(ctx, a[0]), where)
            return layers.same_batch(ctx, layers.monotone(pooled)(ctx, a[0]), where)

        return call, "iv"


_LEAF_TYPES = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU,
    nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Identity,
)
_CATS = (torch.cat, torch.concat, torch.concatenate)
_META_OPS = (operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv)
