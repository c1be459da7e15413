"""Statements saved by name (``modelhub query --save NAME``), so another statement can
run on their results with ``from "NAME"``, as in the paper's ``evaluate m from "query3"``.

A saved statement is DQL text, checked by the parser before it is stored and again
when it is read: it can name configs and filters, never code.
"""

from __future__ import annotations

from modelhub_torch.dql.parser import parse
from modelhub_torch.errors import DQLError
from modelhub_torch.store.refs import check_name
from modelhub_torch.store.repo import RepoStore

MAX_BYTES = 64 * 1024


def _rel(name: str) -> str:
    try:
        check_name("saved query", name)
    except Exception as exc:
        raise DQLError(str(exc)) from None
    return f"queries/{name}.dql"


def save_query(store: RepoStore, name: str, text: str) -> None:
    """Store ``text`` as ``queries/<name>.dql`` (replacing a statement of that name)."""
    rel = _rel(name)
    parse(text)
    data = text.encode("utf-8")
    if len(data) > MAX_BYTES:
        raise DQLError(f"a saved statement holds at most {MAX_BYTES} bytes; this one has {len(data)}")
    store.loc.makedirs("queries")
    store.loc.write_atomic(rel, data)


def load_query(store: RepoStore, name: str) -> str:
    """The statement saved as ``name``; an error lists the saved names when there is none."""
    rel = _rel(name)
    if not store.loc.exists(rel):
        names = saved_queries(store)
        raise DQLError(f"no statement is saved as {name!r} in {store.url}"
                       + (f"; saved: {', '.join(names)}" if names else "")
                       + " (save one with: modelhub query --save NAME '<statement>')")
    data = store.loc.read(rel)
    if len(data) > MAX_BYTES:
        raise DQLError(f"the saved statement {name!r} is larger than {MAX_BYTES} bytes: not a statement")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DQLError(f"the saved statement {name!r} is not UTF-8 text") from None


def saved_queries(store: RepoStore) -> list[str]:
    if not store.loc.exists("queries"):
        return []
    return sorted(n[: -len(".dql")] for n in store.loc.listdir("queries") if n.endswith(".dql"))


__all__ = ["load_query", "save_query", "saved_queries"]
