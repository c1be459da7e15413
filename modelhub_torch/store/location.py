"""A repository root on a local disk or any fsspec URL, with atomic small-file writes.

Local paths bypass fsspec for speed (os.pread, os.replace, os.link). Object stores
(S3, GCS, Azure, memory) replace a whole object per PUT, atomically, so a file is
written by one PUT, never under a temporary name and moved (a move is a copy and a
delete there). Other fsspec URLs (sftp, ...) write a temporary name and move it.

Conditional writes — the only cross-process coordination a remote repository has —
are ``create_exclusive`` (if no file is there), ``replace_if_match`` and
``delete_if_match`` (if the file is still what the caller read, by the ETag or token
``read_with_etag`` gave). They are atomic on local disks (``os.link``; callers hold
the flock anyway) and on S3 (``If-None-Match: *`` / ``If-Match``); on other fsspec
stores they check, then write: best effort, with a window in which two writers both
succeed (ARCHITECTURE.md, "Object stores and concurrent writers").
"""

from __future__ import annotations

import datetime as _dt
import mmap
import os
import posixpath
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import blake3
import fsspec

from modelhub_torch.store import s3

# fsspec protocols where one PUT replaces a whole object atomically (no reader ever
# sees part of one): files are written in place there, without a temporary name
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "memory"})
# objects up to this size are uploaded from memory in one PUT; bigger ones stream
# (multipart on S3, completed atomically)
PUT_BYTES = 64 << 20


class NotAFileError(IsADirectoryError):
    """Something other than a regular file (a FIFO, a device, a socket) stands where a
    file should be; handled like a folder there, as damage, never opened for reading
    (opening a FIFO would block the reader forever)."""


def _open_regular(path: str) -> int:
    """A read-only descriptor of ``path`` if it is a regular file (a symlink to one is)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAFileError(f"{path} is not a regular file")
    return fd


def _token(data: bytes) -> str:
    """The stand-in for an ETag where the store has none: the content's hash."""
    return "b3:" + blake3.blake3(data, max_threads=1).hexdigest()


def _mtime(info: dict[str, Any]) -> float | None:
    """Seconds since the epoch an fsspec listing entry was last written, if it says."""
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, _dt.datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


