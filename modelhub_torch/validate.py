"""Shapes of the names a repository stores, checked before they are used.

A repository is untrusted input: a ref file or a manifest may hold anything. Names are
checked here before they become paths (``objects/<oid>``) or lookups, so a damaged or
booby-trapped repository can never make the library read or write outside its root.
"""

from __future__ import annotations

import re

import blake3

from modelhub_torch.errors import FormatError

_OBJECT_ID = re.compile(r"[0-9a-f]{64}")
_VERSION_ID = re.compile(r"[0-9a-f]{32}")


def object_id_of(data: bytes | memoryview) -> str:
    """The name an object's bytes give it: BLAKE3-256, hex."""
    return blake3.blake3(data, max_threads=1).hexdigest()


def is_object_id(s: object) -> bool:
    """A BLAKE3-256 hex name of an object (64 lowercase hex digits)."""
    return isinstance(s, str) and _OBJECT_ID.fullmatch(s) is not None


def is_version_id(s: object) -> bool:
    """A version id (32 lowercase hex digits)."""
    return isinstance(s, str) and _VERSION_ID.fullmatch(s) is not None


def check_object_id(s: object, where: str) -> str:
    if not is_object_id(s):
        raise FormatError(f"{where}: {str(s)[:80]!r} is not an object id (64 hex digits)")
    return s  # type: ignore[return-value]


def check_version_id(s: object, where: str) -> str:
    if not is_version_id(s):
        raise FormatError(f"{where}: {str(s)[:80]!r} is not a version id (32 hex digits)")
    return s  # type: ignore[return-value]
