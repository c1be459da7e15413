"""Search over a repository, as the hub answers it: a DQL ``select`` (read-only by
construction: the hub runs no other statement) or free text over model names,
messages, aliases and metric names (every word or "quoted phrase" must match, case
aside); newest first, paginated."""

from __future__ import annotations

import re
import shlex
from typing import Any

from modelhub_torch.errors import ModelHubError
from modelhub_torch.records import Version

MAX_PER_PAGE = 100


def is_dql(text: str) -> bool:
    return re.match(r"\s*select\b", text, re.IGNORECASE) is not None


def check_select(text: str) -> None:
    """Refuse anything but a ``select``: a query sent to a hub never changes it."""
    if not is_dql(text):
        first = (text.strip().split() or [""])[0]
        raise ModelHubError(
            f"a hub runs only DQL 'select' statements (read-only), not {first!r}: "
            "pull the models and run other statements on your copy"
        )


def version_summary(v: Version, tags: list[str]) -> dict[str, Any]:
    return {
        "ref": v.ref, "model": v.model, "number": v.number, "id": v.id, "parent": v.parent,
        "created_at": v.created_at, "message": v.message, "metrics": v.metrics, "tags": tags,
        "raw_bytes": v.raw_bytes, "stored_bytes": v.stored_bytes,
    }


def search(repo: Any, text: str, page: int = 1, per_page: int = 20) -> dict[str, Any]:
    """One page of the versions matching ``text`` (everything when empty)."""
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        raise ModelHubError(f"page starts at 1 and per_page is 1 to {MAX_PER_PAGE}")
    text = (text or "").strip()
    tags: dict[str, list[str]] = {}  # ref -> its aliases
    for model in repo.models():
        for alias, ref in repo.tags(model).items():
            tags.setdefault(ref, []).append(alias)
    if is_dql(text):
        found = list(repo.query(text))
        kind = "dql"
    else:
        terms = [t.lower() for t in _terms(text)]
        found = [v for v in repo.versions() if all(_matches(v, tags.get(v.ref, []), t) for t in terms)]
        found.sort(key=lambda v: (v.created_at, v.model, v.number), reverse=True)
        kind = "text"
    start = (page - 1) * per_page
    return {
        "query": text, "kind": kind, "total": len(found), "page": page, "per_page": per_page,
        "results": [version_summary(v, sorted(tags.get(v.ref, []))) for v in found[start:start + per_page]],
    }


def _terms(text: str) -> list[str]:
    """Words, or "quoted phrases"; every one must match."""
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: plain words
        return text.split()


def _matches(v: Version, aliases: list[str], term: str) -> bool:
    fields = [v.model, v.ref, v.message or "", *aliases, *map(str, v.metrics)]
    return any(term in f.lower() for f in fields)
