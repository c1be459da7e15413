"""Edits of a rebuildable architecture (``architecture.py``'s record): cut out the
sub-network between two nodes, insert, delete or replace layers.

DQL's ``slice`` and ``construct`` run on these. They work on the JSON record, never on
live modules, so the result is again a record that ``build_module`` checks name by
name. Nodes are addressed by the names queries see (``graph.display_names``: module
paths such as ``conv1`` or ``features.0``, fx names for function calls). Inserted layers
keep the shape of what flows through them; their sizes (a BN's features, a conv's
channels) are read off the nearest layer upstream that fixes them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

from modelhub_torch.architecture import ALLOWED_MODULES, FORMAT, decode_value
from modelhub_torch.errors import ModelHubError
from modelhub_torch.graph import display_names

# layers a pass-through walk crosses without changing the channel count
_SAME_CHANNELS = re.compile(
    r"(ReLU6?|LeakyReLU|ELU|SELU|GELU|SiLU|Sigmoid|Tanh|Softmax|LogSoftmax|Softplus|Hardtanh|Hardswish|Mish|PReLU"
    r"|Dropout\d?d?|AlphaDropout|Identity|(Max|Avg)Pool\dd|Adaptive(Max|Avg)Pool\dd|LocalResponseNorm)$"
)
_SAME_FUNCTIONS = re.compile(r"torch\.(nn\.functional\.)?(relu6?|leaky_relu|gelu|silu|elu|sigmoid|tanh|softmax|"
                             r"log_softmax|dropout|(max|avg|adaptive_avg|adaptive_max)_pool\dd)$")
_SAME_METHODS = {"relu", "sigmoid", "tanh", "softmax", "contiguous"}


class NetEditError(ModelHubError):
    """An edit the network does not allow (unknown node, a slice needing two inputs...)."""


def _node_refs(value: Any) -> Iterator[str]:
    """Names of the nodes an encoded argument refers to."""
    if isinstance(value, dict):
        if set(value) == {"node"}:
            yield value["node"]
        else:
            for v in value.values():
                yield from _node_refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _node_refs(v)


def _rename_refs(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"node"}:
            return {"node": new} if value["node"] == old else value
        return {k: _rename_refs(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_refs(v, old, new) for v in value]
    return value


class Network:
    """A mutable copy of an architecture record, addressed by display names."""

    def __init__(self, arch: dict[str, Any]):
        if not isinstance(arch, dict) or arch.get("format") != FORMAT or "nodes" not in arch:
            why = "; ".join(map(str, arch.get("unsupported", []))) if isinstance(arch, dict) else ""
            raise NetEditError("this version records no rebuildable network"
                               + (f" (it uses {why})" if why else "") + ": commit the nn.Module itself")
        self.modules: dict[str, Any] = copy.deepcopy(arch["modules"])
        self.nodes: list[dict[str, Any]] = copy.deepcopy(arch["nodes"])

    def record(self) -> dict[str, Any]:
        used = {n["target"] for n in self.nodes if n["op"] == "call_module"}
        return {"format": FORMAT, "modules": {p: s for p, s in self.modules.items() if p in used},
                "nodes": self.nodes}

    # ------------------------------------------------------------------ naming
    def names(self) -> dict[str, str]:
        """display name -> fx node name."""
        shown = display_names([(n["op"], n["name"], str(n.get("target", ""))) for n in self.nodes])
        return {d: n["name"] for d, n in zip(shown, self.nodes)}

    def fx_name(self, display: str) -> str:
        names = self.names()
        if display not in names:
            raise NetEditError(f"the network has no node {display!r}; it has {', '.join(list(names)[:12])}"
                               + (" ..." if len(names) > 12 else ""))
        return names[display]

    def node(self, fx_name: str) -> dict[str, Any]:
        return next(n for n in self.nodes if n["name"] == fx_name)

    def inputs(self, node: dict[str, Any]) -> list[str]:
        return list(dict.fromkeys([*_node_refs(node.get("args")), *_node_refs(node.get("kwargs"))]))

    def users(self, fx_name: str) -> list[dict[str, Any]]:
        return [n for n in self.nodes if fx_name in self.inputs(n)]

    def _free_name(self, base: str) -> str:
        taken = {n["name"] for n in self.nodes} | set(self.names())
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        return name

    # ------------------------------------------------------------------ slice
    def slice(self, start: str, end: str) -> None:
        """Keep the nodes on a path from ``start`` to ``end`` (both included); what
        ``start`` reads becomes the network's input."""
        first, last = self.fx_name(start), self.fx_name(end)
        returned = self.inputs(self.node(last)) if self.node(last)["op"] == "output" else []
        if len(returned) == 1:  # to the output: to what the network returns
            last = returned[0]
        order = [n["name"] for n in self.nodes]
        after: set[str] = {first}
        for n in self.nodes:
            if n["name"] != first and any(i in after for i in self.inputs(n)) and n["op"] != "output":
                after.add(n["name"])
        before: set[str] = {last}
        for n in reversed(self.nodes):
            if n["name"] in before:
                before.update(self.inputs(n))
        keep = [name for name in order if name in after and name in before]
        if last not in after:
            raise NetEditError(f"{end!r} does not come after {start!r} in the network: no data flows from one "
                               "to the other, so there is nothing between them to slice")
        start_node = self.node(first)
        new_nodes: list[dict[str, Any]] = []
        if start_node["op"] == "placeholder":
            feeds: list[str] = []
        else:
            feeds = self.inputs(start_node)
            for i in range(len(feeds)):
                name = "input" if len(feeds) == 1 else f"input_{i}"
                new_nodes.append({"op": "placeholder", "name": name, "args": {"tuple": []}, "kwargs": {"dict": {}}})
        inner = set(keep) | set(feeds)
        for name in keep:
            n = self.node(name)
            outside = [i for i in self.inputs(n) if i not in inner]
            if outside:
                raise NetEditError(
                    f"the slice from {start!r} to {end!r} needs {', '.join(outside)}, computed outside it "
                    f"(read by {name!r}): start the slice earlier so one input feeds it")
            new_nodes.append(n)
        for i, feed in enumerate(feeds):  # what start read is now the input
            target = "input" if len(feeds) == 1 else f"input_{i}"
            for n in new_nodes[len(feeds):]:
                n["args"] = _rename_refs(n["args"], feed, target)
                n["kwargs"] = _rename_refs(n["kwargs"], feed, target)
        new_nodes.append({"op": "output", "name": "output", "args": {"tuple": [{"node": last}]},
                          "kwargs": {"dict": {}}})
        clash = {"input", "output"} & set(keep)
        if clash:
            raise NetEditError(f"the network has a node named {sorted(clash)[0]!r} inside the slice; "
                               "slice from or to another node")
        self.nodes = new_nodes

    # ------------------------------------------------------------------ edits
    def insert_after(self, at: str, layer: tuple[str, dict[str, Any]], name: str) -> str:
        """A new layer reading what ``at`` produces; everything that read ``at`` reads
        the new layer instead. Returns its name."""
        fx = self.fx_name(at)
        if self.node(fx)["op"] == "output":
            raise NetEditError("nothing can be inserted after the output node")
        path = self._new_module_path(name)
        new = {"op": "call_module", "name": self._free_name(path.replace(".", "_")), "target": path,
               "args": {"tuple": [{"node": fx}]}, "kwargs": {"dict": {}}}
        for n in self.users(fx):
            n["args"] = _rename_refs(n["args"], fx, new["name"])
            n["kwargs"] = _rename_refs(n["kwargs"], fx, new["name"])
        self.modules[path] = {"type": layer[0], "args": layer[1]}
        self.nodes.insert(self.nodes.index(self.node(fx)) + 1, new)
        return path

    def delete(self, at: str) -> None:
        """Drop a layer; what read it reads the layer's input instead."""
        fx = self.fx_name(at)
        node = self.node(fx)
        feeds = self.inputs(node)
        if node["op"] in ("placeholder", "output") or len(feeds) != 1:
            raise NetEditError(f"{at!r} cannot be deleted: only a node with exactly one input "
                               f"(a layer, an activation) can; it has {len(feeds)}")
        for n in self.users(fx):
            n["args"] = _rename_refs(n["args"], fx, feeds[0])
            n["kwargs"] = _rename_refs(n["kwargs"], fx, feeds[0])
        self.nodes.remove(node)

    def replace(self, at: str, layer: tuple[str, dict[str, Any]], name: str | None) -> str:
        """A new layer in ``at``'s place, reading ``at``'s first input; named ``name``,
        else as the node was (``drop#2`` becomes ``drop_2``)."""
        fx = self.fx_name(at)
        node = self.node(fx)
        feeds = self.inputs(node)
        if node["op"] in ("placeholder", "output") or not feeds:
            raise NetEditError(f"{at!r} cannot be replaced: it is not a layer")
        path = name or at.replace("#", "_")
        if not all(p.isidentifier() or p.isdigit() for p in path.split(".")):
            raise NetEditError(f"{path!r} cannot name a layer: use letters, digits and underscores")
        others = {d for d, f in self.names().items() if f != fx}
        shared = {n.get("target") for n in self.nodes if n["op"] == "call_module" and n is not node}
        if path in others or path in shared:
            raise NetEditError(f"the network already has a layer named {path!r}; name the new one differently")
        node.update({"op": "call_module", "target": path, "args": {"tuple": [{"node": feeds[0]}]},
                     "kwargs": {"dict": {}}})
        self.modules[path] = {"type": layer[0], "args": layer[1]}
        return path

    def _new_module_path(self, name: str) -> str:
        if not name or not all(p.isidentifier() or p.isdigit() for p in name.split(".")):
            raise NetEditError(f"{name!r} cannot name a layer: use letters, digits and underscores")
        if name in self.modules or name in self.names():
            raise NetEditError(f"the network already has a layer named {name!r}; name the new one differently")
        return name

    # ------------------------------------------------------------------ shapes
    def features_at(self, at: str) -> tuple[int, int]:
        """(channels or features, spatial dims: 0 for a flat vector) of what node ``at``
        produces, read off the nearest layer upstream that fixes them."""
        fx = self.fx_name(at)
        seen: set[str] = set()
        while fx not in seen:
            seen.add(fx)
            node = self.node(fx)
            if node["op"] == "call_module":
                spec = self.modules[node["target"]]
                kind, args = spec["type"], spec["args"]
                m = re.fullmatch(r"(Conv|ConvTranspose)(\d)d", kind)
                if m:
                    return int(args["out_channels"]), int(m.group(2))
                if kind == "Linear":
                    return int(args["out_features"]), 0
                m = re.fullmatch(r"(BatchNorm|InstanceNorm)(\d)d", kind)
                if m:
                    dims = int(m.group(2))  # BatchNorm1d mostly follows a Linear: a flat vector
                    return int(args["num_features"]), 0 if (dims == 1 and m.group(1) == "BatchNorm") else dims
                if kind == "GroupNorm":
                    return int(args["num_channels"]), 2
                if kind == "Embedding":
                    return int(args["embedding_dim"]), 0
                if not _SAME_CHANNELS.match(kind):
                    break
            elif not (_SAME_FUNCTIONS.match(str(node.get("target"))) if node["op"] == "call_function"
                      else node["op"] == "call_method" and node.get("target") in _SAME_METHODS):
                break
            feeds = self.inputs(node)
            if not feeds:
                break
            fx = feeds[0]
        raise NetEditError(f"cannot tell how many channels or features flow out of {at!r} "
                           "(no conv, linear or norm layer fixes them on the way there); "
                           "give them explicitly, e.g. BN(num_features=64)")


