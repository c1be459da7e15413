"""A network a repository can rebuild: the architecture of a committed ``nn.Module`` as
data — torch.fx's graph of module calls, function calls and method calls, each module
an allow-listed ``torch.nn`` type with its constructor arguments — never as pickled
objects or code.

``capture_architecture`` records it at commit time (what cannot be expressed is named
in ``unsupported`` instead, and the version still commits as weights);
``build_module`` rebuilds the network in any process, without the user's class: every
type, function and method name read back is checked against the same allow-lists, so
a repository can make it construct ``torch.nn`` layers and nothing else.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from modelhub_torch.errors import ModelHubError

FORMAT = 1

# torch.nn layers whose constructor arguments are attributes of the same name
ALLOWED_MODULES: dict[str, type[nn.Module]] = {
    name: getattr(nn, name) for name in (
        "Linear", "Bilinear", "Identity", "Flatten", "Unflatten",
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
        "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
        "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm",
        "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "GELU", "SiLU", "Sigmoid", "Tanh",
        "Softmax", "LogSoftmax", "Softplus", "Hardtanh", "Hardswish", "Mish", "PReLU",
        "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Embedding",
    ) if hasattr(nn, name)
}

# stable names (not __module__, which moves between torch releases) -> the function
_TORCH = ("flatten", "cat", "stack", "add", "mul", "sub", "matmul", "relu", "sigmoid", "tanh", "softmax",
          "log_softmax", "mean", "sum", "reshape", "transpose", "permute", "squeeze", "unsqueeze")
_FUNCTIONAL = ("relu", "relu6", "leaky_relu", "gelu", "silu", "elu", "sigmoid", "tanh", "softmax", "log_softmax",
               "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
               "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "dropout", "pad")
_OPERATOR = ("add", "sub", "mul", "truediv", "matmul", "getitem", "neg")
ALLOWED_FUNCTIONS: dict[str, Any] = {
    **{f"torch.{n}": getattr(torch, n) for n in _TORCH if hasattr(torch, n)},
    **{f"torch.nn.functional.{n}": getattr(F, n) for n in _FUNCTIONAL if hasattr(F, n)},
    **{f"operator.{n}": getattr(operator, n) for n in _OPERATOR},
}
ALLOWED_METHODS = frozenset({
    "view", "reshape", "flatten", "size", "relu", "sigmoid", "tanh", "softmax", "mean", "sum",
    "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "add", "mul", "matmul", "chunk",
})
_SKIP_ARGS = {"self", "device", "dtype", "factory_kwargs"}


def _function_name(fn: Any) -> str | None:
    for name, allowed in ALLOWED_FUNCTIONS.items():
        if allowed is fn:
            return name
    return None


class _Refused(Exception):
    pass


def _encode(value: Any) -> Any:
    """A node argument as JSON: other nodes by name, containers tagged, scalars as
    they are; anything else cannot be rebuilt."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise _Refused(f"an argument of type {type(value).__name__}")


