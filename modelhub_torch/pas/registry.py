"""Codecs are data: plane coders and delta ops are looked up here by their stable id.

A manifest names how each frame was coded (``"rans8"``) and how each delta was taken
(``"sub"``); readers find the implementation by that id, as numcodecs' registry does.
An id this package does not know is not damage: a newer modelhub_torch wrote it, and
the fix is to upgrade, not to run ``modelhub verify``. Lookups happen once per frame
or tensor, never per element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from modelhub_torch.errors import FormatError, NewerFormatError
from modelhub_torch.kernels.ops import OP_NONE, OP_SUB, OP_XOR

UPGRADE = "written by a newer modelhub_torch: upgrade modelhub_torch (pip install -U modelhub_torch) to read it"


def is_id(value: object) -> bool:
    """A string that can be an id of some version (a coder, op, kind or feature): an
    unknown one is a newer version's; anything else where an id belongs is damage."""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()


def newer(where: str, what: str) -> NewerFormatError:
    """The error for data of a kind this version cannot know (not damage)."""
    return NewerFormatError(f"{where}: {what} — {UPGRADE}")


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


E = TypeVar("E", bound=_HasId)


class Registry(Generic[E]):
    """Entries of one kind (``what``: "frame coder", "delta op") by their stable id."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, E] = {}

    def register(self, entry: E) -> E:
        if entry.id in self._entries:
            raise ValueError(f"{self.what} {entry.id!r} is registered twice")
        self._entries[entry.id] = entry
        return entry

    def get(self, id: object, where: str) -> E:
        """The entry named ``id``; a string nobody registered was written by a newer
        version (NewerFormatError), anything else is damage (FormatError)."""
        entry = self._entries.get(id) if isinstance(id, str) else None
        if entry is not None:
            return entry
        if is_id(id):
            raise newer(where, f"{self.what} {id!r} is unknown (this version knows {', '.join(self._entries)})")
        raise FormatError(
            f"{where}: {self.what} {repr(id)[:80]} is not a {self.what} id; "
            "the data is damaged — run 'modelhub verify'"
        )

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def ids(self) -> frozenset[str]:
        return frozenset(self._entries)


# ``decode(payload, size, where, ctx)`` -> the plane's ``size`` bytes
PlaneDecoder = Callable[["bytes | memoryview", int, str, "np.ndarray | None"], "bytes | memoryview"]


@dataclass(frozen=True)
class PlaneCoder:
    """How one frame's bytes become one plane (FORMAT.md, "frames").

    ``feature``: the format feature (``modelhub.json``'s ``features``) a frame of this
    coder needs its reader to know; None for the coders every format-1 reader has.
    ``needs_context``: decoding needs the per-element context of the delta."""

    id: str
    decode: PlaneDecoder
    feature: str | None = None
    needs_context: bool = False


@dataclass(frozen=True)
class DeltaOp:
    """How a tensor is coded against its base: ``kernel_op`` is the code the plane
    kernels (kernels/planes.py) switch on; ``lanes`` whether ``lane`` applies."""

    id: str
    kernel_op: int
    lanes: bool = False


PLANE_CODERS: Registry[PlaneCoder] = Registry("frame coder")  # filled by pas/entropy.py
DELTA_OPS: Registry[DeltaOp] = Registry("delta op")
DELTA_OPS.register(DeltaOp("none", OP_NONE))
DELTA_OPS.register(DeltaOp("xor", OP_XOR))
DELTA_OPS.register(DeltaOp("sub", OP_SUB, lanes=True))
