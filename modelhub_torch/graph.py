"""Network-structure capture, so queries can ask about layers and their neighbours.

The DQL of ModelHub selects models by structure (``m["conv[1,3,5]"].next has
POOL("MAX")``); a checkpoint only holds tensors, so the structure is captured once
from the live ``nn.Module`` and stored as plain JSON next to the version. The graph
comes from ``torch.fx`` when the forward can be traced symbolically; otherwise from
forward hooks on an example input, and as a last resort from module registration
order. ``method`` records which one was used, since the fallbacks only approximate
the data flow.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from typing import Any

import torch
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from modelhub_torch.errors import ModelHubError
from modelhub_torch.graph_view import describe_graph, diff_graphs, graph_digest

__all__ = ["capture_graph", "describe_graph", "diff_graphs", "display_names", "graph_digest"]

_DROP = object()  # marks a value that has no JSON form


def _classes(*names: str) -> tuple[type, ...]:
    """The ``torch.nn`` classes of those names that this torch version has."""
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


# First match wins; subclasses (Lazy*, user subclasses) match through isinstance.
_MODULE_CATEGORIES: list[tuple[tuple[type, ...], str, str | None]] = [
    (
        _classes(
            "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"
        ),
        "conv",
        None,
    ),
    (
        _classes(
            "MaxPool1d",
            "MaxPool2d",
            "MaxPool3d",
            "AdaptiveMaxPool1d",
            "AdaptiveMaxPool2d",
            "AdaptiveMaxPool3d",
            "FractionalMaxPool2d",
            "FractionalMaxPool3d",
        ),
        "pool",
        "max",
    ),
    (
        _classes(
            "AvgPool1d",
            "AvgPool2d",
            "AvgPool3d",
            "AdaptiveAvgPool1d",
            "AdaptiveAvgPool2d",
            "AdaptiveAvgPool3d",
        ),
        "pool",
        "avg",
    ),
    (_classes("LPPool1d", "LPPool2d", "LPPool3d"), "pool", "lp"),
    (_classes("ReLU", "ReLU6"), "relu", None),
    (_classes("LeakyReLU"), "leakyrelu", None),
    (_classes("ELU"), "elu", None),
    (_classes("GELU"), "gelu", None),
    (_classes("SiLU"), "silu", None),
    (_classes("Sigmoid"), "sigmoid", None),
    (_classes("Tanh"), "tanh", None),
    (_classes("Softmax", "LogSoftmax", "Softmax2d"), "softmax", None),
    (_classes("Linear", "Bilinear"), "linear", None),
    (_classes("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"), "bn", None),
    (_classes("LayerNorm"), "ln", None),
    (_classes("GroupNorm"), "gn", None),
    (_classes("LocalResponseNorm"), "lrn", None),
    (
        _classes(
            "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"
        ),
        "dropout",
        None,
    ),
    (_classes("Flatten"), "flatten", None),
    (_classes("Embedding", "EmbeddingBag"), "embedding", None),
    (_classes("MultiheadAttention"), "attention", None),
]
_ADAPTIVE = _classes(
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
)
# Containers are never called as layers, though fx counts torch.nn classes as leaves.
_CONTAINERS = _classes("Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict")

# Module attributes worth querying, per category (read when the module has them).
_MODULE_ATTRS: dict[str, tuple[str, ...]] = {
    "conv": (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
    ),
    "linear": ("in_features", "in1_features", "in2_features", "out_features"),
    "pool": ("kernel_size", "stride", "padding", "output_size", "norm_type"),
    "dropout": ("p",),
    "bn": ("num_features", "eps"),
    "ln": ("normalized_shape", "eps"),
    "gn": ("num_groups", "num_channels", "eps"),
    "lrn": ("size",),
    "leakyrelu": ("negative_slope",),
    "elu": ("alpha",),
    "gelu": ("approximate",),
    "softmax": ("dim",),
    "flatten": ("start_dim", "end_dim"),
    "embedding": ("num_embeddings", "embedding_dim"),
    "attention": ("embed_dim", "num_heads"),
}

# Function and method names (leading/trailing underscores stripped) to categories.
_FUNCTION_CATEGORIES: dict[str, str] = {
    **dict.fromkeys(("relu", "relu6"), "relu"),
    "leaky_relu": "leakyrelu",
    "elu": "elu",
    "gelu": "gelu",
    "silu": "silu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    **dict.fromkeys(("softmax", "log_softmax"), "softmax"),
    **dict.fromkeys(("add", "iadd", "radd"), "add"),
    **dict.fromkeys(("mul", "imul", "rmul"), "mul"),
    **dict.fromkeys(("cat", "concat", "concatenate"), "cat"),
    "flatten": "flatten",
    **dict.fromkeys(("view", "reshape"), "reshape"),
    **dict.fromkeys(
        (
            "dropout",
            "dropout1d",
            "dropout2d",
            "dropout3d",
            "alpha_dropout",
            "feature_alpha_dropout",
        ),
        "dropout",
    ),
    **dict.fromkeys(("linear", "bilinear"), "linear"),
    **dict.fromkeys(
        ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
        "conv",
    ),
    "layer_norm": "ln",
    "batch_norm": "bn",
    "group_norm": "gn",
    "local_response_norm": "lrn",
    "embedding": "embedding",
    **dict.fromkeys(("scaled_dot_product_attention", "multi_head_attention_forward"), "attention"),
}
_POOL_FUNCTION = re.compile(r"(adaptive_)?(max|avg|lp)_pool\dd(_with_indices)?")
# Call arguments that describe the run (mode, memory), not the architecture.
_RUN_ARGS = frozenset({"training", "inplace"})
# Per-dimension attributes written as one int; expanded so Conv2d(k=3) == Conv2d(k=(3, 3)).
_PER_DIM = ("kernel_size", "stride", "padding", "dilation", "output_size")


# ------------------------------------------------------------------ values
def _jsonable(value: Any) -> Any:
    """``value`` as JSON scalars/lists, or ``_DROP`` (tensors, dtypes, NaN, nodes)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROP
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else items
    return _DROP


