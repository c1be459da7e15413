"""Checking and reading a stored skeleton without torch.

A skeleton comes from a repository, which is untrusted: every tag, companion key,
value type, tensor index and allow-listed name is checked here, iteratively, before
:func:`modelhub_torch.skeleton.unflatten` touches it — and before the index stores a
manifest, which must not need torch (``list`` and ``query`` start without it). Where
a checkpoint keeps its weights (:func:`state_dict_paths`) is read here too, for
``desc`` and ``diff``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
# companion keys each tag may carry besides itself
_COMPANIONS: dict[str, frozenset[str]] = {
    "$t": frozenset({"np", "param"}),
    "$dict": frozenset({"cls"}),
    "$np": frozenset({"v"}),
    "$bytes": frozenset({"mutable"}),
    "$set": frozenset({"frozen"}),
    **{tag: frozenset() for tag in ("$tuple", "$float", "$size", "$dtype", "$device", "$pickle")},
}
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_INT64 = (-(1 << 63), (1 << 63) - 1)


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


def _check_node(node: dict, tag: str, live: Sequence[bool]) -> list[Any]:
    """Check one tagged node's own values; returns the children still to check."""
    value = node[tag]
    if tag == "$t":
        if not is_int(value) or not 0 <= value < len(live) or not live[value]:
            raise _Bad(node, f"tensor index {str(value)[:40]} names no stored tensor (of {len(live)})")
        if not all(isinstance(node.get(k, False), bool) for k in ("np", "param")):
            raise _Bad(node, "tensor flags 'np' and 'param' must be true or false")
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


def check_skeleton(skeleton: Any, live: Sequence[bool], where: str = "skeleton") -> None:
    """Refuse a skeleton that :func:`unflatten` could not rebuild exactly: unknown tags
    or keys, values of the wrong type, tensor indices out of range or naming a pruned
    tensor (``live[i]`` False), names outside the allow-lists, nesting deeper than
    MAX_DEPTH. Iterative, so a deep document cannot exhaust the stack here; the path
    of a bad node is worked out only when there is one."""
    try:
        _walk(skeleton, live)
    except _Bad as bad:
        node, what = bad.args
        raise FormatError(f"{where} at {_path_of(skeleton, node)}: {what}") from None


def _walk(skeleton: Any, live: Sequence[bool]) -> None:
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
            children = _check_node(node, _tag(node), live)
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
    under ``"state_dict"`` (or ``"model"`` / ``"model_state_dict"``).
    """

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
            return {k: v["$t"] for k, v in inner.items()}
    if top and all(_tensor_node(v) for v in top.values()):
        return {k: v["$t"] for k, v in top.items()}
    return {}


def _tensor_node(v: Any) -> bool:
    return isinstance(v, dict) and is_int(v.get("$t")) and v["$t"] >= 0
