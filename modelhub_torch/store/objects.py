"""Immutable, content-addressed objects named by the BLAKE3 hash of their bytes.

Written under a temporary name while streaming, then moved to ``objects/ab/cdef..``;
an object therefore exists whole or not at all. ``check`` re-hashes (dulwich style).
BLAKE3 rather than SHA-256: cryptographic and ~6 GB/s on one core here, so hashing
never bounds commit throughput (SHA-256 ran at 1.2 GB/s).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import blake3

from modelhub_torch.errors import CorruptObjectError
from modelhub_torch.store.location import Location
from modelhub_torch.validate import check_object_id, is_object_id

OBJECTS = "objects"
# ranges ending below this are read without asking the object's size first; a longer
# one is checked against it, so a damaged manifest cannot make a read allocate what
# the object does not hold
CHECKED_READ_BYTES = 64 << 20


def hash_bytes(data: bytes | memoryview) -> str:
    return blake3.blake3(data, max_threads=1).hexdigest()


class ObjectWriter:
    """Streams one object to a temp file, hashing as it goes; ``commit`` names it."""

    def __init__(self, store: ObjectStore):
        self._store = store
        self._tmp = store.loc.temp_name()
        self._fh = store.loc.open_write(self._tmp)
        self._hash = blake3.blake3(max_threads=1)
        self.size = 0
        self.object_id: str | None = None

    def write(self, data: bytes | memoryview) -> int:
        """Append bytes; returns the offset where they start."""
        offset = self.size
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)
        return offset

    def commit(self) -> str:
        if self.object_id is None:
            if self._store.loc.is_local:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            oid = self._hash.hexdigest()
            if self._store.exists(oid):
                self._store.loc.delete(self._tmp)
            else:
                self._store.loc.move(self._tmp, self._store.rel(oid))
            self.object_id = oid
        return self.object_id

    def abort(self) -> None:
        """Drop the unfinished object; its temp file goes even when closing fails
        (a full disk fails the flush in close())."""
        if self.object_id is None:
            try:
                self._fh.close()
            except OSError:
                pass
            finally:
                self._store.loc.delete(self._tmp)


class MappedObjects:
    """Read-only mappings of the local objects one load reads, kept while it runs
    (thread-safe; at most ``limit``, as each holds a file descriptor)."""

    def __init__(self, limit: int = 32):
        self.limit = limit
        self._views: dict[tuple[str, str], memoryview] = {}
        self._lock = threading.Lock()

    def view(self, loc: Location, oid: str) -> memoryview | None:
        key = (loc.url, oid)  # no path built on a hit: this runs once per plane read
        with self._lock:
            hit = self._views.get(key)
        if hit is not None or not loc.is_local:
            return hit
        view = loc.map_file(ObjectStore.rel(oid))
        if view is not None:
            with self._lock:
                if len(self._views) >= self.limit:
                    self._views.pop(next(iter(self._views)))
                self._views[key] = view
        return view

    def clear(self) -> None:
        with self._lock:
            self._views.clear()


class ObjectStore:
    """Content-addressed blobs under ``<root>/objects``.

    ``cold``: a second tier (any fsspec location) that ``archive`` moves low-order plane
    packs to. Reads try this store first, then the cold one, so where an object lives is
    invisible to readers; objects are named by content, so moving one changes no name.
    """

    def __init__(self, loc: Location, cold: Location | None = None):
        self.loc = loc
        self.cold = ObjectStore(cold) if cold is not None else None

    @staticmethod
    def rel(oid: str) -> str:
        """Path of an object under the root; refuses anything but an object id, so a
        name read from a repository can never point outside ``objects/``."""
        check_object_id(oid, "object name")
        return os.path.join(OBJECTS, oid[:2], oid[2:])

    def writer(self) -> ObjectWriter:
        return ObjectWriter(self)

    def put(self, data: bytes) -> str:
        w = self.writer()
        w.write(data)
        return w.commit()

    def exists(self, oid: str) -> bool:
        if self.loc.exists(self.rel(oid)):
            return True
        return self.cold is not None and self.cold.exists(oid)

    def is_cold(self, oid: str) -> bool:
        """Whether the object lives in the cold tier only."""
        return self.cold is not None and not self.loc.exists(self.rel(oid)) and self.cold.exists(oid)

    def size(self, oid: str) -> int:
        try:
            return self.loc.size(self.rel(oid))
        except FileNotFoundError:
            if self.cold is not None:
                return self.cold.size(oid)
            raise self._missing(oid) from None

    def get(self, oid: str, verify: bool = True) -> bytes:
        rel = self.rel(oid)
        try:
            data = self.loc.read(rel)
        except FileNotFoundError:
            if self.cold is not None:
                return self.cold.get(oid, verify)
            raise self._missing(oid) from None
        except (IsADirectoryError, NotADirectoryError):
            raise self._not_a_file(oid) from None
        if verify and hash_bytes(data) != oid:
            raise CorruptObjectError(
                f"object {oid} is corrupt (its bytes no longer hash to its name); "
                "restore it from a copy of the repository or run 'modelhub verify'"
            )
        return data

    def get_ranges(
        self, oid: str, ranges: list[tuple[int, int]], mapped: MappedObjects | None = None
    ) -> list[bytes | memoryview]:
        """Byte ranges of one object; callers verify what they decode (tensor digests).

        ``mapped``: memory-mapped objects the caller keeps for one load (a version's
        plane packs are read tensor after tensor); with it, ranges of local objects
        come back as zero-copy views of the mapping.
        """
        for off, n in ranges:
            if off < 0 or n < 0:
                raise CorruptObjectError(f"bad byte range ({off}, {n}) of object {oid}: a manifest is damaged")
        try:
            # a mapping exists only for a checked object id; any other path goes through
            # rel(), which checks it (no path is built on a hit: this runs once per plane)
            view = mapped.view(self.loc, oid) if mapped is not None else None
            if view is not None:
                parts: list[bytes | memoryview] = [view[off : off + n] for off, n in ranges]
            else:
                rel = self.rel(oid)
                self._check_ranges(oid, rel, ranges)
                parts = list(self.loc.read_ranges(rel, ranges))
        except FileNotFoundError:
            if self.cold is not None:
                return self.cold.get_ranges(oid, ranges, mapped)
            raise self._missing(oid) from None
        except (IsADirectoryError, NotADirectoryError):
            raise self._not_a_file(oid) from None
        for (off, n), part in zip(ranges, parts):
            if len(part) != n:
                raise CorruptObjectError(
                    f"object {oid} is truncated: wanted {n} bytes at offset {off}, got {len(part)}"
                )
        return parts

    def _check_ranges(self, oid: str, rel: str, ranges: list[tuple[int, int]]) -> None:
        """Ranges ending past ``CHECKED_READ_BYTES`` must lie inside the object: reading
        them would otherwise allocate what a (damaged) manifest claims, not what is there."""
        end = max((off + n for off, n in ranges), default=0)
        if end > CHECKED_READ_BYTES and end > self.loc.size(rel):
            raise CorruptObjectError(
                f"object {oid} is truncated or a manifest is damaged: a frame ends at byte {end}, "
                f"past the object's {self.loc.size(rel)} bytes; run 'modelhub verify'"
            )

    def check(self, oid: str) -> bool:
        try:
            self.get(oid, verify=True)
        except CorruptObjectError:
            return False
        return True

    def delete(self, oid: str) -> None:
        self.loc.delete(self.rel(oid))
        if self.cold is not None:
            self.cold.delete(oid)

    def __iter__(self) -> Iterator[str]:
        """Every object id, in either tier (an id held by both is listed twice)."""
        for rel in self.loc.walk_files(OBJECTS):
            parts = rel.replace("\\", "/").split("/")
            if len(parts) == 3 and len(parts[1]) == 2 and is_object_id(parts[1] + parts[2]):
                yield parts[1] + parts[2]
        if self.cold is not None:
            yield from self.cold

    @staticmethod
    def _not_a_file(oid: str) -> CorruptObjectError:
        return CorruptObjectError(
            f"object {oid} is not a file (a folder stands in its place); the repository is "
            "damaged — run 'modelhub verify'"
        )

    @staticmethod
    def _missing(oid: str) -> CorruptObjectError:
        return CorruptObjectError(
            f"object {oid} is missing from the repository; restore it from a copy "
            "or run 'modelhub verify' to list every affected version"
        )