def _spatial_dims(type_name: str) -> int | None:
    """1, 2 or 3 from names like ``Conv2d`` or ``max_pool3d``; None when absent."""
    m = re.search(r"(\d)d", type_name)
    return int(m.group(1)) if m else None


def _clean_attrs(attrs: dict[str, Any], type_name: str, category: str) -> dict[str, Any]:
    """JSON-only attrs without None, per-dimension ints expanded for conv and pool."""
    dims = _spatial_dims(type_name) if category in ("conv", "pool") else None
    out: dict[str, Any] = {}
    for key, raw in attrs.items():
        value = _jsonable(raw)
        if value is None or value is _DROP:
            continue
        if dims and key in _PER_DIM and isinstance(value, int) and not isinstance(value, bool):
            value = [value] * dims
        out[key] = value
    return out


def _node(
    name: str,
    op: str,
    type_: str,
    category: str,
    kind: str | None = None,
    attrs: dict[str, Any] | None = None,
    params: int = 0,
) -> dict[str, Any]:
    """One node of the schema."""
    return {
        "name": name,
        "op": op,
        "type": type_,
        "category": category,
        "kind": kind,
        "attrs": attrs or {},
        "params": params,
    }


# ------------------------------------------------------------------ modules
def _module_node(name: str, module: nn.Module) -> dict[str, Any]:
    """A layer node; params count the whole leaf, since its children are no nodes."""
    category, kind = "other", None
    for classes, cat, k in _MODULE_CATEGORIES:
        if isinstance(module, classes):
            category, kind = cat, k
            break
    type_name = type(module).__name__
    attrs = {a: getattr(module, a) for a in _MODULE_ATTRS.get(category, ()) if hasattr(module, a)}
    if category in ("conv", "linear"):
        attrs["bias"] = getattr(module, "bias", None) is not None
    if isinstance(module, _ADAPTIVE):
        attrs["adaptive"] = True
    params = sum(p.numel() for p in module.parameters() if not nn.parameter.is_lazy(p))
    return _node(
        name, "module", type_name, category, kind, _clean_attrs(attrs, type_name, category), params
    )