def _decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"node"}:
            if value["node"] not in nodes:
                raise ModelHubError(f"the recorded architecture uses {value['node']!r} before defining it")
            return nodes[value["node"]]
        if set(value) == {"tuple"}:
            return tuple(_decode(v, nodes) for v in value["tuple"])
        if set(value) == {"list"}:
            return [_decode(v, nodes) for v in value["list"]]
        if set(value) == {"dict"}:
            return {str(k): _decode(v, nodes) for k, v in value["dict"].items()}
        if set(value) == {"slice"} and len(value["slice"]) == 3:
            return slice(*(_decode(v, nodes) for v in value["slice"]))
        raise ModelHubError(f"the recorded architecture holds an unknown value {value!r}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ModelHubError(f"the recorded architecture holds an unknown value {value!r}")


def decode_value(value: Any) -> Any:
    """A recorded constructor argument as Python (no node references)."""
    return _decode(value, {})


def _constructor_args(module: nn.Module) -> dict[str, Any]:
    cls = type(module)
    out: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in _SKIP_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and isinstance(getattr(module, "bias", None), (torch.Tensor, type(None))):
            out[name] = getattr(module, "bias", None) is not None
            continue
        if name == "elementwise_affine" and hasattr(module, "elementwise_affine"):
            out[name] = bool(module.elementwise_affine)
            continue
        if not hasattr(module, name):
            if param.default is inspect.Parameter.empty:
                raise _Refused(f"{cls.__name__}: its argument {name!r} is not an attribute")
            continue
        out[name] = _encode(getattr(module, name))
    return out


def capture_architecture(module: nn.Module) -> dict[str, Any]:
    """The rebuildable architecture of ``module``: ``{"format", "modules", "nodes"}``,
    or ``{"format", "unsupported": [...]}`` naming what is outside the allow-lists."""
    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:  # any tracing failure: the forward is not a static graph
        return {"format": FORMAT, "unsupported": [f"the forward cannot be traced ({type(exc).__name__}: {exc})"]}
    modules: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []
    unsupported: list[str] = []
    for node in gm.graph.nodes:
        try:
            entry: dict[str, Any] = {"op": node.op, "name": node.name,
                                     "args": _encode(tuple(node.args)), "kwargs": _encode(dict(node.kwargs))}
            if node.op == "call_module":
                sub = gm.get_submodule(node.target)
                kind = type(sub).__name__
                if ALLOWED_MODULES.get(kind) is not type(sub):
                    raise _Refused(f"module {node.target!r} of type {type(sub).__module__}.{kind}")
                modules[node.target] = {"type": kind, "args": _constructor_args(sub)}
                entry["target"] = node.target
            elif node.op == "call_function":
                name = _function_name(node.target)
                if name is None:
                    raise _Refused(f"function {getattr(node.target, '__qualname__', node.target)}")
                entry["target"] = name
            elif node.op == "call_method":
                if node.target not in ALLOWED_METHODS:
                    raise _Refused(f"tensor method .{node.target}()")
                entry["target"] = node.target
            elif node.op == "get_attr":
                raise _Refused(f"a parameter or buffer used directly ({node.target!r}), not through a layer")
            nodes.append(entry)
        except _Refused as exc:
            unsupported.append(str(exc.args[0]))
    if unsupported:
        return {"format": FORMAT, "unsupported": sorted(set(unsupported))}
    return {"format": FORMAT, "modules": modules, "nodes": nodes}


def build_module(arch: Any) -> fx.GraphModule:
    """The network ``arch`` describes, freshly initialised (load its weights next).
    Every name is checked against the allow-lists: nothing else is constructed,
    imported or called."""
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ModelHubError("no rebuildable architecture of a format this version knows was recorded")
    if arch.get("unsupported"):
        raise ModelHubError("this version's network cannot be rebuilt from the repository: it uses "
                            + "; ".join(map(str, arch["unsupported"][:8]))
                            + ". Load its weights into your own class (load_state_dict) instead")
    modules, specs = arch.get("modules"), arch.get("nodes")
    if not isinstance(modules, dict) or not isinstance(specs, list):
        raise ModelHubError("the recorded architecture is damaged (no modules or nodes)")
    root = nn.Module()
    for path, spec in modules.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        cls = ALLOWED_MODULES.get(kind) if isinstance(kind, str) else None
        if cls is None or not isinstance(path, str) or not all(p.isidentifier() or p.isdigit() for p in path.split(".")):
            raise ModelHubError(f"the recorded architecture names {kind!r} at {path!r}: not an allowed torch.nn layer")
        raw = spec.get("args", {})
        if not isinstance(raw, dict):
            raise ModelHubError(f"the recorded architecture's {kind} at {path!r} has damaged arguments")
        args = {str(k): _decode(v, {}) for k, v in raw.items()}
        try:
            layer = cls(**args)
        except (TypeError, ValueError) as exc:
            raise ModelHubError(f"the recorded architecture's {kind} at {path!r} cannot be built: {exc}") from None
        parent = root
        *heads, last = path.split(".")
        for h in heads:
            if not hasattr(parent, h):
                parent.add_module(h, nn.Module())
            parent = getattr(parent, h)
        parent.add_module(last, layer)
    graph = fx.Graph()
    made: dict[str, fx.Node] = {}
    for spec in specs:
        op, name = spec.get("op"), spec.get("name")
        args = _decode(spec.get("args", {"tuple": []}), made)
        kwargs = _decode(spec.get("kwargs", {"dict": {}}), made)
        if op == "placeholder":
            node = graph.placeholder(str(name))
        elif op == "output":
            node = graph.output(args[0] if args else None)
        elif op == "call_module" and spec.get("target") in modules:
            node = graph.call_module(spec["target"], args, kwargs)
        elif op == "call_function" and spec.get("target") in ALLOWED_FUNCTIONS:
            node = graph.call_function(ALLOWED_FUNCTIONS[spec["target"]], args, kwargs)
        elif op == "call_method" and spec.get("target") in ALLOWED_METHODS:
            node = graph.call_method(spec["target"], args, kwargs)
        else:
            raise ModelHubError(f"the recorded architecture has a node {op!r} {spec.get('target')!r} "
                                "that is not allowed")
        made[str(name)] = node
    return fx.GraphModule(root, graph)


__all__ = ["ALLOWED_FUNCTIONS", "ALLOWED_METHODS", "ALLOWED_MODULES", "build_module", "capture_architecture",
           "decode_value"]
