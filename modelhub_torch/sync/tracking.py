"""What the last transfer with each other repository saw of its aliases (git's
remote-tracking refs): kept by the repository that ran the push or pull, in
``sync/<hash of the other side's URL>.json``, so a later transfer can tell an alias
moved on one side from one moved on both."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelhub_torch.store.repo import RepoStore

MAX_BYTES = 1 << 20


def _rel(other_url: str) -> str:
    return f"sync/{hashlib.sha256(other_url.encode()).hexdigest()[:32]}.json"


def last_tags(local: RepoStore, other_url: str) -> dict[str, str]:
    """``{"model@alias": version id}`` as the last transfer left them; empty when none
    (or when the record is unreadable: it is a hint, never the truth)."""
    try:
        raw = local.loc.read(_rel(other_url))
        doc: Any = json.loads(raw[:MAX_BYTES]) if len(raw) <= MAX_BYTES else {}
    except (OSError, ValueError):
        return {}
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(tags, dict):
        return {}
    return {k: v for k, v in tags.items() if isinstance(k, str) and isinstance(v, str)}


def remember_tags(local: RepoStore, other_url: str, tags: dict[str, str]) -> None:
    doc = {"other": other_url, "tags": dict(sorted(tags.items()))}
    local.loc.write_atomic(_rel(other_url), json.dumps(doc, indent=1).encode(), durable=False)
