"""Tensors that share storage: which tensor is stored for them, and how each is rebuilt.

torch.save writes each storage once and every tensor as (storage, offset, size,
stride, conj/neg bits, requires_grad); torch.load gives back views that share memory.
:func:`plan_leaves` finds, among the tensors of one checkpoint, those on one storage
and picks what to store for them, so that :class:`Rebuilder` gives back what torch.load
would:

- one contiguous tensor owning its whole storage (the common case): stored as it is,
  named by a bare node — no copy, no byte, no field more than before views existed;
- a tensor covering its whole storage in another order (channels_last, a transpose):
  stored in its logical (C) order, as before, so deltas, ``load_weights``, ``diff``
  and progressive reads see the same stored tensor; ``layout`` (its strides) places
  it in memory again on load (one copy there, none when only size-1 dimensions differ);
- several tensors on one storage, or one that does not cover it: the storage is stored
  once — as the tensor covering it in full when there is one, else as a 1-D tensor of
  all its elements (path ``<first view>/<storage>``) — and each tensor is named with
  ``size``/``stride``/``offset`` on it;
- tensors of different dtypes on one storage (which torch.save refuses): each is stored
  on its own, in C order (values exact; shared memory and strides are not kept).

Empty tensors and numpy arrays are stored on their own (numpy arrays do not share
memory after torch.load either; a Fortran-ordered one keeps its order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from modelhub_torch.errors import FormatError
from modelhub_torch.skeleton_check import dense

_NO_FIELDS: dict[str, Any] = {}  # shared by every use named by a bare node (never written to)


@dataclass(slots=True)
class Use:
    """One place the checkpoint holds a tensor. Planning sets which stored tensor its
    node names (``leaf``) and the fields that rebuild it from that one (``fields``).
    (Slots and few objects per tensor: a checkpoint may hold many thousands.)"""

    tensor: torch.Tensor
    path: str
    node: dict[str, Any]
    group: tuple  # uses that may share a stored tensor: one storage, one numpy array, one empty tensor
    numpy_order: str | None = None  # "C" or "F" for numpy arrays
    leaf: tuple = ()
    fields: dict[str, Any] = field(default_factory=lambda: _NO_FIELDS)


def group_of(t: torch.Tensor) -> tuple:
    """Tensors with the same group may share one stored tensor: those on one storage.
    An empty tensor is only ever tied to itself (empty storages share no pointer)."""
    if t.numel() == 0:
        return ("empty", id(t), *view_key(t))
    return ("storage", t.untyped_storage().data_ptr(), t.device)


def view_key(t: torch.Tensor) -> tuple:
    """What tells two tensors on one storage apart (x and x.conj() differ only in a bit)."""
    return (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype, t.is_conj(), t.is_neg())


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    """The strides torch gives a new tensor of ``shape`` (C order)."""
    out, step = [], 1
    for s in reversed(shape):
        out.append(step)
        step *= max(s, 1)
    return out[::-1]


def plan_leaves(uses: list[Use]) -> dict[tuple, tuple[torch.Tensor, str]]:
    """What to store for every tensor the checkpoint holds (``uses`` in walk order):
    sets each use's ``leaf`` and ``fields``; returns the stored tensors (with their
    paths) by leaf key."""
    first: dict[tuple, Use] = {}
    more: dict[tuple, list[Use]] = {}  # groups of more than one use only
    for u in uses:
        if first.setdefault(u.group, u) is not u:
            more.setdefault(u.group, [first[u.group]]).append(u)
    leaves: dict[tuple, tuple[torch.Tensor, str]] = {}
    for key, u in first.items():
        members = more.get(key) or [u]
        if key[0] == "storage":
            _plan_storage(key, members, leaves)
        else:
            _plan_alone(key, members, leaves)
    return leaves


def _plan_alone(key: tuple, members: list[Use], leaves: dict) -> None:
    """An empty tensor or a numpy array: stored on its own (in C order; a Fortran-
    ordered array keeps its strides as its ``layout``)."""
    first = members[0]
    leaves[key] = (first.tensor, first.path)
    fields = {"layout": list(first.tensor.stride())} if first.numpy_order == "F" else _NO_FIELDS
    for u in members:
        u.leaf, u.fields = key, fields


def _owns_storage(t: torch.Tensor) -> bool:
    """The common case: a contiguous tensor (C strides) that is its whole storage."""
    return (t.storage_offset() == 0 and t.is_contiguous() and not t.is_conj() and not t.is_neg()
            and t.numel() * t.element_size() == t.untyped_storage().nbytes()
            and (1 not in t.shape or list(t.stride()) == contiguous_strides(t.shape)))


def _plan_storage(key: tuple, members: list[Use], leaves: dict) -> None:
    """Tensors on one storage: the common case, one stored tensor for all, or (mixed
    dtypes) one per distinct tensor."""
    if len(members) == 1 and _owns_storage(members[0].tensor):  # the common case, kept cheap
        leaves[key] = (members[0].tensor, members[0].path)
        members[0].leaf = key
        return
    distinct: dict[tuple, Use] = {}  # the first use of each distinct view
    for u in members:
        distinct.setdefault(view_key(u.tensor), u)
    first = members[0].tensor
    nbytes, item = first.untyped_storage().nbytes(), first.element_size()
    if len({u.tensor.dtype for u in distinct.values()}) > 1 or nbytes % item:
        # torch.save refuses views of one storage as different dtypes: nothing to match,
        # so each is stored on its own (values exact; no shared memory, C order)
        for u in members:
            u.leaf = (*key, *view_key(u.tensor))
            leaves.setdefault(u.leaf, (u.tensor, u.path))
        return
    n = nbytes // item
    cover = _cover(list(distinct.values()), n)
    if cover is None:
        leaf = bare_storage(first, (n,), (1,))
        leaves[key] = (leaf, _storage_path(members[0].path))
        base_geometry, layout = None, None
    else:
        c = cover.tensor
        plain = not (c.is_conj() or c.is_neg())
        leaf = c if plain else bare_storage(c, tuple(c.shape), tuple(c.stride()))
        leaves[key] = (leaf, cover.path)
        base_geometry = _geometry(c)
        layout = None if list(c.stride()) == contiguous_strides(c.shape) else list(c.stride())
    for u in members:
        u.leaf, u.fields = key, _fields(u.tensor, base_geometry, layout)


def _cover(views: list[Use], n: int) -> Use | None:
    """The view to store for a storage of ``n`` elements: one that holds every element
    once (offset 0, dense), preferring C order and no lazy bit; None when none does."""
    covers = [u for u in views if u.tensor.storage_offset() == 0 and u.tensor.numel() == n
              and dense(u.tensor.shape, u.tensor.stride())]
    if not covers:
        return None

    def rank(u: Use) -> tuple[bool, bool]:
        t = u.tensor
        return list(t.stride()) != contiguous_strides(t.shape), t.is_conj() or t.is_neg()

    return min(covers, key=rank)


def _geometry(t: torch.Tensor) -> tuple:
    return (list(t.shape), list(t.stride()), t.storage_offset())


def _fields(t: torch.Tensor, base_geometry: tuple | None, layout: list[int] | None) -> dict[str, Any]:
    """The node fields that rebuild ``t`` from its storage's stored tensor."""
    fields: dict[str, Any] = {}
    if layout is not None:
        fields["layout"] = layout
    geometry = _geometry(t)
    if geometry != base_geometry:
        fields.update(size=geometry[0], stride=geometry[1], offset=geometry[2])
    if t.is_conj():
        fields["conj"] = True
    if t.is_neg():
        fields["neg"] = True
    return fields


