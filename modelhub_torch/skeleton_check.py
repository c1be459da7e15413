"""Checking and reading a stored skeleton without torch.

A skeleton comes from a repository, which is untrusted: every tag, companion key,
value type, tensor index and allow-listed name is checked here, iteratively, before
:func:`modelhub_torch.skeleton.unflatten` touches it — and before the index stores a
manifest, which must not need torch (``list`` and ``query`` start without it). Where
a checkpoint keeps its weights (:func:`state_dict_paths`) is read here too, for
``desc`` and ``diff``, and how a weight stored as a view of another tensor's storage
maps onto that tensor's elements (:func:`view_gather`, for progressive reads).

A leaf module (errors and NumPy only): ``store/config.py`` reads it to tell which
manifests use the ``views`` format feature.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from modelhub_torch.errors import FormatError

if TYPE_CHECKING:
    import torch


@functools.cache
def torch_dtypes_by_name() -> dict[str, torch.dtype]:
    """Every torch dtype by the name flatten writes: a name from a repository is looked
    up here, never with getattr(torch, name) (which would hand out any attribute).
    Imports torch, so only a skeleton that names a dtype pays for it."""
    import torch

    return {str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)}


# nesting levels a skeleton may have: deeper than any checkpoint a commit could store
# (flatten and the JSON codec recurse too), so only a damaged skeleton goes past it
MAX_DEPTH = 1000
# the $t companions added with views (FORMAT.md): how a tensor sits on its stored
# leaf's storage, its lazy conj/neg bits, requires_grad of a plain tensor. A manifest
# whose skeleton uses any of them needs the "views" format feature.
VIEW_FIELDS = frozenset({"layout", "size", "stride", "offset", "conj", "neg", "grad"})
_VIEW_GEOMETRY = ("size", "stride", "offset")
# dtypes a neg bit may be set on: those torch can negate (the bit comes from x.conj().imag)
_NEG_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "complex64", "complex128"})
# companion keys each tag may carry besides itself
_COMPANIONS: dict[str, frozenset[str]] = {
    "$t": frozenset({"np", "param"}) | VIEW_FIELDS,
    "$dict": frozenset({"cls"}),
    "$np": frozenset({"v"}),
    "$bytes": frozenset({"mutable"}),
    "$set": frozenset({"frozen"}),
    **{tag: frozenset() for tag in ("$tuple", "$float", "$size", "$dtype", "$device", "$pickle")},
}
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_INT64 = (-(1 << 63), (1 << 63) - 1)
# sizes, strides, offsets and element counts of views above this are damage (the
# manifest's limit on sizes: nothing in a view may overflow an int64 index)
MAX_VIEW = 1 << 48
MAX_DIMS = 64


class Leaf(NamedTuple):
    """What a ``$t`` node may rely on about the stored tensor it names: its shape and
    dtype name (``float32``, as manifests write them)."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Bad(Exception):
    """A malformed node (``args``: the node, what is wrong); located after the walk."""


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tag(node: dict) -> str:
    """The one ``$`` tag of a skeleton object; its other keys must be its companions."""
    if len(node) == 1:  # the common case: a bare tag
        (tag,) = node
        if tag in _COMPANIONS:
            return tag
    tags = [k for k in node if isinstance(k, str) and k.startswith("$")]
    if len(tags) != 1 or tags[0] not in _COMPANIONS:
        raise _Bad(node, f"unknown skeleton tag in {sorted(map(str, node))[:8]!r}")
    if len(node) > 1 and not _COMPANIONS[tags[0]].issuperset(k for k in node if k != tags[0]):
        extra = sorted(map(str, set(node) - {tags[0]} - _COMPANIONS[tags[0]]))
        raise _Bad(node, f"{tags[0]} node with unexpected keys {extra[:8]!r}")
    return tags[0]


@functools.lru_cache(maxsize=256)
def np_scalar_dtype(name: str) -> np.dtype | None:
    """A numpy scalar dtype named in a skeleton: numbers and bools only (never object,
    void or structured dtypes, which could hold pointers or nested fields)."""
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        return None
    return dt if dt.kind in "biufc" and dt.fields is None and dt.subdtype is None else None