def _is_leaf(module: nn.Module, tracer: fx.Tracer) -> bool:
    """A layer: what fx's default tracer does not trace into, or a module without children."""
    if isinstance(module, _CONTAINERS):
        return False
    return next(module.children(), None) is None or tracer.is_leaf_module(module, "")


def _leaf_modules(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules in registration order, each once, never descending into a leaf."""
    if next(root.children(), None) is None:
        return [(type(root).__name__, root)]
    tracer = fx.Tracer()
    seen: set[int] = set()
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if _is_leaf(child, tracer):
                out.append((prefix + name, child))
            else:
                walk(child, f"{prefix}{name}.")

    walk(root, "")
    return out


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or fx-style ``base_1``, ``base_2``... when a layer already has it."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _call_names(names: list[str]) -> list[str]:
    """Layer names per call: a module called again gets ``#2``, ``#3``..."""
    counts: dict[str, int] = {}
    out = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        out.append(name if counts[name] == 1 else f"{name}#{counts[name]}")
    return out


# ------------------------------------------------------------------ fx
def _arg_names(node: fx.Node) -> list[str]:
    """Parameter names of a call's positional args; empty where the schema is ambiguous."""
    fn = getattr(torch, str(node.target), None) if node.op == "call_method" else node.target
    if fn is None:
        return []
    try:
        bound = normalize_function(fn, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    except Exception:  # several matching schemas, *args signatures, no schema at all
        return []
    return list(bound.kwargs)[: len(node.args)] if bound is not None else []


def _call_attrs(node: fx.Node) -> dict[str, Any]:
    """Constant arguments of a function or method call, by parameter name where known."""
    attrs: dict[str, Any] = {}
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1:]
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = tuple(shape[0])
        attrs["shape"] = [s if isinstance(s, int) else None for s in shape]
    else:
        names = _arg_names(node)
        for i, arg in enumerate(node.args):
            attrs[names[i] if i < len(names) else f"arg{i}"] = arg
    attrs.update(node.kwargs)
    return {k: v for k, v in attrs.items() if not k.startswith("_") and k not in _RUN_ARGS}


def _call_node(name: str, node: fx.Node) -> dict[str, Any]:
    """A node for a function or method call, classified by its name."""
    if node.op == "call_method":
        type_name = str(node.target)
    else:
        type_name = getattr(node.target, "__name__", None) or str(node.target)
    base = type_name.strip("_")
    category, kind, attrs = _FUNCTION_CATEGORIES.get(base, "other"), None, _call_attrs(node)
    pool = _POOL_FUNCTION.fullmatch(base)
    if pool:
        category, kind = "pool", pool.group(2)
        if pool.group(1):
            attrs["adaptive"] = True
    op = "method" if node.op == "call_method" else "function"
    return _node(name, op, type_name, category, kind, _clean_attrs(attrs, base, category))


def display_names(nodes: list[tuple[str, str, str]]) -> list[str]:
    """The names queries use for traced nodes given as ``(op, fx name, target)``:
    layers keep their qualified names (``features.0``; a second call ``drop#2``),
    other nodes their fx names, moved aside (``x`` -> ``x_1``) where a layer has it.
    The rebuildable architecture (``architecture.py``) names nodes the same way."""
    calls = [i for i, (op, _, _) in enumerate(nodes) if op == "call_module"]
    names: dict[int, str] = dict(zip(calls, _call_names([nodes[i][2] for i in calls])))
    preferred = {i: "output" if op == "output" else name for i, (op, name, _) in enumerate(nodes) if i not in names}
    claimed = set(names.values())
    taken = claimed | set(preferred.values())
    for i, base in preferred.items():
        names[i] = _unique(base, taken) if base in claimed else base
        claimed.add(names[i])
    return [names[i] for i in range(len(nodes))]


def _fx_graph(module: nn.Module) -> dict[str, Any]:
    """The traced data flow; get_attr nodes are left out, with their edges."""
    graph = fx.Tracer().trace(module)
    kept = [n for n in graph.nodes if n.op != "get_attr"]
    names: dict[fx.Node, str] = dict(zip(kept, display_names([(n.op, n.name, str(n.target)) for n in kept])))
    nodes: list[dict[str, Any]] = []
    for n in kept:
        name = names[n]
        if n.op == "call_module":
            nodes.append(_module_node(name, module.get_submodule(str(n.target))))
        elif n.op == "placeholder":
            nodes.append(_node(name, "input", "input", "input"))
        elif n.op == "output":
            nodes.append(_node(name, "output", "output", "output"))
        else:
            nodes.append(_call_node(name, n))
    edges = [[names[src], names[n]] for n in kept for src in n.all_input_nodes if src in names]
    return {"method": "fx", "nodes": nodes, "edges": edges}


# ------------------------------------------------------------------ fallbacks
def _to_device(value: Any, device: torch.device) -> Any:
    """Example input moved to the module's device (Lightning keeps it on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _hooked_calls(module: nn.Module, example_input: Any) -> list[tuple[str, nn.Module]]:
    """Leaf modules in the order one eval-mode forward calls them; module left as found."""
    calls: list[tuple[str, nn.Module]] = []

    def recorder(name: str) -> Any:
        return lambda mod, args, out: calls.append((name, mod))

    handles = [m.register_forward_hook(recorder(name)) for name, m in _leaf_modules(module)]
    flags = [(m, m.training) for m in module.modules()]
    first = next(module.parameters(), None)
    if first is not None:
        example_input = _to_device(example_input, first.device)
    try:
        module.eval()
        with torch.no_grad():
            if isinstance(example_input, dict):
                module(**example_input)
            elif isinstance(example_input, (list, tuple)):
                module(*example_input)
            else:
                module(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in flags:
            m.training = flag
    return calls


def _chain(method: str, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
    """input -> layers in order -> output: call order standing in for data flow."""
    names = _call_names([name for name, _ in layers])
    taken = set(names)
    first, last = _unique("input", taken), _unique("output", taken)
    nodes = [_node(first, "input", "input", "input")]
    nodes += [_module_node(name, m) for name, (_, m) in zip(names, layers)]
    nodes.append(_node(last, "output", "output", "output"))
    order = [n["name"] for n in nodes]
    return {"method": method, "nodes": nodes, "edges": [list(e) for e in itertools.pairwise(order)]}


# ------------------------------------------------------------------ public
def capture_graph(module: nn.Module, example_input: Any = None) -> dict[str, Any]:
    """The network's layer graph as JSON-ready data (see module docstring for ``method``).

    ``"fx"``: ``torch.fx`` data flow, with functional calls. ``"hooks"`` (fx failed, an
    example input is known: the argument or ``example_input_array``): leaf modules in
    the order one ``torch.no_grad`` eval forward calls them, chained input -> output;
    branches and functional ops are invisible, so edges only approximate data flow.
    ``"modules"`` (neither): leaf modules chained in registration order. The module's
    training flags are left as found; untraceable networks never raise.
    """
    if not isinstance(module, nn.Module):
        raise ModelHubError(f"capture_graph needs a torch.nn.Module, got {type(module).__name__}")
    try:
        return _fx_graph(module)
    except Exception:  # data-dependent control flow, untraceable calls, ...
        pass
    if example_input is None:
        example_input = getattr(module, "example_input_array", None)
    if example_input is not None:
        try:
            return _chain("hooks", _hooked_calls(module, example_input))
        except Exception as exc:
            warnings.warn(
                f"graph capture: forward on the example input failed ({exc!r}); "
                "using module registration order",
                stacklevel=2,
            )
    return _chain("modules", _leaf_modules(module))
