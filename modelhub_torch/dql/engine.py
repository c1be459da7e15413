"""Run a DQL statement against a repository's catalog; results as ``QueryResult``."""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from modelhub_torch.dql.compiler import compile_select
from modelhub_torch.dql.parser import Derive, DQLError, Evaluate, Select, caret_error, parse
from modelhub_torch.records import Version, decode_values

BASE_COLUMNS = ["ref", "name", "version", "created", "params", "size"]
# SQLite's words for a statement beyond its compiled-in limits: the query's shape, not
# a bug, so the user hears what to change
_TOO_DEEP = ("stack overflow", "expression tree is too large")
_TOO_BIG = ("too many", "too large", "too big", "at most")


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str, value: Any) -> bool:
    return value is not None and _regex(pattern).match(str(value)) is not None


def prepare_connection(conn: sqlite3.Connection) -> None:
    """What compiled queries expect of a connection: REGEXP for node patterns and a
    case-sensitive LIKE (``ilike`` is the case-insensitive one)."""
    conn.create_function("regexp", 2, _regexp, deterministic=True)
    conn.execute("PRAGMA case_sensitive_like = ON")
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS q_tags (version TEXT NOT NULL, alias TEXT NOT NULL)")


class QueryResult:
    """What a statement gave, in order: for ``select`` the versions found, for
    ``slice`` / ``construct`` the versions derived, for ``evaluate`` one row per trial.
    Iterating yields ``Version`` objects (built on demand; ``None`` for a trial that
    failed before committing any); ``columns`` names what ``to_dicts()`` reports for
    each: the version's ref, name, number, creation time, parameter count and stored
    size, plus every metric/hparam/info field a select mentioned, or what the statement
    adds (``source`` and ``status`` of a derived version; trial, status, the varied
    values and the kept metrics of a trial)."""

    def __init__(self, rows: list[sqlite3.Row | None], columns: list[str], to_version: Callable[[Any], Version],
                 values: list[dict[str, Any]] | None = None, statement: str = "select"):
        self._rows = rows
        self._extra = columns
        self._to_version = to_version
        self._values = values
        self.statement = statement  # select | slice | construct | evaluate
        self.columns = BASE_COLUMNS + [c for c in columns if c not in BASE_COLUMNS]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Version]:
        return (self._version(r) for r in self._rows)

    def __getitem__(self, i: int) -> Version:
        return self._version(self._rows[i])

    def _version(self, row: sqlite3.Row | None) -> Version:
        return None if row is None else self._to_version(row)  # type: ignore[return-value]

    @property
    def refs(self) -> list[str]:
        return [f"{r['model']}@v{r['number']}" if r is not None else None for r in self._rows]  # type: ignore[misc]

    def to_dicts(self) -> list[dict[str, Any]]:
        out = []
        for i, r in enumerate(self._rows):
            d: dict[str, Any] = {
                "ref": f"{r['model']}@v{r['number']}" if r is not None else None,
                "name": r["model"] if r is not None else None,
                "version": r["number"] if r is not None else None,
                "created": r["created_at"] if r is not None else None,
                "params": r["params"] if r is not None else None,
                "size": r["stored_bytes"] if r is not None else None,
            }
            extra = self._values[i] if self._values is not None else {}
            for c in self._extra:
                d[c] = extra[c] if c in extra or r is None else _value(r[c])
            out.append(d)
        return out

    def __repr__(self) -> str:
        refs = [str(r) for r in self.refs]
        return f"QueryResult({len(self)} rows: {', '.join(refs[:5])}{' ...' if len(self) > 5 else ''})"


def _value(v: Any) -> Any:
    """A selected metadata value as the user stored it: a NaN or infinity (stored as a
    tagged JSON object, which SQLite hands back as its text) becomes the float again."""
    if isinstance(v, str) and v.startswith('{"$float"'):
        try:
            return decode_values(json.loads(v))
        except ValueError:
            return v
    return v


def execute(
    conn: sqlite3.Connection,
    text: str,
    resolve: Callable[[str], str],
    tags: Callable[[], Iterable[tuple[str, str]]],
    to_version: Callable[[Any], Version],
) -> QueryResult:
    """Parse, compile and run ``text`` on a catalog connection. ``resolve`` maps refs to
    version ids (lineage predicates); ``tags`` yields ``(version id, alias)`` pairs and
    is called only when the query mentions tags."""
    stmt = parse(text)
    if isinstance(stmt, (Derive, Evaluate)):
        kind = stmt.kind if isinstance(stmt, Derive) else "evaluate"
        raise caret_error(text, stmt.pos, f"only 'select' runs here, not '{kind}' (it commits new versions: "
                          "run it with Repository.query or modelhub query on the repository itself)")
    return execute_select(conn, stmt, text, resolve, tags, to_version)


def execute_select(
    conn: sqlite3.Connection,
    stmt: Select,
    text: str,
    resolve: Callable[[str], str],
    tags: Callable[[], Iterable[tuple[str, str]]],
    to_version: Callable[[Any], Version],
) -> QueryResult:
    """Run a parsed ``select`` (``text``: the whole query, for errors)."""
    compiled = compile_select(stmt, text, resolve)
    _check_literal_count(conn, len(compiled.params))
    prepare_connection(conn)
    if compiled.needs_tags:
        conn.execute("DELETE FROM temp.q_tags")
        conn.executemany("INSERT INTO temp.q_tags VALUES (?, ?)", list(tags()))
    try:
        rows = conn.execute(compiled.sql, compiled.params).fetchall()
    except sqlite3.Error as exc:
        # the query's shape, not the index: no cause, so Repository.query does not take
        # it for a damaged index file (which it sets aside and rebuilds)
        said = str(exc).lower()
        if any(words in said for words in _TOO_DEEP):
            raise DQLError(f"the query nests too deeply for SQLite ({exc}); use fewer nested "
                           "parentheses (a and (b and c) is a and b and c)") from None
        if any(words in said for words in _TOO_BIG):
            raise DQLError(f"the query is too large for SQLite ({exc}); split it into smaller queries") from None
        # a compiler bug or a damaged index, never the user's: say so plainly (the cause
        # lets Repository.query tell damage apart)
        raise DQLError(f"internal error running the query ({exc}); please report it with the query") from exc
    return QueryResult(rows, compiled.columns, to_version)


def _check_literal_count(conn: sqlite3.Connection, n: int) -> None:
    """Each literal (and node pattern) is one SQL parameter; SQLite takes a bounded
    number per statement (250000 in recent builds, 999 in old ones)."""
    getlimit = getattr(conn, "getlimit", None)  # Python >= 3.11
    limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999
    if n > limit:
        raise DQLError(
            f"the query has {n} literals and patterns; SQLite takes at most {limit} in one "
            "query: split long 'in (...)' lists over several queries"
        )
