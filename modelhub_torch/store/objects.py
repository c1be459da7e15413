"""Immutable, content-addressed objects named by the BLAKE3 hash of their bytes.

Written under a temporary name while streaming, then moved to ``objects/ab/cdef..``;
an object therefore exists whole or not at all. On object stores (S3...) the bytes
are spooled locally (memory, then a temp file) and uploaded once to their final name
when the hash is known: a PUT is atomic there, and a move would copy it again. ``check`` re-hashes (dulwich style).
BLAKE3 rather than SHA-256: cryptographic and ~6 GB/s on one core here, so hashing
never bounds commit throughput (SHA-256 ran at 1.2 GB/s).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import blake3

from modelhub_torch.errors import CorruptObjectError
from modelhub_torch.store.location import Location
from modelhub_torch.validate import check_object_id, is_object_id, object_id_of

OBJECTS = "objects"
# ranges ending below this are read without asking the object's size first; a longer
# one is checked against it, so a damaged manifest cannot make a read allocate what
# the object does not hold
CHECKED_READ_BYTES = 64 << 20
# an object store's object is spooled in memory up to this size, then in a temp file
SPOOL_BYTES = 16 << 20
# a remote pack expected to be at most this big is fetched whole by the first load that
# reads from it (see MappedObjects); bigger ones are read range by range
WHOLE_READ_BYTES = 32 << 20


hash_bytes = object_id_of  # an object's name from its bytes (validate.py)


class ObjectWriter:
    """Streams one object to a temp file, hashing as it goes; ``commit`` names it."""

    def __init__(self, store: ObjectStore):
        self._store = store
        self._spooled = store.loc.object_store
        self._tmp = None if self._spooled else store.loc.temp_name()
        self._fh: Any = (
            tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - closed by commit/abort
            if self._tmp is None
            else store.loc.open_write(self._tmp)
        )
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
        if self.object_id is None and self._tmp is None:
            oid = self._hash.hexdigest()
            try:
                self._fh.seek(0)
                self._store.loc.put_new(self._store.rel(oid), self._fh, self.size)
            finally:
                self._fh.close()
            self.object_id = oid
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
                if self._tmp is not None:
                    self._store.loc.delete(self._tmp)


class MappedObjects:
    """Read-only mappings of the local objects one load reads, kept while it runs
    (thread-safe; at most ``limit``, as each holds a file descriptor).

    Remote objects that the caller expects to be small (``whole_hint``) are fetched
    whole on their first read and kept the same way (at most ``remote_bytes`` of
    them): a load reads every tensor's frames from each plane pack, so one GET per
    pack replaces a ranged GET per tensor and plane."""

    def __init__(self, limit: int = 32, remote_bytes: int = 256 << 20):
        self.limit = limit
        self.remote_bytes = remote_bytes
        self._views: dict[tuple[str, str], memoryview] = {}
        self._sizes: dict[tuple[str, str], int] = {}  # of the remote objects held
        self._held = 0
        self._lock = threading.Lock()

    def view(self, loc: Location, oid: str, whole_hint: int | None = None) -> memoryview | None:
        key = (loc.url, oid)  # no path built on a hit: this runs once per plane read
        with self._lock:
            hit = self._views.get(key)
        if hit is not None:
            return hit
        if loc.is_local:
            view = loc.map_file(ObjectStore.rel(oid))
        elif whole_hint is not None and whole_hint <= min(WHOLE_READ_BYTES, self.remote_bytes):
            view = memoryview(loc.read(ObjectStore.rel(oid)))
        else:
            return None
        if view is not None:
            self._keep(key, view, 0 if loc.is_local else len(view))
        return view

    def _keep(self, key: tuple[str, str], view: memoryview, size: int) -> None:
        """Hold ``view`` (``size``: its bytes when fetched, 0 when mapped), dropping the
        oldest held while over either limit."""
        with self._lock:
            while self._views and (len(self._views) >= self.limit or self._held + size > self.remote_bytes):
                old = next(iter(self._views))
                del self._views[old]
                self._held -= self._sizes.pop(old, 0)
            self._views[key] = view
            if size:
                self._sizes[key] = size
                self._held += size

    def clear(self) -> None:
        with self._lock:
            self._views.clear()
            self._sizes.clear()
            self._held = 0


class ObjectStore:
    """Content-addressed blobs under ``<root>/objects``.

    ``cold``: a second tier (any fsspec location) that ``archive`` moves low-order plane
    packs to. Reads try this store first, then the cold one, so where an object lives is
    invisible to readers; objects are named by content, so moving one changes no name.
    """

    def __init__(self, loc: Location, cold: Location | None = None):
        self.loc = loc
        self.cold = ObjectStore(cold) if cold is not None else None
        # where a cold tier set up since this store was opened (an archive in another
        # process) is found: called when an object is missing and there is no cold tier
        self.find_cold: Any = None

    @staticmethod
    def rel(oid: str) -> str:
        """Path of an object under the root; refuses anything but an object id, so a
        name read from a repository can never point outside ``objects/``."""
        check_object_id(oid, "object name")
        return os.path.join(OBJECTS, oid[:2], oid[2:])

    def _cold(self) -> ObjectStore | None:
        """The cold tier, looked for again when there was none (a reader opened before
        another process archived finds the objects that archive moved)."""
        if self.cold is None and self.find_cold is not None:
            found = self.find_cold()
            if found is not None:
                self.cold = ObjectStore(found)
        return self.cold

    def writer(self) -> ObjectWriter:
        return ObjectWriter(self)

    def put(self, data: bytes) -> str:
        if self.loc.object_store:  # one PUT from memory, no spool
            oid = hash_bytes(data)
            self.loc.put_new(self.rel(oid), data, len(data))
            return oid
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
            if self._cold() is not None:
                return self.cold.size(oid)
            raise self._missing(oid) from None

    def get(self, oid: str, verify: bool = True) -> bytes:
        rel = self.rel(oid)
        try:
            data = self.loc.read(rel)
        except FileNotFoundError:
            if self._cold() is not None:
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
        self,
        oid: str,
        ranges: list[tuple[int, int]],
        mapped: MappedObjects | None = None,
        whole_hint: int | None = None,
    ) -> list[bytes | memoryview]:
        """Byte ranges of one object; callers verify what they decode (tensor digests).

        ``mapped``: memory-mapped objects the caller keeps for one load (a version's
        plane packs are read tensor after tensor); with it, ranges of local objects
        come back as zero-copy views of the mapping, and remote objects of at most
        ``whole_hint`` bytes (the caller's estimate) are fetched whole, once.
        """
        for off, n in ranges:
            if off < 0 or n < 0:
                raise CorruptObjectError(f"bad byte range ({off}, {n}) of object {oid}: a manifest is damaged")
        try:
            # a mapping exists only for a checked object id; any other path goes through
            # rel(), which checks it (no path is built on a hit: this runs once per plane)
            view = mapped.view(self.loc, oid, whole_hint) if mapped is not None else None
            if view is not None:
                parts: list[bytes | memoryview] = [view[off : off + n] for off, n in ranges]
            else:
                rel = self.rel(oid)
                self._check_ranges(oid, rel, ranges)
                parts = list(self.loc.read_ranges(rel, ranges))
        except FileNotFoundError:
            if self._cold() is not None:
                return self.cold.get_ranges(oid, ranges, mapped, whole_hint)
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
            oid = self._id_of(rel)
            if oid is not None:
                yield oid
        if self.cold is not None:
            yield from self.cold

    def with_mtimes(self) -> Iterator[tuple[str, float | None]]:
        """Every object id with when it was written (from the listing; None where the
        store does not say), in either tier."""
        for rel, mtime in self.loc.walk_mtimes(OBJECTS):
            oid = self._id_of(rel)
            if oid is not None:
                yield oid, mtime
        if self.cold is not None:
            yield from self.cold.with_mtimes()

    @staticmethod
    def _id_of(rel: str) -> str | None:
        parts = rel.replace("\\", "/").split("/")
        if len(parts) == 3 and len(parts[1]) == 2 and is_object_id(parts[1] + parts[2]):
            return parts[1] + parts[2]
        return None

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