class Location:
    """A directory-like root: ``join``, ``read``, ``write_atomic``, ``listdir``...

    ``storage_options``: fsspec's keyword arguments for the filesystem (``key``,
    ``secret``, ``endpoint_url``, ``client_kwargs``...), merged by fsspec with its
    configuration (``FSSPEC_S3_*`` environment variables, config files). Listings are
    not cached on object stores unless the options ask for it: other processes write
    there, and a cached listing would hide their versions.
    """

    def __init__(self, path_or_url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        text = os.fspath(path_or_url)
        self.url = text
        self.storage_options = dict(storage_options or {})
        protocol, _, rest = text.partition("://")
        if not rest or protocol in ("file", "local"):
            local = rest if rest else text
            self.local: Path | None = Path(local).expanduser().resolve()
            self.fs = fsspec.filesystem("file")
            self.root = str(self.local)
            self.url = str(self.local)
            self.protocol = "file"
        elif protocol in ("http", "https"):  # a hub (hub/fs.py): read-only here, pushed to by API
            from modelhub_torch.hub.fs import HubFileSystem

            self.local = None
            self.url = text.rstrip("/")
            self.protocol = protocol
            self.fs = HubFileSystem(self.url, **self.storage_options)
            self.root = "/"
        else:
            self.local = None
            self.url = text.rstrip("/") if rest.strip("/") else text  # s3://b/hub/ is s3://b/hub
            self.protocol = protocol
            opts = dict(self.storage_options)
            if protocol in OBJECT_STORES and protocol != "memory":
                opts.setdefault("use_listings_cache", False)
            self.fs, self.root = fsspec.core.url_to_fs(text, **opts)
            self.root = self.root.rstrip("/") or "/"
        self.object_store = self.protocol in OBJECT_STORES
        self._s3 = s3.is_s3(self.fs)

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def conditional_writes(self) -> bool:
        """Whether create/replace-if-match are atomic here across processes and machines
        (local disks and S3); elsewhere they are a check followed by a write."""
        return self.local is not None or self._s3

    @property
    def identity(self) -> str:
        """The URL plus the endpoint it is served from (one bucket name on two S3
        servers is two repositories)."""
        opts = getattr(self.fs, "storage_options", None) or {}
        endpoint = opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
        return f"{self.url} @ {endpoint}" if endpoint else self.url

    def options_for(self, url: str) -> dict[str, Any] | None:
        """The storage options another location (a cold tier) inherits: this one's when
        it is on the same kind of store (the same credentials and endpoint apply)."""
        protocol = url.partition("://")[0] if "://" in url else "file"
        return self.storage_options if protocol == self.protocol and self.storage_options else None

    def path(self, *parts: str) -> str:
        if self.local is not None:
            return os.path.join(self.root, *parts)
        return posixpath.join(self.root, *parts)

    # ------------------------------------------------------------------ queries
    def exists(self, *parts: str) -> bool:
        p = self.path(*parts)
        if self.local is not None:
            return os.path.exists(p)
        self.fs.invalidate_cache(p)
        return bool(self.fs.exists(p))

    def size(self, *parts: str) -> int:
        p = self.path(*parts)
        return os.path.getsize(p) if self.local is not None else int(self.fs.size(p))

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a folder; empty when it does not exist."""
        p = self.path(*parts)
        if self.local is not None:
            try:
                return sorted(os.listdir(p))
            except (FileNotFoundError, NotADirectoryError):  # a file where a folder should be
                return []
        try:  # one listing request, never answered from a cache: others write here too
            entries = self.fs.ls(p, detail=False, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = (posixpath.basename(x.rstrip("/")) for x in entries if x.rstrip("/") != p)
        return sorted(n for n in names if n)

    def walk_files(self, *parts: str) -> Iterator[str]:
        """Relative paths of every file below a folder."""
        base = self.path(*parts)
        if self.local is not None:
            for dirpath, _, files in os.walk(base):
                for f in files:
                    yield os.path.relpath(os.path.join(dirpath, f), self.root)
            return
        for f, _ in self._find(base):
            yield posixpath.relpath(f, self.root)

    def walk_mtimes(self, *parts: str) -> Iterator[tuple[str, float | None]]:
        """``(relative path, last written)`` of every file below a folder, from the
        listing itself (no request per file); None where the store does not say."""
        base = self.path(*parts)
        if self.local is not None:
            for rel in self.walk_files(*parts):
                try:
                    yield rel, os.stat(self.path(rel)).st_mtime
                except FileNotFoundError:
                    continue
            return
        for f, info in self._find(base):
            yield posixpath.relpath(f, self.root), _mtime(info)

    def _find(self, base: str) -> list[tuple[str, dict[str, Any]]]:
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        return sorted((name, info) for name, info in found.items() if info.get("type", "file") == "file")

    # ------------------------------------------------------------------- reads
    def read(self, *parts: str) -> bytes:
        p = self.path(*parts)
        if self.local is not None:
            with open(_open_regular(p), "rb") as fh:
                return fh.read()
        if self._s3:
            return s3.get(self.fs, p)[0]  # one GET (cat_file asks the size first)
        return self.fs.cat_file(p)

    def read_with_etag(self, rel: str) -> tuple[bytes, str]:
        """A file and the tag ``replace_if_match``/``delete_if_match`` compare with:
        S3's ETag, else a hash of the content. FileNotFoundError when absent."""
        if self._s3:
            return s3.get(self.fs, self.path(rel))
        data = self.read(rel)
        return data, _token(data)

    def read_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read ``(offset, length)`` ranges of one file with one open."""
        p = self.path(name)
        if self.local is not None:
            fd = _open_regular(p)
            try:
                return [os.pread(fd, n, off) for off, n in ranges]
            finally:
                os.close(fd)
        wanted = [(off, n) for off, n in ranges if n > 0]  # an empty range is no request
        if not wanted:
            return [b"" for _ in ranges]
        if len(wanted) == 1:
            got = [self.fs.cat_file(p, start=wanted[0][0], end=wanted[0][0] + wanted[0][1])]
        else:  # concurrent requests where the filesystem is async (s3fs)
            got = self.fs.cat_ranges([p] * len(wanted), [o for o, _ in wanted], [o + n for o, n in wanted])
        it = iter(got)
        return [next(it) if n > 0 else b"" for _, n in ranges]

    def map_file(self, name: str) -> memoryview | None:
        """A local file mapped read-only, for zero-copy reads of big frames (the page
        cache's pages themselves, no copy into fresh buffers); None where the location
        is not local or the file is empty. Objects are immutable and replaced only by
        rename, so a mapping never sees a file change under it."""
        if self.local is None:
            return None
        with open(_open_regular(self.path(name)), "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))

    # ------------------------------------------------------------------ writes
    def makedirs(self, *parts: str) -> None:
        p = self.path(*parts)
        if self.local is not None:
            os.makedirs(p, exist_ok=True)
        else:
            self.fs.makedirs(p, exist_ok=True)

    def temp_name(self) -> str:
        return os.path.join("tmp", f"{uuid.uuid4().hex}.tmp")

    def open_write(self, rel: str) -> IO[bytes]:
        p = self.path(rel)
        if self.local is not None:
            try:  # the folder exists but the first time: no mkdir call per write
                return open(p, "wb")
            except FileNotFoundError:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                return open(p, "wb")
        self.fs.makedirs(posixpath.dirname(p), exist_ok=True)
        return self.fs.open(p, "wb")

    def move(self, src_rel: str, dst_rel: str) -> None:
        """Rename into place; atomic on a local disk (os.replace)."""
        src, dst = self.path(src_rel), self.path(dst_rel)
        if self.local is not None:
            try:
                os.replace(src, dst)
            except FileNotFoundError:
                if not os.path.exists(src):
                    raise
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
        else:
            self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
            self.fs.mv(src, dst)

    def write_atomic(self, rel: str, data: bytes, durable: bool = True) -> None:
        """Write a whole file so readers see the old or the new content, never a part."""
        if self.object_store:
            self.fs.pipe_file(self.path(rel), data)  # one PUT: atomic on an object store
            return
        tmp = self.temp_name()
        try:
            with self.open_write(tmp) as fh:
                fh.write(data)
                if durable and self.local is not None:
                    fh.flush()
                    os.fsync(fh.fileno())
            self.move(tmp, rel)
        except BaseException:
            try:  # a failed write (disk full, quota) leaves nothing behind in tmp/
                self.delete(tmp)
            except OSError:
                pass
            raise

    def put_new(self, rel: str, data: bytes | IO[bytes], size: int) -> None:
        """Upload an immutable file (an object) to its final name on an object store:
        one PUT (``If-None-Match: *`` on S3: an object already there, which holds the
        same bytes, is neither re-sent twice nor replaced); bigger ones stream."""
        p = self.path(rel)
        if size <= PUT_BYTES:
            body = data if isinstance(data, bytes) else data.read()
            if self._s3:
                s3.put(self.fs, p, body, create=True)
            else:
                self.fs.pipe_file(p, body)
            return
        try:
            with self.fs.open(p, "xb" if self._s3 else "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    shutil.copyfileobj(data, out, 8 << 20)
        except FileExistsError:
            pass

    def create_exclusive(self, rel: str, data: bytes) -> str | None:
        """Create a file only if none is there. Its tag (see ``read_with_etag``), or
        None when one existed. Atomic on local disks and S3; elsewhere a check, then a
        write."""
        p = self.path(rel)
        if self.local is not None:
            return self._link_new(p, data)
        if self._s3:
            return s3.put(self.fs, p, data, create=True)
        self.fs.invalidate_cache(p)
        if self.fs.exists(p):
            return None
        self.write_atomic(rel, data)
        return _token(data)

    def _link_new(self, p: str, data: bytes) -> str | None:
        """Local create-if-absent: the content is written and synced under a temporary
        name, then hard-linked to its name (atomic, and fails if the name exists), so
        no reader sees a partial file."""
        tmp = self.path(self.temp_name())
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            os.link(tmp, p)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return _token(data)

    def replace_if_match(self, rel: str, data: bytes, etag: str) -> str | None:
        """Replace a file only while it still has the tag ``read_with_etag`` gave; the
        new tag, or None when another writer changed or removed it meanwhile."""
        if self._s3:
            return s3.put(self.fs, self.path(rel), data, if_match=etag)
        try:
            if self.read_with_etag(rel)[1] != etag:
                return None
        except FileNotFoundError:
            return None
        self.write_atomic(rel, data)
        return _token(data)

    def delete_if_match(self, rel: str, etag: str) -> bool:
        """Delete a file only while it still has the tag the caller read."""
        if self._s3:
            return s3.delete_if_match(self.fs, self.path(rel), etag)
        try:
            if self.read_with_etag(rel)[1] != etag:
                return False
        except FileNotFoundError:
            return False
        self.delete(rel)
        return True

    def delete(self, rel: str) -> None:
        p = self.path(rel)
        if self.local is not None:
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
            return
        try:  # one request; deleting a missing object is no error on object stores
            self.fs.rm_file(p)
        except FileNotFoundError:
            pass
