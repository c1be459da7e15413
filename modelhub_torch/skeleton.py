"""Split a checkpoint into tensor leaves and a typed-JSON skeleton, and join them back.

The skeleton keeps everything torch.load would return besides tensor data — nesting,
key types and order, tuples vs lists, ints vs floats (bit-exact), torch.Size/dtype/
device — as JSON, so loading never needs pickle. Values only pickle can hold are
refused unless ``allow_pickle=True``; they are then stored as tagged pickle bytes
and only unpickled when the loader passes ``weights_only=False``.

Tensors keep what torch.load keeps of them: tensors viewing one storage (tied weights,
slices, transposes of each other) become one stored tensor that every view names with
the geometry that rebuilds it, so views share memory after a load as they did before;
strides, storage offsets, conj/neg bits and requires_grad come back too. A contiguous
tensor that owns its storage, the common case, is stored as it is, named by a bare
``{"$t": i}`` — nothing in its path costs a copy or a byte more.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import json
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modelhub_torch.errors import FormatError, PickleRequiredError
from modelhub_torch.skeleton_check import (
    MAX_DEPTH,
    NON_FINITE,
    VIEW_FIELDS,
    Leaf,
    check_skeleton,
    np_scalar_dtype,
    state_dict_paths,  # noqa: F401 - re-exported: where a checkpoint keeps its weights
    torch_dtypes_by_name,
)
from modelhub_torch.views import Rebuilder, Use, group_of, plan_leaves, view_key

# dict subclasses rebuilt by name without pickle (the key/value content is typed JSON)
_SAFE_DICTS: dict[str, type] = {"collections.OrderedDict": collections.OrderedDict}


def _attribute_dict() -> type | None:
    for mod in ("lightning.fabric.utilities.data", "lightning_fabric.utilities.data"):
        try:
            module = __import__(mod, fromlist=["AttributeDict"])
            return module.AttributeDict
        except ImportError:
            continue
    return None


def _join(path: str, key: object) -> str:
    return f"{path}/{key}" if path else str(key)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class Flattened:
    """A checkpoint split for storage: its skeleton, the tensors to store (``tensors``,
    each with the ``path`` where the checkpoint first holds it), and ``named``: every
    distinct tensor as the checkpoint holds it (a view stays a view), by first path."""

    skeleton: Any
    tensors: list[torch.Tensor] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    uses_pickle: bool = False
    uses: list[Use] = field(default_factory=list, repr=False)  # every place a tensor is held, in order

    @property
    def named(self) -> dict[str, torch.Tensor]:
        """Each distinct tensor (a view stays a view; a tied one once) by first path."""
        out: dict[str, torch.Tensor] = {}
        seen: set[tuple] = set()
        for u in self.uses:
            key = (u.group, *view_key(u.tensor))
            if key not in seen:
                seen.add(key)
                out.setdefault(u.path, u.tensor)
        return out


class _Flattener:
    def __init__(self, allow_pickle: bool):
        self.allow_pickle = allow_pickle
        self.out = Flattened(skeleton=None)
        self.uses = self.out.uses

    def tensor(self, t: torch.Tensor, path: str) -> dict[str, Any]:
        if t.is_sparse or t.layout != torch.strided:
            return self.opaque(t, path, f"{t.layout} tensor")
        if t.device.type == "meta":
            return self.opaque(t, path, "meta tensor")
        node: dict[str, Any] = {"$t": -1}  # the index is known once every tensor is
        if isinstance(t, torch.nn.Parameter):
            node["param"] = bool(t.requires_grad)
        elif t.requires_grad:  # torch.load gives it back requiring grad (as a leaf)
            node["grad"] = True
        self.uses.append(Use(t, path, node, group_of(t)))
        return node

    def array(self, a: np.ndarray, path: str) -> dict[str, Any]:
        """A numpy array: torch.load gives each its own copy (pickle's), in C order or,
        for a Fortran-ordered array, in Fortran order."""
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        t = torch.from_numpy(a if fortran else np.ascontiguousarray(a))
        node: dict[str, Any] = {"$t": -1, "np": True}
        self.uses.append(Use(t, path, node, ("np", id(a)), "F" if fortran else "C"))
        return node

    def finish(self) -> None:
        """Pick the stored tensors (:func:`plan_leaves`) and complete every node."""
        leaves = plan_leaves(self.uses)
        index: dict[tuple, int] = {}
        for u in self.uses:
            i = index.get(u.leaf)
            if i is None:
                i = index[u.leaf] = len(self.out.tensors)
                t, path = leaves[u.leaf]
                self.out.tensors.append(t)
                self.out.paths.append(path)
            u.node["$t"] = i
            if u.fields:
                u.node.update(u.fields)

    def opaque(self, value: Any, path: str, what: str) -> dict[str, Any]:
        if not self.allow_pickle:
            raise PickleRequiredError(
                f"{path or '<root>'} holds a {what} that can only be stored with pickle; "
                "pass allow_pickle=True to commit it (loading it will then need "
                "weights_only=False), or convert it to plain types"
            )
        try:
            data = pickle.dumps(value, protocol=4)
        except Exception as exc:
            raise PickleRequiredError(f"{path or '<root>'}: {what} cannot be pickled: {exc}") from exc
        self.out.uses_pickle = True
        return {"$pickle": base64.b64encode(data).decode()}

    def walk(self, obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and type(obj) is int:
            return obj
        if type(obj) is float:
            if math.isfinite(obj):
                return obj
            return {"$float": repr(obj)}  # 'nan', 'inf', '-inf'
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj, path)
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc" and obj.dtype.byteorder in "=|<":
            return self.array(obj, path)
        if isinstance(obj, np.generic) and obj.dtype.kind in "biufc":
            return {"$np": obj.dtype.str, "v": base64.b64encode(obj.tobytes()).decode()}
        if isinstance(obj, torch.Size):
            return {"$size": list(obj)}
        if isinstance(obj, torch.dtype):
            return {"$dtype": str(obj).removeprefix("torch.")}
        if isinstance(obj, torch.device):
            return {"$device": str(obj)}
        if isinstance(obj, (bytes, bytearray)):
            return {"$bytes": base64.b64encode(bytes(obj)).decode(), "mutable": isinstance(obj, bytearray)}
        if isinstance(obj, enum.Enum) or (isinstance(obj, (set, frozenset)) and not self._plain_set(obj)):
            return self.opaque(obj, path, type(obj).__name__)
        if isinstance(obj, (set, frozenset)):
            items = [self.walk(v, _join(path, "*")) for v in sorted(obj, key=repr)]
            return {"$set": items, "frozen": isinstance(obj, frozenset)}
        if isinstance(obj, dict):
            return self.mapping(obj, path)
        if type(obj) is list:
            return [self.walk(v, _join(path, i)) for i, v in enumerate(obj)]
        if type(obj) is tuple:
            return {"$tuple": [self.walk(v, _join(path, i)) for i, v in enumerate(obj)]}
        return self.opaque(obj, path, f"{_class_path(type(obj))} object")

    @staticmethod
    def _plain_set(obj: Any) -> bool:
        return all(v is None or type(v) in (bool, int, float, str) for v in obj)

    def mapping(self, obj: dict, path: str) -> Any:
        cls = type(obj)
        tag = None
        if cls is not dict:
            name = _class_path(cls)
            attr = _attribute_dict()
            if name in _SAFE_DICTS or (attr is not None and cls is attr):
                tag = "AttributeDict" if attr is not None and cls is attr else name
            else:
                return self.opaque(obj, path, f"{name} mapping")
        items = []
        for k, v in obj.items():
            items.append([self.walk(k, _join(path, "<key>")), self.walk(v, _join(path, k))])
        node: dict[str, Any] = {"$dict": items}
        if tag:
            node["cls"] = tag
        return node


def flatten(obj: Any, allow_pickle: bool = False) -> Flattened:
    """Pull every tensor out of ``obj``; the rest becomes a typed-JSON skeleton."""
    f = _Flattener(allow_pickle)
    f.out.skeleton = f.walk(obj, "")
    f.finish()
    return f.out


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{where}: bad base64 ({exc})") from None


def unflatten(skeleton: Any, tensors: list[torch.Tensor | None], weights_only: bool = True) -> Any:
    """Rebuild the object from its skeleton and decoded tensors (ties and views restored).

    The skeleton is checked first (:func:`check_skeleton`, against the tensors given);
    ``tensors[i]`` is None for a pruned tensor, which a skeleton must not name."""
    check_skeleton(skeleton, [None if t is None else Leaf(tuple(t.shape), _dtype_name(t)) for t in tensors])
    try:
        return _Builder(tensors, weights_only).build(skeleton)
    except RecursionError:
        raise FormatError(f"skeleton nested too deeply to rebuild (limit {MAX_DEPTH} levels)") from None


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


class _Builder:
    """Turns a checked skeleton into objects; only conversions that depend on values
    (base64, devices, hashability, tensor kinds) can still fail, as FormatError."""

    def __init__(self, tensors: list[Any], weights_only: bool):
        self.tensors = tensors
        self.weights_only = weights_only
        self.views = Rebuilder(tensors)
        self._made: dict[Any, Any] = {}  # equal nodes are one object, as pickle's memo makes them

    def build(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.build(v) for v in node]
        tag = next(k for k in node if k.startswith("$"))
        return getattr(self, "_" + tag[1:])(node, node[tag])

    def _t(self, node: dict, i: int) -> Any:
        if len(node) == 1:  # the stored tensor itself: no lookup, no new object
            return self.tensors[i]
        view = not VIEW_FIELDS.isdisjoint(node)
        key = json.dumps(node, sort_keys=True) if view else (i, node.get("np"), node.get("param"))
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._tensor(node, i, view)
        return made

    def _tensor(self, node: dict, i: int, view: bool) -> Any:
        try:
            t = self.views.tensor(node, i) if view else self.tensors[i]
            if node.get("np"):
                return t.numpy()
            if "param" in node:
                return torch.nn.Parameter(t, requires_grad=node["param"])
            if node.get("grad"):
                t.requires_grad_(True)
        except (TypeError, RuntimeError) as exc:
            dtype = self.tensors[i].dtype
            raise FormatError(f"skeleton: tensor {i} ({dtype}) cannot be rebuilt as stored: {exc}") from None
        return t

    def _dict(self, node: dict, items: list) -> Any:
        cls_name = node.get("cls")
        if cls_name is None:
            cls = dict
        elif cls_name == "AttributeDict":
            cls = _attribute_dict() or dict
        else:  # an allow-list lookup: unknown names rebuild a plain dict
            cls = _SAFE_DICTS.get(cls_name, dict)
        pairs = [(self.build(k), self.build(v)) for k, v in items]
        try:
            return cls(pairs)
        except TypeError as exc:  # an unhashable key (a list, a dict)
            raise FormatError(f"skeleton: a dict key cannot be used as one ({exc})") from None

    def _tuple(self, node: dict, items: list) -> Any:
        return tuple(self.build(v) for v in items)

    def _float(self, node: dict, text: str) -> float:
        return NON_FINITE[text]

    def _np(self, node: dict, name: str) -> Any:
        dt = np_scalar_dtype(name)
        data = _b64(node["v"], "skeleton: numpy scalar")
        if dt is None or len(data) != dt.itemsize:
            raise FormatError(f"skeleton: numpy scalar of {name!r} holds {len(data)} bytes")
        return np.frombuffer(data, dtype=dt)[0]

    def _size(self, node: dict, dims: list) -> torch.Size:
        return torch.Size(dims)

    def _dtype(self, node: dict, name: str) -> torch.dtype:
        return torch_dtypes_by_name()[name]

    def _device(self, node: dict, name: str) -> torch.device:
        try:
            return torch.device(name)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise FormatError(f"skeleton: bad device {name!r}: {exc}") from None

    def _bytes(self, node: dict, text: str) -> bytes | bytearray:
        data = _b64(text, "skeleton: bytes")
        return bytearray(data) if node.get("mutable") else data

    def _set(self, node: dict, items: list) -> set | frozenset:
        values = [self.build(v) for v in items]
        return frozenset(values) if node.get("frozen") else set(values)

    def _pickle(self, node: dict, text: str) -> Any:
        if self.weights_only:
            raise PickleRequiredError(
                "this version holds pickled objects; load it with weights_only=False "
                "only if you trust the repository it came from"
            )
        return pickle.loads(_b64(text, "skeleton: pickled object"))