def _storage_path(path: str) -> str:
    return f"{path}/<storage>" if path else "<storage>"


def bare_storage(t: torch.Tensor, shape: Sequence[int], stride: Sequence[int], offset: int = 0) -> torch.Tensor:
    """A fresh tensor on ``t``'s storage (no copy) with the given geometry and no lazy
    bit, autograd history or requires_grad: how torch.load builds each tensor."""
    out = torch.empty(0, dtype=t.dtype, device=t.device)
    return out.set_(t.untyped_storage(), offset, tuple(shape), tuple(stride))


# ---------------------------------------------------------------- load side
class Rebuilder:
    """Rebuilds the tensors ``$t`` nodes with view fields name from the decoded stored
    tensors (the skeleton is checked: views lie inside their tensor, layouts are dense)."""

    def __init__(self, tensors: Sequence[Any]):
        self.tensors = tensors
        self._bases: dict[int, torch.Tensor] = {}

    def tensor(self, node: dict[str, Any], i: int) -> torch.Tensor:
        """Stored tensor ``i`` as ``node`` names it: placed, viewed, with its lazy bits
        (``np``, ``param`` and ``grad`` are the caller's): a fresh tensor object on the
        stored tensor's memory."""
        base = self._base(i, node.get("layout"))
        if "size" in node:
            out = bare_storage(base, node["size"], node["stride"], base.storage_offset() + node["offset"])
        else:
            out = bare_storage(base, base.shape, base.stride(), base.storage_offset())
        bits = {k: True for k in ("conj", "neg") if node.get(k)}
        if bits:  # as torch.load sets them (a key present sets its bit, whatever its value)
            torch._utils.set_tensor_metadata(out, bits)
        return out

    def _base(self, i: int, layout: list[int] | None) -> torch.Tensor:
        """The stored tensor's memory as its views address it: its elements in C order
        from the storage offset on, or placed with ``layout`` (one placement per tensor:
        every view of it shares that memory)."""
        hit = self._bases.get(i)
        if hit is None:
            leaf = self.tensors[i]
            if not leaf.is_contiguous():  # a map_location may hand back any layout
                leaf = leaf.contiguous()
            hit = leaf if layout is None else _place(leaf, layout)
            self._bases[i] = hit
        return hit


def _place(leaf: torch.Tensor, layout: list[int]) -> torch.Tensor:
    """``leaf`` (contiguous) laid out with strides ``layout``: a copy, unless the layout
    orders the elements as C order does (it differs only on size-1 dimensions)."""
    if all(st == c for s, st, c in zip(leaf.shape, layout, contiguous_strides(leaf.shape)) if s != 1):
        return bare_storage(leaf, leaf.shape, layout, leaf.storage_offset())
    if math.prod(leaf.shape) == 0:
        raise FormatError("skeleton: a layout on an empty tensor")
    out = torch.empty_strided(tuple(leaf.shape), tuple(layout), dtype=leaf.dtype, device=leaf.device)
    with torch.no_grad():
        out.copy_(leaf)
    return out
