"""A hub URL as a read-only filesystem, so ``Location`` — and with it every reader of a
repository (load, progressive inference, pull, clone, diff) — works on ``http(s)://``.

Files are the hub's ``files/`` and ``list/`` endpoints. Objects are immutable and
named by their content, so each is fetched whole once (one request per plane pack,
never one per tensor), checked against its name, and kept in a local cache shared by
every repository and process of this user (``$MODELHUB_CACHE/hub-objects``, bounded
by ``MODELHUB_HUB_CACHE_BYTES``, 8 GiB by default, oldest dropped first). Writes go
through the push protocol (sync/sinks.py), never through this filesystem.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractFileSystem

from modelhub_torch.errors import CorruptObjectError, HubRequestError, ReadOnlyError
from modelhub_torch.hub.client import HubClient, client_for
from modelhub_torch.store.objects import hash_bytes
from modelhub_torch.validate import is_object_id

_READ_ONLY = ("{what}: a hub URL is read-only as a repository; push versions to it "
              "('modelhub push URL' or repo.push(URL))")


def cache_root() -> Path:
    base = Path(os.environ.get("MODELHUB_CACHE", Path(tempfile.gettempdir()) / "modelhub-cache"))
    return base / "hub-objects"


class ObjectCache:
    """Objects fetched from hubs, by id, on local disk."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, limit
        self._lock = threading.Lock()
        self._held: int | None = None

    def path(self, oid: str) -> Path:
        return self.root / oid[:2] / oid[2:]

    def get(self, oid: str) -> bytes | None:
        try:
            with open(self.path(oid), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        if hash_bytes(data) != oid:  # damaged on this disk: fetch again
            self.path(oid).unlink(missing_ok=True)
            return None
        return data

    def put(self, oid: str, data: bytes) -> None:
        if len(data) > self.limit:
            return
        target = self.path(oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        with self._lock:
            if self._held is None:
                self._held = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
            else:
                self._held += len(data)
            if self._held > self.limit:
                self._evict()

    def _evict(self) -> None:
        files = sorted((f.stat().st_atime, f.stat().st_size, f) for f in self.root.rglob("*") if f.is_file())
        held = sum(size for _, size, _ in files)
        for _, size, f in files:
            if held <= self.limit * 0.8:
                break
            f.unlink(missing_ok=True)
            held -= size
        self._held = held


_CACHE: ObjectCache | None = None


def object_cache() -> ObjectCache:
    global _CACHE
    root = cache_root()
    if _CACHE is None or _CACHE.root != root:
        _CACHE = ObjectCache(root, int(os.environ.get("MODELHUB_HUB_CACHE_BYTES", 8 << 30)))
    return _CACHE


def _object_id(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "objects":
        oid = parts[1] + parts[2]
        return oid if is_object_id(oid) else None
    return None


class HubFileSystem(AbstractFileSystem):
    """The repository a hub serves, read through its API (paths relative to it)."""

    cachable = False
    protocol = ("http", "https")
    root_marker = ""

    def __init__(self, url: str, token: str | None = None, **kwargs: Any):
        super().__init__()
        self.url = url.rstrip("/")
        self.client: HubClient = client_for(self.url, token)

    # ------------------------------------------------------------ plumbing
    @staticmethod
    def _rel(path: str) -> str:
        return path.strip("/")

    def _get(self, rel: str, headers: dict[str, str] | None = None) -> bytes:
        resp = self.client.request("GET", f"/files/{rel}", headers=headers or {})
        if resp.status_code == 404:
            raise FileNotFoundError(f"{self.url}/{rel}")
        return self.client.check(resp, f"reading {rel}").content

    # --------------------------------------------------------------- reads
    def ls(self, path: str, detail: bool = False, **kwargs: Any) -> list[Any]:
        rel = self._rel(path)
        resp = self.client.request("GET", f"/list/{rel}")
        if resp.status_code == 404:
            raise FileNotFoundError(path)
        names = self.client.check(resp, f"listing {rel or '/'}").json()["names"]
        full = [f"{rel}/{n}" if rel else n for n in names]
        if detail:
            return [{"name": f, "type": "file" if "." in f.rsplit("/", 1)[-1] else "directory", "size": None}
                    for f in full]
        return full

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False,
             **kwargs: Any) -> Any:
        rel = self._rel(path)
        resp = self.client.request("GET", f"/list/{rel}", params={"recursive": "true"})
        files = self.client.check(resp, f"listing {rel or '/'}").json()["files"]
        if detail:
            return {f: {"name": f, "type": "file", "size": None} for f in files}
        return files

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        rel = self._rel(path)
        oid = _object_id(rel)
        if oid is not None:
            cached = object_cache().path(oid)
            if cached.exists():
                return {"name": rel, "type": "file", "size": cached.stat().st_size}
            resp = self.client.request("GET", f"/files/{rel}", headers={"Range": "bytes=0-0"})
            if resp.status_code == 404:
                raise FileNotFoundError(path)
            self.client.check(resp, f"reading {rel}")
            total = resp.headers.get("content-range", "").rpartition("/")[2]
            return {"name": rel, "type": "file", "size": int(total) if total.isdigit() else len(resp.content)}
        try:
            return {"name": rel, "type": "file", "size": len(self._get(rel))}
        except FileNotFoundError:
            if self.ls(rel):
                return {"name": rel, "type": "directory", "size": 0}
            raise

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether ``path`` is there; a refusal (no token, no access) is an error, not
        a 'no' (fsspec's default would turn it into one)."""
        try:
            self.info(path)
            return True
        except FileNotFoundError:
            return False

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        rel = self._rel(path)
        oid = _object_id(rel)
        data = self._object(oid, rel) if oid is not None else self._get(rel)
        if start is None and end is None:
            return data
        return data[start or 0:end]

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, **kwargs: Any) -> list[bytes]:
        return [self.cat_file(p, s, e) for p, s, e in zip(paths, starts, ends)]

    def _object(self, oid: str, rel: str) -> bytes:
        cache = object_cache()
        data = cache.get(oid)
        if data is None:
            data = self._get(rel)
            if hash_bytes(data) != oid:
                raise CorruptObjectError(
                    f"object {oid[:12]} from {self.url} does not match its name: the hub's copy is damaged "
                    "(tell its admin to run 'modelhub verify' there) or the connection altered it"
                )
            cache.put(oid, data)
        return data

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" not in mode or "+" in mode:
            raise ReadOnlyError(_READ_ONLY.format(what=f"writing {path}"))
        return io.BytesIO(self.cat_file(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        pass

    # -------------------------------------------------------------- writes
    def _refuse(self, path: Any = "", *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError(_READ_ONLY.format(what=f"changing {path}"))

    pipe_file = mkdir = makedirs = rm_file = rm = mv = cp_file = put_file = touch = _refuse


__all__ = ["HubFileSystem", "HubRequestError", "ObjectCache", "object_cache"]