# ---------------------------------------------------------------------- layers
def layer_for(template: str, args: tuple[Any, ...], kwargs: dict[str, Any], net: Network, at: str,
              replacing: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The torch.nn layer (type, constructor arguments) a DQL template creates after
    (or in place of) node ``at``, sized to keep the shape flowing there."""
    t = template.upper()
    kw = dict(kwargs)

    def features() -> tuple[int, int]:
        if replacing is not None:  # a layer in a layer's place reads what it read
            fx = net.fx_name(at)
            feeds = net.inputs(net.node(fx))
            shown = {v: k for k, v in net.names().items()}
            return net.features_at(shown[feeds[0]])
        return net.features_at(at)

    simple = {"RELU": "ReLU", "ELU": "ELU", "GELU": "GELU", "SILU": "SiLU", "SIGMOID": "Sigmoid", "TANH": "Tanh",
              "LEAKYRELU": "LeakyReLU", "SOFTMAX": "Softmax", "DROPOUT": "Dropout", "FLATTEN": "Flatten",
              "LRN": "LocalResponseNorm", "NORM": "LocalResponseNorm"}
    if t in simple:
        kind = simple[t]
        if kind == "Softmax":
            kw.setdefault("dim", 1)
        if kind == "LocalResponseNorm":
            kw.setdefault("size", 5)
        return _checked(kind, kw)
    if t == "POOL":
        pool_kind = str(args[0]).upper() if args else "MAX"
        if pool_kind not in ("MAX", "AVG", "AVERAGE", "MEAN"):
            raise NetEditError(f"POOL takes \"MAX\" or \"AVG\", not {args[0]!r}")
        old = replacing["args"] if replacing and "Pool" in replacing["type"] else {}
        for key in ("kernel_size", "stride", "padding"):
            if key not in kw and key in old:
                kw[key] = old[key]
        kw.setdefault("kernel_size", 2)
        dims = _dims_of(replacing) or max(features()[1], 1)
        return _checked(f"{'Max' if pool_kind == 'MAX' else 'Avg'}Pool{dims}d", kw)
    if t in ("BN", "BATCHNORM"):
        n, dims = features()
        kw.setdefault("num_features", n)
        return _checked(f"BatchNorm{max(dims, 1)}d", kw)
    if t in ("LN", "LAYERNORM"):
        n, dims = features()
        if dims:
            raise NetEditError(f"LN after {at!r} would normalise a {dims}-d feature map; use BN or GN there")
        kw.setdefault("normalized_shape", {"list": [n]})
        return _checked("LayerNorm", kw)
    if t == "GN":
        n, _ = features()
        kw.setdefault("num_channels", n)
        kw.setdefault("num_groups", 1)
        return _checked("GroupNorm", kw)
    if t in ("LINEAR", "FC", "IP"):
        n, dims = features()
        if dims:
            raise NetEditError(f"LINEAR after {at!r} would read a {dims}-d feature map; insert it after a flatten")
        kw.setdefault("in_features", n)
        kw.setdefault("out_features", n)
        _same_shape(t, kw["in_features"], kw["out_features"])
        return _checked("Linear", kw)
    if t == "CONV":
        n, dims = features()
        if not dims:
            raise NetEditError(f"CONV after {at!r} would read a flat vector; insert it before the flatten")
        kw.setdefault("in_channels", n)
        kw.setdefault("out_channels", n)
        kw.setdefault("kernel_size", 3)
        k = kw["kernel_size"]
        if isinstance(k, int):
            kw.setdefault("padding", k // 2)
        _same_shape(t, kw["in_channels"], kw["out_channels"])
        return _checked(f"Conv{dims}d", kw)
    raise NetEditError(f"{template} cannot be inserted; insertable layers: BN, CONV, DROPOUT, ELU, FLATTEN, GELU, GN, "
                       "LEAKYRELU, LINEAR, LN, LRN, POOL, RELU, SIGMOID, SILU, SOFTMAX, TANH")


def _dims_of(spec: dict[str, Any] | None) -> int:
    m = re.search(r"(\d)d$", spec["type"]) if spec else None
    return int(m.group(1)) if m else 0


def _same_shape(t: str, n_in: Any, n_out: Any) -> None:
    if n_in != n_out:
        raise NetEditError(f"an inserted {t} must keep the shape flowing through it ({n_in} in, {n_out} out); "
                           "construct keeps the rest of the network as it is")


def _checked(kind: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    cls = ALLOWED_MODULES.get(kind)
    if cls is None:
        raise NetEditError(f"{kind} is not a layer the repository can rebuild")
    try:
        cls(**{k: decode_value(v) for k, v in args.items()})
    except (TypeError, ValueError) as exc:
        raise NetEditError(f"{kind}({', '.join(f'{k}={v!r}' for k, v in args.items())}) cannot be built: {exc}") \
            from None
    return kind, args


__all__ = ["NetEditError", "Network", "layer_for"]