def _check_node(node: dict, tag: str, leaves: Sequence[Leaf | None], layouts: dict[int, Any]) -> list[Any]:
    """Check one tagged node's own values; returns the children still to check."""
    value = node[tag]
    if tag == "$t":
        if not is_int(value) or not 0 <= value < len(leaves) or leaves[value] is None:
            raise _Bad(node, f"tensor index {str(value)[:40]} names no stored tensor (of {len(leaves)})")
        if not all(isinstance(node.get(k, False), bool) for k in ("np", "param")):
            raise _Bad(node, "tensor flags 'np' and 'param' must be true or false")
        if len(node) > 1 and not VIEW_FIELDS.isdisjoint(node):
            _check_view(node, leaves[value])
            layout = node.get("layout")
            if layouts.setdefault(value, layout) != layout:
                raise _Bad(node, f"tensor {value} is named with two different layouts")
        elif layouts.setdefault(value, None) is not None:
            raise _Bad(node, f"tensor {value} is named with two different layouts")
        return []
    if tag == "$dict":
        if not isinstance(value, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in value):
            raise _Bad(node, "$dict must hold a list of [key, value] pairs")
        if not isinstance(node.get("cls", ""), str):
            raise _Bad(node, "$dict cls must be a string")
        return [x for kv in value for x in kv]
    if tag in ("$tuple", "$set"):
        if not isinstance(value, list) or not isinstance(node.get("frozen", False), bool):
            raise _Bad(node, f"{tag} must hold a list")
        if tag == "$set" and not all(_hashable_leaf(v) for v in value):
            raise _Bad(node, "$set may hold only numbers, strings, booleans and null")
        return value if tag == "$tuple" else []
    if not _LEAF_CHECKS[tag](node, value):
        raise _Bad(node, f"malformed {tag} node {str(node)[:120]}")
    return []


def _check_view(node: dict, leaf: Leaf) -> None:
    """The view fields of a ``$t`` node: flags that fit the leaf's dtype, a layout that
    places the leaf densely, and a view whose every element lies inside the leaf (a
    view past its end would read memory that is not the tensor's)."""
    flags = ("grad", "conj", "neg")
    if not all(isinstance(node.get(k, False), bool) for k in flags):
        raise _Bad(node, "tensor flags 'grad', 'conj' and 'neg' must be true or false")
    if node.get("grad") and ("param" in node or node.get("np")):
        raise _Bad(node, "'grad' is for plain tensors (a Parameter keeps requires_grad in 'param')")
    if (node.get("conj") or node.get("neg")) and node.get("np"):
        raise _Bad(node, "a numpy array has no conj or neg bit")
    if node.get("conj") and not leaf.dtype.startswith("complex"):
        raise _Bad(node, f"a conj bit on a {leaf.dtype} tensor (only complex tensors have one)")
    if node.get("neg") and leaf.dtype not in _NEG_DTYPES:
        raise _Bad(node, f"a neg bit on a {leaf.dtype} tensor (only {', '.join(sorted(_NEG_DTYPES))})")
    if node.get("grad") and not (leaf.dtype.startswith("complex") or "float" in leaf.dtype):
        raise _Bad(node, f"requires_grad on a {leaf.dtype} tensor (floats and complex only)")
    if "layout" in node:
        _check_layout(node, node["layout"], leaf)
    present = [k for k in _VIEW_GEOMETRY if k in node]
    if present and len(present) != len(_VIEW_GEOMETRY):
        raise _Bad(node, "a view needs all of 'size', 'stride' and 'offset'")
    if present:
        _check_extent(node, node["size"], node["stride"], node["offset"], leaf.numel)


def _int_list(v: Any, n: int | None = None) -> bool:
    """A list of at most MAX_DIMS ints in 0..MAX_VIEW (of length ``n`` when given)."""
    return (isinstance(v, list) and len(v) <= MAX_DIMS and (n is None or len(v) == n)
            and all(is_int(x) and 0 <= x <= MAX_VIEW for x in v))


