"""Bearer tokens of a hub, kept in the repository location itself (``hub/tokens/``), so
the hub holds no state of its own and every hub process over one location agrees.

A token is ``mh_<id>_<secret>``; only a SHA-256 of the secret is stored (the secret is
32 random bytes, so a slow password hash adds nothing). A grant has scopes (``read``,
``write``; write implies read) and optionally model-name globs limiting what it may
write.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from modelhub_torch.errors import ModelHubError
from modelhub_torch.store.location import Location

TOKENS_DIR = "hub/tokens"
SCOPES = ("read", "write")
_TOKEN = re.compile(r"^mh_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_CACHE_SECONDS = 5.0  # a revoked token stops working within this long on every hub process


@dataclass(frozen=True)
class Grant:
    """What a request may do: the token's id (None: anonymous on a public hub)."""

    token_id: str | None
    scopes: frozenset[str]
    models: tuple[str, ...] = ()  # globs; empty: every model
    name: str = ""

    def can(self, scope: str) -> bool:
        return scope in self.scopes or (scope == "read" and "write" in self.scopes)

    def may_write(self, model: str) -> bool:
        return "write" in self.scopes and (not self.models or any(fnmatch.fnmatchcase(model, g) for g in self.models))


ANONYMOUS_READ = Grant(None, frozenset({"read"}), name="anonymous")


@dataclass
class TokenRecord:
    id: str
    digest: str
    scopes: list[str]
    models: list[str] = field(default_factory=list)
    name: str = ""
    created_at: str = ""

    def grant(self) -> Grant:
        return Grant(self.id, frozenset(self.scopes), tuple(self.models), self.name)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Create, list, revoke and check the tokens of the hub at ``loc``."""

    def __init__(self, loc: Location):
        self.loc = loc
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}
        self._lock = threading.Lock()

    def create(self, scope: str, models: list[str] | None = None, name: str = "") -> str:
        """A new token (shown once; only its hash is kept)."""
        if scope not in SCOPES:
            raise ModelHubError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
        globs = [g for g in (models or []) if g]
        for g in globs:
            if not re.fullmatch(r"[A-Za-z0-9._*?\[\]!-]{1,128}", g):
                raise ModelHubError(f"invalid model glob {g!r}: letters, digits, '.', '_', '-' and * ? [ ] only")
        tid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        scopes = ["read", "write"] if scope == "write" else ["read"]
        record = {
            "id": tid, "digest": _digest(secret), "scopes": scopes, "models": globs, "name": name,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.loc.makedirs(TOKENS_DIR)
        if self.loc.create_exclusive(f"{TOKENS_DIR}/{tid}.json", json.dumps(record, indent=2).encode()) is None:
            raise ModelHubError("token id collision; run the command again")
        return f"mh_{tid}_{secret}"

    def records(self) -> list[TokenRecord]:
        out = []
        for name in self.loc.listdir(TOKENS_DIR):
            if name.endswith(".json"):
                rec = self._load(name[:-5])
                if rec is not None:
                    out.append(rec)
        return sorted(out, key=lambda r: r.created_at)

    def revoke(self, token_id: str) -> bool:
        if not re.fullmatch(r"[0-9a-f]{16}", token_id or ""):
            raise ModelHubError(f"{token_id!r} is not a token id (16 hex digits, see 'modelhub token list')")
        rel = f"{TOKENS_DIR}/{token_id}.json"
        if not self.loc.exists(rel):
            return False
        self.loc.delete(rel)
        with self._lock:
            self._cache.pop(token_id, None)
        return True

    def check(self, token: str) -> Grant | None:
        """The grant of ``token``, or None when it is malformed, unknown or revoked."""
        match = _TOKEN.fullmatch(token or "")
        if not match:
            return None
        tid, secret = match.groups()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tid)
        if hit is None or now - hit[0] > _CACHE_SECONDS:
            hit = (now, self._load(tid))
            with self._lock:
                self._cache[tid] = hit
        record = hit[1]
        if record is None or not hmac.compare_digest(record.digest, _digest(secret)):
            return None
        return record.grant()

    def _load(self, tid: str) -> TokenRecord | None:
        try:
            doc: Any = json.loads(self.loc.read(f"{TOKENS_DIR}/{tid}.json"))
            return TokenRecord(id=str(doc["id"]), digest=str(doc["digest"]), scopes=[str(s) for s in doc["scopes"]],
                               models=[str(g) for g in doc.get("models", [])], name=str(doc.get("name", "")),
                               created_at=str(doc.get("created_at", "")))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
