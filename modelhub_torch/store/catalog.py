"""SQLite index over the versions of a repository: fast listing, lookup and dedup.

It is an index, never the source of truth: every row can be rebuilt from refs and
manifests (``Repository.verify(rebuild_index=True)``). Local repositories keep it in
``<root>/index/catalog.sqlite``; remote ones in a per-user cache directory.

Because it is only a cache, a damaged file never reaches the user as an ``sqlite3``
error: an integrity check runs on open after a process using it died, any database
error found later sets the file aside, and the catalog starts empty (``on_reset`` lets
the repository re-index from its refs) with one warning; where no file can be used at
all, the index lives in memory for the process.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from modelhub_torch.errors import LockTimeoutError, ModelHubError, ModelHubWarning
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.records import decode_values
from modelhub_torch.store.location import Location

# bumped whenever SCHEMA changes: an older index is dropped and rebuilt from the refs
SCHEMA_VERSION = 6
_T = TypeVar("_T")
TABLES = ("versions", "plane_bytes", "tensors", "version_objects", "links", "graph_nodes", "graph_edges")

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    number INTEGER NOT NULL,
    parent TEXT,
    created_at TEXT NOT NULL,
    message TEXT NOT NULL,
    metrics TEXT NOT NULL,
    hparams TEXT NOT NULL,
    raw_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    params INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    graph TEXT,
    pickle INTEGER NOT NULL DEFAULT 0,
    resumable INTEGER,
    lossy TEXT NOT NULL DEFAULT '[]',
    UNIQUE (model, number)
);
CREATE INDEX IF NOT EXISTS versions_model ON versions(model, number);
CREATE INDEX IF NOT EXISTS versions_parent ON versions(parent);
CREATE TABLE IF NOT EXISTS plane_bytes (
    version TEXT NOT NULL, plane INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (version, plane)
);
CREATE TABLE IF NOT EXISTS tensors (
    digest TEXT NOT NULL, version TEXT NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (version, idx)
);
CREATE INDEX IF NOT EXISTS tensors_digest ON tensors(digest);
CREATE TABLE IF NOT EXISTS version_objects (
    version TEXT NOT NULL, oid TEXT NOT NULL, PRIMARY KEY (version, oid)
);
CREATE INDEX IF NOT EXISTS version_objects_oid ON version_objects(oid);
CREATE TABLE IF NOT EXISTS links (
    version TEXT NOT NULL, target TEXT NOT NULL, PRIMARY KEY (version, target)
);
CREATE INDEX IF NOT EXISTS links_target ON links(target);
CREATE INDEX IF NOT EXISTS versions_graph ON versions(graph);
CREATE TABLE IF NOT EXISTS graph_nodes (
    graph TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, op TEXT NOT NULL,
    type TEXT NOT NULL, category TEXT NOT NULL, kind TEXT, attrs TEXT NOT NULL,
    params INTEGER NOT NULL, PRIMARY KEY (graph, idx)
);
CREATE INDEX IF NOT EXISTS graph_nodes_name ON graph_nodes(graph, name);
CREATE TABLE IF NOT EXISTS graph_edges (
    graph TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS graph_edges_src ON graph_edges(graph, src);
CREATE INDEX IF NOT EXISTS graph_edges_dst ON graph_edges(graph, dst);
"""


def model_params(m: Manifest) -> int:
    """Parameter count of the model a version holds: its state_dict's elements (a whole
    checkpoint's optimizer state is not the model), or every tensor's when it has none."""
    from modelhub_torch.skeleton_check import state_dict_paths

    weights = set(state_dict_paths(m.skeleton).values())
    recs = [m.tensors[i] for i in weights] if weights else m.live_tensors()
    return sum(math.prod(t["shape"]) for t in recs if t["data"]["kind"] != DROPPED and t["dtype"] != "bool")


def link_targets(m: Manifest) -> set[str]:
    """Other versions whose stored tensors this manifest's records point into (a shared
    copy, a delta base, a context): the versions it needs to decode."""
    out = set()
    for t in m.tensors:
        data = t["data"]
        if data["kind"] == "same":
            out.add(data["version"])
        for key in ("base", "context"):
            link = data.get(key)
            if link is not None:
                out.add(link["version"])
    out.discard(m.id)
    return out


def _resumable(m: Manifest) -> int | None:
    """1 when the version can resume training (its trainer state is there), 0 when it
    is a trainer checkpoint without it (pruned), None when it is no trainer checkpoint."""
    from modelhub_torch.resumable import trainer_state

    state = trainer_state(m.skeleton)
    return None if state is None else int(state)


