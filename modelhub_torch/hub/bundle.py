"""How objects travel in one request: a batch of ``(object id, bytes)`` framed as
64 ASCII hex digits, an 8-byte big-endian length, then the bytes; repeated.

Objects are content-addressed (BLAKE3 of their bytes), so the receiver checks each one
against its name before any is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO

from modelhub_torch.errors import ModelHubError
from modelhub_torch.validate import is_object_id
from modelhub_torch.validate import object_id_of as hash_bytes

HEADER = 72


class BadBundleError(ModelHubError, ValueError):
    """A batch of objects that is cut short, malformed, or holds an object whose bytes
    do not match its name."""


def frame(oid: str, data: bytes | memoryview) -> bytes:
    return oid.encode("ascii") + len(data).to_bytes(8, "big")


def encode(objects: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    for oid, data in objects:
        yield frame(oid, data)
        yield bytes(data)


def decode(fh: IO[bytes], limit: int) -> Iterator[tuple[str, bytes]]:
    """The objects of a batch, each checked against its name (BadBundleError on the
    first that is not what its name says)."""
    while True:
        head = fh.read(HEADER)
        if not head:
            return
        if len(head) < HEADER:
            raise BadBundleError("the object batch ends inside a header: it was cut short; send it again")
        oid = head[:64].decode("ascii", "replace")
        size = int.from_bytes(head[64:], "big")
        if not is_object_id(oid):
            raise BadBundleError(f"{oid!r} is not an object id (64 lowercase hex digits)")
        if size > limit:
            raise BadBundleError(f"object {oid[:12]} claims {size:,} bytes, over the limit of {limit:,}")
        data = fh.read(size)
        if len(data) != size:
            raise BadBundleError(f"object {oid[:12]} is cut short ({len(data):,} of {size:,} bytes); send it again")
        if hash_bytes(data) != oid:
            raise BadBundleError(
                f"object {oid[:12]} does not match its name (its bytes hash to {hash_bytes(data)[:12]}): "
                "it was damaged or forged; nothing of this batch was stored"
            )
        yield oid, data
