"""SQLite index over the versions of a repository: fast listing, lookup and dedup.

It is an index, never the source of truth: every row can be rebuilt from refs and
manifests (``Repository.verify(rebuild_index=True)``). Local repositories keep it in
``<root>/index/catalog.sqlite``; remote ones in a per-user cache directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.store.location import Location

# bumped whenever SCHEMA changes: an older index is dropped and rebuilt from the refs
SCHEMA_VERSION = 4
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
    from modelhub_torch.skeleton import state_dict_paths

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


def catalog_path(loc: Location) -> str:
    if loc.local is not None:
        os.makedirs(loc.path("index"), exist_ok=True)
        return loc.path("index", "catalog.sqlite")
    key = hashlib.sha256(loc.url.encode()).hexdigest()[:24]
    base = Path(os.environ.get("MODELHUB_CACHE", Path(tempfile.gettempdir()) / "modelhub-cache"))
    base.mkdir(parents=True, exist_ok=True)
    return str(base / f"catalog-{key}.sqlite")


class Catalog:
    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked/busy: not corruption
                raise
            # not a database (a torn copy, overwritten bytes): the index holds nothing that
            # refs and manifests do not, so set it aside; Repository re-indexes from refs
            self.close()
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(path + suffix, path + suffix + ".corrupt")
                except FileNotFoundError:
                    pass
            self._create()

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
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
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
    def upsert(self, m: Manifest, manifest_oid: str, stored_bytes: int) -> None:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            self._insert(c, m, manifest_oid, stored_bytes)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

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
            c.execute("ROLLBACK")
            raise
        return n

    def _insert(self, c: sqlite3.Connection, m: Manifest, manifest_oid: str, stored_bytes: int) -> None:
        c.execute("DELETE FROM versions WHERE id=? OR (model=? AND number=?)", (m.id, m.model, m.number))
        c.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                m.id, m.model, m.number, m.parent, m.created_at, m.message,
                json.dumps(m.metrics), json.dumps(m.hparams), m.raw_bytes,
                stored_bytes, model_params(m), manifest_oid, json.dumps(m.info),
                self._graph(c, m.extra.get("graph")),
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
        from modelhub_torch.graph import graph_digest

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

    def clear(self) -> None:
        c = self._conn()
        c.executescript("".join(f"DELETE FROM {t};" for t in TABLES))

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
    def rows(self, model: str | None = None) -> list[sqlite3.Row]:
        c = self._conn()
        if model is None:
            return c.execute("SELECT * FROM versions ORDER BY model, number").fetchall()
        return c.execute(
            "SELECT * FROM versions WHERE model=? ORDER BY number", (model,)
        ).fetchall()

    def row(self, version_id: str) -> sqlite3.Row | None:
        return self._conn().execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()

    def numbered(self) -> dict[tuple[str, int], str]:
        """``(model, number) -> id`` of every indexed version."""
        return {(r[0], r[1]): r[2] for r in self._conn().execute("SELECT model, number, id FROM versions")}

    def ids_with_prefix(self, prefix: str) -> list[str]:
        return [
            r[0]
            for r in self._conn().execute(
                "SELECT id FROM versions WHERE id >= ? AND id < ? ORDER BY id",
                (prefix, prefix + "\uffff"),
            )
        ]

    def find_digest(self, digest: str) -> tuple[str, int] | None:
        r = self._conn().execute(
            "SELECT version, idx FROM tensors WHERE digest=? LIMIT 1", (digest,)
        ).fetchone()
        return (r[0], r[1]) if r else None

    def object_users(self, oid: str) -> set[str]:
        """Versions whose current manifest references object ``oid``."""
        return {
            r[0]
            for r in self._conn().execute("SELECT version FROM version_objects WHERE oid=?", (oid,))
        }

    def children(self, version_id: str) -> set[str]:
        """Versions whose parent is ``version_id``."""
        return {r[0] for r in self._conn().execute("SELECT id FROM versions WHERE parent=?", (version_id,))}

    def dependents(self, version_id: str) -> set[str]:
        """Versions whose current manifest points into ``version_id``'s tensors."""
        return {
            r[0] for r in self._conn().execute("SELECT version FROM links WHERE target=?", (version_id,))
        }

    def plane_totals(self) -> dict[int, int]:
        return {
            r[0]: r[1]
            for r in self._conn().execute(
                "SELECT plane, SUM(bytes) FROM plane_bytes GROUP BY plane ORDER BY plane"
            )
        }

    @staticmethod
    def decode_row(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["metrics"] = json.loads(d["metrics"])
        d["hparams"] = json.loads(d["hparams"])
        d["info"] = json.loads(d["info"])
        return d