def _check_layout(node: dict, layout: Any, leaf: Leaf) -> None:
    """``layout``: the strides the leaf's elements are placed with in storage; they must
    place every element on its own slot of a storage exactly the leaf's size (a dense
    permutation, like channels_last), so placing it allocates only the leaf's bytes."""
    if not _int_list(layout, len(leaf.shape)):
        raise _Bad(node, f"layout {str(layout)[:80]} is not one non-negative stride per dimension of {list(leaf.shape)}")
    if not dense(leaf.shape, layout) or leaf.numel == 0:
        raise _Bad(node, f"layout {layout} does not place the {list(leaf.shape)} tensor densely")


def dense(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """Whether strides put each element of ``shape`` on its own slot of exactly
    ``prod(shape)`` slots (a permutation of the contiguous strides; dimensions of size
    1 may have any stride). False for empty shapes."""
    expected = 1
    for size, st in sorted(((s, st) for s, st in zip(shape, stride) if s != 1), key=lambda p: p[1]):
        if size == 0 or st != expected:
            return False
        expected *= size
    return True


def _check_extent(node: dict, size: Any, stride: Any, offset: Any, numel: int) -> None:
    if not _int_list(size) or not _int_list(stride, len(size) if isinstance(size, list) else None):
        raise _Bad(node, f"view size {str(size)[:60]} and stride {str(stride)[:60]} must be lists of "
                         f"as many integers from 0 to 2^48")
    if not is_int(offset) or not 0 <= offset <= MAX_VIEW:
        raise _Bad(node, f"view offset {str(offset)[:40]} is not an integer from 0 to 2^48")
    count = math.prod(size)
    if count > MAX_VIEW:
        raise _Bad(node, f"view of {count} elements")
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if count else offset - 1
    if last >= numel:
        raise _Bad(node, f"view (size {size}, stride {stride}, offset {offset}) reaches element {last}, "
                         f"past the {numel} elements of its tensor")


_LEAF_CHECKS: dict[str, Any] = {
    "$float": lambda node, v: isinstance(v, str) and v in NON_FINITE,
    "$np": lambda node, v: isinstance(v, str) and isinstance(node.get("v"), str) and np_scalar_dtype(v) is not None,
    "$size": lambda node, v: isinstance(v, list) and all(is_int(x) and _INT64[0] <= x <= _INT64[1] for x in v),
    "$dtype": lambda node, v: isinstance(v, str) and v in torch_dtypes_by_name(),
    "$device": lambda node, v: isinstance(v, str) and len(v) <= 64,
    "$bytes": lambda node, v: isinstance(v, str) and isinstance(node.get("mutable", False), bool),
    "$pickle": lambda node, v: isinstance(v, str),
}


def _hashable_leaf(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, dict) and len(v) == 1 and v.get("$float") in NON_FINITE


_PLAIN = (type(None), bool, int, str)


def check_skeleton(skeleton: Any, leaves: Sequence[Leaf | None], where: str = "skeleton") -> None:
    """Refuse a skeleton that :func:`unflatten` could not rebuild exactly: unknown tags
    or keys, values of the wrong type, tensor indices out of range or naming a pruned
    tensor (``leaves[i]`` None), views reaching past their tensor, names outside the
    allow-lists, nesting deeper than MAX_DEPTH. Iterative, so a deep document cannot
    exhaust the stack here; the path of a bad node is worked out only when there is one."""
    try:
        _walk(skeleton, leaves)
    except _Bad as bad:
        node, what = bad.args
        raise FormatError(f"{where} at {_path_of(skeleton, node)}: {what}") from None


def _walk(skeleton: Any, leaves: Sequence[Leaf | None]) -> None:
    layouts: dict[int, Any] = {}  # tensor index -> the layout its nodes place it with
    stack: list[tuple[Any, int]] = [(skeleton, 0)]
    while stack:
        node, depth = stack.pop()
        if type(node) in _PLAIN:
            continue
        if depth > MAX_DEPTH:
            raise _Bad(node, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, list):
            children = node
        elif isinstance(node, dict):
            children = _check_node(node, _tag(node), leaves, layouts)
        elif isinstance(node, float) and math.isfinite(node):
            continue
        else:
            raise _Bad(node, f"{str(node)[:40]} ({type(node).__name__}) is no skeleton node")
        depth += 1
        stack.extend((c, depth) for c in children)


def _path_of(skeleton: Any, target: Any) -> str:
    """Where ``target`` sits in the skeleton (for error messages: the slow path)."""
    stack: list[tuple[Any, str]] = [(skeleton, "")]
    while stack:
        node, path = stack.pop()
        if node is target:
            return (path[:200] + ("..." if len(path) > 200 else "")) or "<root>"
        if isinstance(node, list):
            stack.extend((c, f"{path}/{i}") for i, c in enumerate(node))
        elif isinstance(node, dict):
            stack.extend((c, f"{path}/{k}") for k, c in node.items())
    return "<root>"


def state_dict_paths(skeleton: Any) -> dict[str, int]:
    """Map ``state_dict`` keys to tensor indices: the model weights of a checkpoint.

    A plain state_dict is its own weights; a Lightning/PyTorch checkpoint keeps them
    under ``"state_dict"`` (or ``"model"`` / ``"model_state_dict"``). A weight stored
    as a view of another tensor's storage maps to that stored tensor: its node
    (:func:`state_dict_nodes`) says which part of it the weight is.
    """
    return {k: v["$t"] for k, v in state_dict_nodes(skeleton).items()}


def state_dict_nodes(skeleton: Any) -> dict[str, dict[str, Any]]:
    """Map ``state_dict`` keys to their ``$t`` nodes (see :func:`state_dict_paths`):
    the stored tensor, and the view of it the weight is (:func:`view_gather`)."""

    def entries(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict) and "$dict" in node:
            out = {}
            for k, v in node["$dict"]:
                if not isinstance(k, str):
                    return None
                out[k] = v
            return out
        return None

    top = entries(skeleton)
    if top is None:
        return {}
    for key in ("state_dict", "model_state_dict", "model"):
        inner = entries(top.get(key))
        if inner and all(_tensor_node(v) for v in inner.values()):
            return inner
    if top and all(_tensor_node(v) for v in top.values()):
        return top
    return {}


def _tensor_node(v: Any) -> bool:
    return isinstance(v, dict) and is_int(v.get("$t")) and v["$t"] >= 0


def is_view_node(node: dict[str, Any]) -> bool:
    """Whether a ``$t`` node is a view of its stored tensor's storage (``size``,
    ``stride``, ``offset``) rather than the stored tensor itself."""
    return "size" in node


def view_gather(node: dict[str, Any], leaf_shape: Sequence[int]) -> np.ndarray | None:
    """For a (checked) ``$t`` node that is a view: the index, in the stored tensor's
    C-order elements, of each element of the view in C order — so a reader holding the
    stored tensor's bits (or some of its byte planes) takes the view's with
    ``bits[gather]``. None when the node is the stored tensor itself (a ``layout``
    only places it in memory; its values are in the stored order already)."""
    if not is_view_node(node):
        return None
    n = math.prod(leaf_shape)
    layout = node.get("layout")
    if layout is None:
        slot_to_element = None  # the leaf is contiguous: storage slot k is element k
    else:  # element k sits at storage slot sum(index_d * layout_d)
        slots = _strided_positions(leaf_shape, layout, 0)
        slot_to_element = np.empty(n, np.int64)
        slot_to_element[slots] = np.arange(n, dtype=np.int64)
    positions = _strided_positions(node["size"], node["stride"], node["offset"])
    return positions if slot_to_element is None else slot_to_element[positions]


def _strided_positions(size: Sequence[int], stride: Sequence[int], offset: int) -> np.ndarray:
    """Storage slots of a strided tensor's elements, in C order (int64)."""
    out = np.full((), offset, np.int64)
    for d, (s, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[d] = s
        out = out + (np.arange(s, dtype=np.int64) * st).reshape(shape)
    return np.broadcast_to(out, tuple(size)).reshape(-1)


def uses_views(skeleton: Any) -> bool:
    """Whether any ``$t`` node of a skeleton carries a field added with views (the
    ``views`` format feature: a reader without it would refuse the node as damage)."""
    stack = [skeleton]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "$t" in node:
                if not VIEW_FIELDS.isdisjoint(node):
                    return True
            else:
                stack.extend(v for v in node.values() if isinstance(v, (list, dict)))
    return False
