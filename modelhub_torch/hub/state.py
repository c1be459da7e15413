"""What every request of one hub app shares — the repository, the tokens, the limits —
and how a request's token becomes a grant (or a 401/403/429 that says what to do).
Used by the API (server.py) and the pages (web.py)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from modelhub_torch.hub.limits import Limits, RateLimiter
from modelhub_torch.hub.tokens import ANONYMOUS_READ, Grant, TokenStore
from modelhub_torch.repository import Repository
from modelhub_torch.store.location import Location

API = "/api/v1"
COOKIE = "modelhub_token"


class HubError(HTTPException):
    """An error answered as ``{"error": message}``."""


class Hub:
    """What every request of one app shares: the repository, the tokens, the limits."""

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None, *,
                 public: bool = False, limits: Limits | None = None, create: bool = True):
        loc = Location(location, storage_options)
        if create:
            Repository.init(location, exist_ok=True, storage_options=storage_options)
        self.repo = Repository(location, storage_options)
        self.loc = loc
        self.public = public
        self.limits = limits or Limits()
        self.tokens = TokenStore(loc)
        self.rates = RateLimiter(self.limits.rate, self.limits.burst)
        self.page_not_found: Any = None  # set by web.py: the HTML 404 for browsers

    # ----------------------------------------------------------------- auth
    def grant(self, request: Request) -> Grant | None:
        """The grant of the request's token (header, else the web page's cookie); the
        anonymous read grant on a public hub; None without a token."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
        if token:
            grant = self.tokens.check(token)
            if grant is None:
                raise HubError(401, "the token was not accepted (mistyped, or revoked): create one on the hub "
                                    "with 'modelhub token create' and save it with 'modelhub login URL'",
                               headers={"WWW-Authenticate": "Bearer"})
            return grant
        return ANONYMOUS_READ if self.public else None

    def require(self, scope: str):
        """A FastAPI dependency: the request's grant, which must hold ``scope``."""

        def check(request: Request) -> Grant:
            grant = self.grant(request)
            key = grant.token_id if grant is not None and grant.token_id else f"ip:{client_address(request)}"
            wait = self.rates.take(key)
            if wait > 0:
                raise HubError(429, f"too many requests: at most {self.limits.rate:g} per second per token; "
                                    f"retry in {wait:.2f} s", headers={"Retry-After": f"{max(1, round(wait))}"})
            if grant is None:
                raise HubError(401, "this hub needs a token: ask its admin for one ('modelhub token create' "
                                    "on the hub), then 'modelhub login URL' or set MODELHUB_TOKEN",
                               headers={"WWW-Authenticate": "Bearer"})
            if not grant.can(scope):
                raise HubError(403, f"this token may {', '.join(sorted(grant.scopes)) or 'nothing'} but this "
                                    f"needs '{scope}': ask the hub's admin for a token with "
                                    f"'modelhub token create --scope {scope}'")
            return grant

        return check

    def may_write(self, grant: Grant, model: str) -> None:
        if not grant.may_write(model):
            raise HubError(403, f"this token may write only models matching {', '.join(grant.models)}, "
                                f"not {model!r}: push under a matching name or ask for a token that covers it")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