def _lossy(m: Manifest) -> str:
    """The lossy schemes an archive applied to the version, as the index stores them."""
    schemes = m.extra.get("lossy") or []
    return json.dumps([str(x) for x in schemes])


def row_disagreements(row: sqlite3.Row, m: Manifest, manifest_oid: str | None) -> list[str]:
    """Columns of an index row that do not say what the version's manifest says (a
    stale or tampered index); empty when the row is true."""
    expect = {
        "model": m.model, "number": m.number, "parent": m.parent, "created_at": m.created_at,
        "message": m.message, "manifest": manifest_oid or "", "raw_bytes": m.raw_bytes,
        "pickle": int(bool(m.extra.get("pickle"))), "resumable": _resumable(m),
        "lossy": _lossy(m),
    }
    wrong = [k for k, v in expect.items() if row[k] != v]
    for col, value in (("metrics", m.metrics), ("hparams", m.hparams), ("info", m.info)):
        try:
            same = json.loads(row[col]) == json.loads(json.dumps(value))
        except (TypeError, ValueError, RecursionError):
            same = False
        if not same:
            wrong.append(col)
    return wrong


def _rollback(c: sqlite3.Connection) -> None:
    try:
        c.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the failed statement already ended the transaction


def catalog_path(loc: Location) -> str:
    if loc.local is not None:
        os.makedirs(loc.path("index"), exist_ok=True)
        return loc.path("index", "catalog.sqlite")
    key = hashlib.sha256(loc.identity.encode()).hexdigest()[:24]
    base = Path(os.environ.get("MODELHUB_CACHE", Path(tempfile.gettempdir()) / "modelhub-cache"))
    base.mkdir(parents=True, exist_ok=True)
    return str(base / f"catalog-{key}.sqlite")


_JSON_COLUMNS = ("metrics", "hparams", "info")


def _check_row(row: sqlite3.Row) -> sqlite3.Row:
    """A row whose JSON columns parse to objects; a damaged one is database damage."""
    for col in _JSON_COLUMNS:
        try:
            ok = isinstance(json.loads(row[col]), dict)
        except (TypeError, ValueError, RecursionError):
            ok = False
        if not ok:
            raise sqlite3.DatabaseError(f"row {row['id']!r} holds a malformed {col} column")
    return row


