"""Talking to a hub: one pooled HTTP connection per hub, the bearer token, retries of
what is safe to retry, and the hub's error messages turned into ModelHubErrors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from modelhub_torch.errors import HubAuthError, HubRequestError
from modelhub_torch.hub import bundle
from modelhub_torch.hub.credentials import hub_origin, token_for

API = "/api/v1"
BATCH_BYTES = 64 << 20  # objects per upload request, about
_RETRIES = 5


class HubClient:
    """The API of the hub at ``url`` (``token``: else MODELHUB_TOKEN, else the one
    ``modelhub login`` saved)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0):
        hub_origin(url)  # refuses anything but an http(s) URL
        self.url = url.rstrip("/")
        self.token = token or token_for(url)
        headers = {"User-Agent": "modelhub_torch"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url + API, headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=10.0),
                                  limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
        self._info: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.requests = 0  # made by this client (benchmarks read it)

    def close(self) -> None:
        self._http.close()

    # -------------------------------------------------------------- plumbing
    def request(self, method: str, path: str, *, retry: bool = True, **kw: Any) -> httpx.Response:
        """One request; connection failures and 429/502/503 are retried (with the hub's
        Retry-After) when ``retry``: reads, and writes that are idempotent."""
        for attempt in range(_RETRIES + 1):
            try:
                self.requests += 1
                resp = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if retry and attempt < _RETRIES and not isinstance(exc, httpx.WriteError | httpx.ReadTimeout):
                    time.sleep(min(2.0, 0.1 * 2 ** attempt))
                    continue
                raise HubRequestError(
                    f"cannot reach the hub at {self.url} ({type(exc).__name__}: {exc}); is 'modelhub serve' "
                    "running there, and is the URL right?"
                ) from exc
            if resp.status_code in (429, 502, 503) and retry and attempt < _RETRIES:
                wait = resp.headers.get("retry-after", "")
                time.sleep(min(10.0, float(wait)) if wait.replace(".", "", 1).isdigit() else 0.2 * 2 ** attempt)
                continue
            return resp
        raise AssertionError("unreachable")

    def check(self, resp: httpx.Response, what: str) -> httpx.Response:
        """``resp`` if it succeeded, else the hub's error as a ModelHubError."""
        if resp.status_code < 400:
            return resp
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and (doc.get("error") or doc.get("detail")):
            message = str(doc.get("error") or doc.get("detail"))  # ours, or FastAPI's validation
        else:
            message = resp.text[:500] or resp.reason_phrase
        text = f"{what}: the hub at {self.url} answered {resp.status_code}: {message}"
        if resp.status_code in (401, 403):
            raise HubAuthError(text, resp.status_code)
        raise HubRequestError(text, resp.status_code)

    def get_json(self, path: str, what: str, **kw: Any) -> Any:
        return self.check(self.request("GET", path, **kw), what).json()

    def post_json(self, path: str, doc: Any, what: str, retry: bool = True) -> Any:
        resp = self.request("POST", path, content=json.dumps(doc).encode(), retry=retry,
                            headers={"Content-Type": "application/json"})
        return self.check(resp, what).json()

    # --------------------------------------------------------------- the API
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self.get_json("/info", "hub info")
        return self._info

    def whoami(self) -> dict[str, Any]:
        return self.get_json("/whoami", "checking the token")

    def missing(self, model: str, ids: list[str]) -> list[str]:
        """Which of ``ids`` (objects of a version of ``model``) the hub lacks."""
        if not ids:
            return []
        resp = self.request("POST", "/objects/missing", params={"model": model}, json={"ids": ids})
        return list(self.check(resp, "asking which objects the hub lacks").json()["missing"])

    def upload(self, model: str, objects: Iterable[tuple[str, int]], read: Callable[[str], bytes]) -> int:
        """Send objects ``(id, size)`` of a version of ``model`` in batches of about
        BATCH_BYTES (``read`` gives an object's bytes); the bytes sent. Safe to repeat:
        objects are named by content."""
        limit = min(BATCH_BYTES, int(self.info().get("max_body", BATCH_BYTES)) - (1 << 20))
        batch: list[tuple[str, int]] = []
        sent = 0

        def flush() -> int:
            body = b"".join(bundle.encode((oid, read(oid)) for oid, _ in batch))
            self.check(self.request("POST", "/objects", content=body, params={"model": model},
                                    headers={"Content-Type": "application/octet-stream"}),
                       f"uploading {len(batch)} object(s)")
            return len(body)

        for oid, size in objects:
            if batch and sum(s for _, s in batch) + size > limit:
                sent += flush()
                batch = []
            batch.append((oid, size))
        if batch:
            sent += flush()
        return sent

    def send_version(self, manifest: bytes) -> dict[str, Any]:
        resp = self.request("POST", "/versions", content=manifest, headers={"Content-Type": "application/json"})
        return self.check(resp, "publishing a version").json()

    def set_tag(self, model: str, alias: str, vid: str, expect: str | None) -> httpx.Response:
        return self.request("PUT", f"/tags/{model}/{alias}", content=json.dumps({"version": vid, "expect": expect}),
                            headers={"Content-Type": "application/json"})

    def query(self, text: str) -> dict[str, Any]:
        return self.post_json("/query", {"text": text}, "query")

    def search(self, text: str, page: int = 1, per_page: int = 20) -> dict[str, Any]:
        return self.get_json("/search", "search", params={"q": text, "page": page, "per_page": per_page})


_CLIENTS: dict[tuple[str, str | None], HubClient] = {}
_GUARD = threading.Lock()


def client_for(url: str, token: str | None = None) -> HubClient:
    """The shared client of hub ``url`` in this process."""
    key = (url.rstrip("/"), token or token_for(url))
    with _GUARD:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = HubClient(url, token)
        return client
