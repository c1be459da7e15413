"""A repository root on a local disk or any fsspec URL, with atomic small-file writes.

Local paths bypass fsspec for speed (os.pread, os.replace); every other URL goes
through fsspec, where a write lands under a temporary name and is moved into place.
"""

from __future__ import annotations

import mmap
import os
import posixpath
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import fsspec


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


class Location:
    """A directory-like root: ``join``, ``read``, ``write_atomic``, ``listdir``..."""

    def __init__(self, path_or_url: str | os.PathLike[str]):
        text = os.fspath(path_or_url)
        self.url = text
        protocol, _, rest = text.partition("://")
        if not rest or protocol in ("file", "local"):
            local = rest if rest else text
            self.local: Path | None = Path(local).expanduser().resolve()
            self.fs = fsspec.filesystem("file")
            self.root = str(self.local)
            self.url = str(self.local)
        else:
            self.local = None
            self.fs, self.root = fsspec.core.url_to_fs(text)
            self.root = self.root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        return self.local is not None

    def path(self, *parts: str) -> str:
        if self.local is not None:
            return os.path.join(self.root, *parts)
        return posixpath.join(self.root, *parts)

    # ------------------------------------------------------------------ queries
    def exists(self, *parts: str) -> bool:
        p = self.path(*parts)
        return os.path.exists(p) if self.local is not None else self.fs.exists(p)

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
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def walk_files(self, *parts: str) -> Iterator[str]:
        """Relative paths of every file below a folder."""
        base = self.path(*parts)
        if self.local is not None:
            for dirpath, _, files in os.walk(base):
                for f in files:
                    yield os.path.relpath(os.path.join(dirpath, f), self.root)
            return
        if not self.fs.exists(base):
            return
        for f in self.fs.find(base):
            yield posixpath.relpath(f, self.root)

    # ------------------------------------------------------------------- reads
    def read(self, *parts: str) -> bytes:
        p = self.path(*parts)
        if self.local is not None:
            with open(_open_regular(p), "rb") as fh:
                return fh.read()
        return self.fs.cat_file(p)

    def read_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read ``(offset, length)`` ranges of one file with one open."""
        p = self.path(name)
        if self.local is not None:
            fd = _open_regular(p)
            try:
                return [os.pread(fd, n, off) for off, n in ranges]
            finally:
                os.close(fd)
        return [self.fs.cat_file(p, start=off, end=off + n) for off, n in ranges]

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

    def delete(self, rel: str) -> None:
        p = self.path(rel)
        if self.local is not None:
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        elif self.fs.exists(p):
            self.fs.rm(p)