def is_busy(exc: sqlite3.Error) -> bool:
    """Lock contention, which waiting solves; every other database error is damage."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a catalog method; on damage, reset the catalog (re-indexed by ``on_reset``)
    and run it once more. Lock contention becomes a LockTimeoutError."""

    @functools.wraps(method)
    def run(self: Catalog, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self.recover(exc)
        return method(self, *args, **kwargs)

    return run


# marker files of processes that have a catalog open: one left by a process that is
# gone means it died with the file open, so the next open checks the file's integrity
_OPEN_MARKERS: set[str] = set()


@atexit.register
def _clear_markers() -> None:
    for marker in list(_OPEN_MARKERS):
        try:
            os.remove(marker)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Catalog:
    def __init__(self, path: str, on_reset: Callable[[], None] | None = None):
        self.path = path
        self.on_reset = on_reset
        self._local = threading.local()
        self._recovering = False
        self.resets = 0  # how many times this process set a damaged index aside
        try:
            if path != ":memory:" and self._unclean_shutdown():
                self._check_integrity()
            self._create()
        except sqlite3.Error as exc:
            if is_busy(exc):
                raise LockTimeoutError(f"the index {path} stayed locked: {exc}") from None
            self._set_aside(exc)
        self._mark_open()

    # ------------------------------------------------------------ robustness
    def _unclean_shutdown(self) -> bool:
        """Whether a process that had this catalog open died without closing it."""
        folder, base = os.path.split(self.path)
        try:
            names = os.listdir(folder or ".")
        except OSError:
            return False
        dead = False
        for name in names:
            if name.startswith(base + ".open-"):
                pid = name.rsplit("-", 1)[-1]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    dead = True
                    try:
                        os.remove(os.path.join(folder, name))
                    except OSError:
                        pass
        return dead

    def _mark_open(self) -> None:
        if self.path.startswith(("file:", ":memory:")):
            return
        marker = f"{self.path}.open-{os.getpid()}"
        if marker not in _OPEN_MARKERS:
            try:
                with open(marker, "w"):
                    pass
                _OPEN_MARKERS.add(marker)
            except OSError:
                pass

    def _check_integrity(self) -> None:
        row = self._conn().execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")

    def recover(self, exc: BaseException) -> None:
        """Set a damaged index aside, start an empty one and let the repository re-index
        it (the catalog holds nothing that refs and manifests do not)."""
        if isinstance(exc, sqlite3.Error) and is_busy(exc):
            raise LockTimeoutError(f"the index {self.path} stayed locked: {exc}") from None
        if self._recovering:  # damage found while re-indexing a fresh file
            raise ModelHubError(
                f"the index {self.path} cannot be rebuilt ({exc}); delete it and retry"
            ) from None
        self._set_aside(exc)
        if self.on_reset is not None:
            self._recovering = True
            try:
                self.on_reset()
            finally:
                self._recovering = False

    def _set_aside(self, exc: BaseException) -> None:
        self.close()
        self.resets += 1
        where = self.path
        if not self.path.startswith(("file:", ":memory:")):
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(self.path + suffix, self.path + suffix + ".corrupt")
                except FileNotFoundError:
                    pass
                except OSError:
                    break
        try:
            self._create()
        except (sqlite3.Error, OSError):
            # no usable file here: an index in memory, shared by this process's threads
            self.close()
            self.path = f"file:modelhub-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._create()
        warnings.warn(
            f"the version index {where} was damaged ({' '.join(str(exc).split())[:120]}); "
            "it was set aside and is rebuilt from the refs",
            ModelHubWarning,
            stacklevel=4,
        )

    def _create(self) -> None:
        c = self._conn()
        if c.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # an index written by another version of the package: it holds nothing the
            # refs and manifests do not, so start afresh (Repository re-indexes on open)
            c.executescript("".join(f"DROP TABLE IF EXISTS {t};" for t in TABLES))
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        c.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "path", None) != self.path:
            uri = self.path.startswith("file:")
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, uri=uri,
                                   check_same_thread=False)
            if not uri:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            self._local.path = self.path
            if uri:  # a shared in-memory database lives while one connection does
                self._keep = conn
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (queries run on it; see dql/engine.py)."""
        return self._conn()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ writes
    @_guarded
    def upsert(self, m: Manifest, manifest_oid: str, stored_bytes: int) -> None:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            self._insert(c, m, manifest_oid, stored_bytes)
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise

    @_guarded
    def upsert_many(self, rows: Iterable[tuple[Manifest, str, int]]) -> int:
        """Index many versions in one transaction (bulk imports, rebuilds)."""
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        n = 0
        try:
            for m, manifest_oid, stored_bytes in rows:
                self._insert(c, m, manifest_oid, stored_bytes)
                n += 1
            c.execute("COMMIT")
        except BaseException:
            _rollback(c)
            raise
        return n

    def _insert(self, c: sqlite3.Connection, m: Manifest, manifest_oid: str, stored_bytes: int) -> None:
        c.execute("DELETE FROM versions WHERE id=? OR (model=? AND number=?)", (m.id, m.model, m.number))
        c.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                m.id, m.model, m.number, m.parent, m.created_at, m.message,
                json.dumps(m.metrics), json.dumps(m.hparams), m.raw_bytes,
                stored_bytes, model_params(m), manifest_oid, json.dumps(m.info),
                self._graph(c, m.extra.get("graph")), int(bool(m.extra.get("pickle"))),
                _resumable(m), _lossy(m),
            ),
        )
        c.execute("DELETE FROM plane_bytes WHERE version=?", (m.id,))
        c.executemany(
            "INSERT INTO plane_bytes VALUES (?,?,?)",
            [(m.id, p, b) for p, b in enumerate(m.plane_bytes())],
        )
        c.execute("DELETE FROM version_objects WHERE version=?", (m.id,))
        c.executemany(
            "INSERT OR IGNORE INTO version_objects VALUES (?,?)",
            [(m.id, oid) for oid in {*m.objects(), manifest_oid} if oid],
        )
        c.execute("DELETE FROM links WHERE version=?", (m.id,))
        c.executemany("INSERT INTO links VALUES (?,?)", [(m.id, t) for t in sorted(link_targets(m))])
        c.execute("DELETE FROM tensors WHERE version=?", (m.id,))
        c.executemany(
            "INSERT INTO tensors VALUES (?,?,?)",
            [(t["digest"], m.id, i) for i, t in enumerate(m.tensors) if t["data"]["kind"] != DROPPED],
        )

    @staticmethod
    def _graph(c: sqlite3.Connection, graph: dict[str, Any] | None) -> str | None:
        """Index a network graph once per distinct architecture; returns its digest."""
        if not graph:
            return None
        from modelhub_torch.graph_view import graph_digest

        digest = graph_digest(graph)
        if c.execute("SELECT 1 FROM graph_nodes WHERE graph=? LIMIT 1", (digest,)).fetchone() is None:
            c.executemany(
                "INSERT INTO graph_nodes VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (digest, i, n["name"], n["op"], n["type"], n["category"], n.get("kind"),
                     json.dumps(n.get("attrs", {})), int(n.get("params", 0)))
                    for i, n in enumerate(graph["nodes"])
                ],
            )
            c.executemany(
                "INSERT INTO graph_edges VALUES (?,?,?)", [(digest, a, b) for a, b in graph["edges"]]
            )
        return digest

    @_guarded
    def clear(self) -> None:
        c = self._conn()
        c.executescript("".join(f"DELETE FROM {t};" for t in TABLES))

    @_guarded
    def remove(self, version_ids: Iterable[str]) -> None:
        c = self._conn()
        for vid in version_ids:
            for table, col in (
                ("versions", "id"),
                ("plane_bytes", "version"),
                ("tensors", "version"),
                ("version_objects", "version"),
                ("links", "version"),
            ):
                c.execute(f"DELETE FROM {table} WHERE {col}=?", (vid,))

    # ----------------------------------------------------------------- queries
    @_guarded
    def rows(self, model: str | None = None) -> list[sqlite3.Row]:
        c = self._conn()
        if model is None:
            rows = c.execute("SELECT * FROM versions ORDER BY model, number").fetchall()
        else:
            rows = c.execute("SELECT * FROM versions WHERE model=? ORDER BY number", (model,)).fetchall()
        for r in rows:
            _check_row(r)
        return rows

    @_guarded
    def row(self, version_id: str) -> sqlite3.Row | None:
        r = self._conn().execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()
        return _check_row(r) if r is not None else None

    @_guarded
    def numbered(self) -> dict[tuple[str, int], str]:
        """``(model, number) -> id`` of every indexed version."""
        return {(r[0], r[1]): r[2] for r in self._conn().execute("SELECT model, number, id FROM versions")}

    @_guarded
    def ids_with_prefix(self, prefix: str) -> list[str]:
        return [
            r[0]
            for r in self._conn().execute(
                "SELECT id FROM versions WHERE id >= ? AND id < ? ORDER BY id",
                (prefix, prefix + "\uffff"),
            )
        ]

    @_guarded
    def find_digest(self, digest: str) -> tuple[str, int] | None:
        r = self._conn().execute(
            "SELECT version, idx FROM tensors WHERE digest=? LIMIT 1", (digest,)
        ).fetchone()
        return (r[0], r[1]) if r else None

    @_guarded
    def object_users(self, oid: str) -> set[str]:
        """Versions whose current manifest references object ``oid``."""
        return {
            r[0]
            for r in self._conn().execute("SELECT version FROM version_objects WHERE oid=?", (oid,))
        }

    @_guarded
    def children(self, version_id: str) -> set[str]:
        """Versions whose parent is ``version_id``."""
        return {r[0] for r in self._conn().execute("SELECT id FROM versions WHERE parent=?", (version_id,))}

    @_guarded
    def dependents(self, version_id: str) -> set[str]:
        """Versions whose current manifest points into ``version_id``'s tensors."""
        return {
            r[0] for r in self._conn().execute("SELECT version FROM links WHERE target=?", (version_id,))
        }

    @_guarded
    def plane_totals(self) -> dict[int, int]:
        return {
            r[0]: r[1]
            for r in self._conn().execute(
                "SELECT plane, SUM(bytes) FROM plane_bytes GROUP BY plane ORDER BY plane"
            )
        }

    def integrity_problems(self) -> list[str]:
        """What SQLite's own check finds wrong with the file (empty when sound)."""
        try:
            rows = self._conn().execute("PRAGMA quick_check").fetchall()
        except sqlite3.Error as exc:
            return [str(exc)]
        return [r[0] for r in rows if r[0] != "ok"]

    @staticmethod
    def decode_row(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for col in ("metrics", "hparams", "info"):
            d[col] = decode_values(json.loads(d[col]))
        d["lossy"] = tuple(json.loads(d.get("lossy") or "[]"))
        return d
