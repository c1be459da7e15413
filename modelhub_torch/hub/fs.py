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

import contextlib
import io
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractFileSystem

from modelhub_torch.errors import CorruptObjectError, HubRequestError, ReadOnlyError
from modelhub_torch.hub.client import HubClient, client_for
from modelhub_torch.hub.paths import CONFIG, SWITCH
from modelhub_torch.validate import is_object_id
from modelhub_torch.validate import object_id_of as hash_bytes

REFS_SECONDS = 1.0  # how long a snapshot of a hub's refs answers reads (see HubFileSystem._refs)
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

    def read(self, oid: str, start: int | None = None, end: int | None = None, verify: bool = True) -> bytes | None:
        """The cached object (``verify``: checked against its name; a damaged copy is
        dropped), or a range of it (unchecked: readers check the tensors they decode);
        None when it is not cached."""
        try:
            with open(self.path(oid), "rb") as fh:
                if start is None and end is None:
                    data = fh.read()
                else:
                    fh.seek(start or 0)
                    data = fh.read(-1 if end is None else max(0, end - (start or 0)))
        except FileNotFoundError:
            return None
        if verify and start is None and end is None and hash_bytes(data) != oid:
            self.path(oid).unlink(missing_ok=True)  # damaged on this disk: fetch again
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
                self._held = sum(size for _, size, _ in self._files())
            else:
                self._held += len(data)
            if self._held > self.limit:
                self._evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        """(last read, size, path) of every cached object; other processes share the
        cache and may remove files meanwhile."""
        out = []
        for f in self.root.rglob("*"):
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            if f.is_file():
                out.append((st.st_atime, st.st_size, f))
        return sorted(out)

    def _evict(self) -> None:
        files = self._files()
        held = sum(size for _, size, _ in files)
        for _, size, f in files:
            if held <= self.limit * 0.8:
                break
            f.unlink(missing_ok=True)
            held -= size
        self._held = held


_CACHE: ObjectCache | None = None
_FETCHING: dict[str, threading.Lock] = {}
_FETCHING_GUARD = threading.Lock()


@contextlib.contextmanager
def _fetching(oid: str) -> Iterator[None]:
    """Held while object ``oid`` is fetched: another thread wanting it waits, then
    finds it cached (a load decodes tensors on a pool; each would fetch it otherwise)."""
    with _FETCHING_GUARD:
        lock = _FETCHING.setdefault(oid, threading.Lock())
    with lock:
        yield
    with _FETCHING_GUARD:
        if not lock.locked():
            _FETCHING.pop(oid, None)


def object_cache() -> ObjectCache:
    global _CACHE
    root = cache_root()
    if _CACHE is None or _CACHE.root != root:
        _CACHE = ObjectCache(root, int(os.environ.get("MODELHUB_HUB_CACHE_BYTES", 8 << 30)))
    return _CACHE


def is_hub(store: Any) -> bool:
    """Whether a store (RepoStore) is a hub reached over HTTP."""
    return isinstance(store.loc.fs, HubFileSystem)


def _is_ref(rel: str) -> bool:
    """Whether ``rel`` is answered from the hub's refs snapshot (GET refs)."""
    return rel in (CONFIG, SWITCH) or rel == "refs" or rel.startswith("refs/")


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
        self._snapshot: tuple[float, dict[str, bytes]] | None = None
        self._snapshot_lock = threading.Lock()

    # ------------------------------------------------------------------ refs
    def _refs(self) -> dict[str, bytes]:
        """Every ref file of the hub, read in one request and kept REFS_SECONDS: opening
        a repository reads a few refs per version. Older than that, or after this
        process wrote to the hub (forget_refs), they are read again; the hub checks
        every write against its own refs anyway."""
        with self._snapshot_lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot[0] > REFS_SECONDS:
                files = self.client.get_json("/refs", "reading the hub's refs")["files"]
                self._snapshot = (now, {str(k): str(v).encode() for k, v in files.items()})
            return self._snapshot[1]

    def forget_refs(self) -> None:
        with self._snapshot_lock:
            self._snapshot = None

    def _refs_below(self, rel: str) -> list[str]:
        prefix = rel + "/" if rel else ""
        return [name for name in self._refs() if name.startswith(prefix)]

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
        if _is_ref(rel):
            depth = rel.count("/") + 1
            full = sorted({"/".join(f.split("/")[:depth + 1]) for f in self._refs_below(rel)})
        else:
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
        if _is_ref(rel):
            files = self._refs_below(rel)
        else:
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
        if _is_ref(rel):
            refs = self._refs()
            if rel in refs:
                return {"name": rel, "type": "file", "size": len(refs[rel])}
            if self._refs_below(rel):
                return {"name": rel, "type": "directory", "size": 0}
            raise FileNotFoundError(path)
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
        if oid is None:
            if _is_ref(rel):
                found = self._refs().get(rel)
                if found is None:
                    raise FileNotFoundError(path)
                data = found
            else:
                data = self._get(rel)
            return data if start is None and end is None else data[start or 0:end]
        return self._object(oid, rel, start, end)

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, **kwargs: Any) -> list[bytes]:
        return [self.cat_file(p, s, e) for p, s, e in zip(paths, starts, ends)]

    def _object(self, oid: str, rel: str, start: int | None, end: int | None) -> bytes:
        """Bytes of object ``oid`` (a range of it): from the cache, else fetched whole
        once — one fetch per object however many threads ask — and cached; an object
        too big for the cache is read by ranged requests instead."""
        cache = object_cache()
        whole = start is None and end is None
        hit = cache.read(oid, start, end, verify=whole)
        if hit is not None:
            return hit
        with _fetching(oid):
            hit = cache.read(oid, start, end, verify=whole)
            if hit is not None:
                return hit
            if not whole and int(self.info(rel)["size"]) > cache.limit:
                lo, hi = start or 0, end
                rng = f"bytes={lo}-{'' if hi is None else hi - 1}"
                return self._get(rel, {"Range": rng}) if hi is None or hi > lo else b""
            data = self._get(rel)
            if hash_bytes(data) != oid:
                raise CorruptObjectError(
                    f"object {oid[:12]} from {self.url} does not match its name: the hub's copy is damaged "
                    "(tell its admin to run 'modelhub verify' there) or the connection altered it"
                )
            cache.put(oid, data)
        return data if whole else data[start or 0:end]

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
