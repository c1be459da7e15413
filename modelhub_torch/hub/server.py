"""The hub server: one repository location served over HTTP (``create_app``), an ASGI
app a user can run with ``modelhub serve`` or mount in an app of their own.

The API (``/api/v1``, OpenAPI docs at ``/docs``):

- reads, as files: ``GET files/{path}`` (with ``Range``) and ``GET list/{path}`` over
  modelhub.json, objects/ and refs/, and ``GET refs`` (every ref in one answer) — what
  a client's ``Repository(URL)`` reads; ``POST pack``: a version cut to its top planes
  (hub/packs.py);
- pushes, in two steps: ``POST objects/missing`` then ``POST objects`` (a batch,
  each object checked against its name before any is stored), then ``POST versions``
  with the manifest, which the server checks as any receiver does (sync/receive.py:
  every tensor decoded against its digest) before its numbered ref — the commit
  point, created only if absent — makes it visible; ``PUT tags/{model}/{alias}`` by
  compare-and-swap;
- ``POST query`` (DQL select, read-only) and ``GET search``.

The hub holds no state outside its location (tokens live in ``hub/tokens/`` there),
so several hub processes over one S3 location serve one repository: their commits
meet at the conditional refs, never in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelhub_torch import __version__
from modelhub_torch.errors import (
    ConflictError,
    CorruptObjectError,
    DivergedError,
    FormatError,
    ModelHubError,
    RefNotFoundError,
)
from modelhub_torch.hub import bundle
from modelhub_torch.hub.limits import Limits
from modelhub_torch.hub.packs import PackMaker
from modelhub_torch.hub.paths import CONFIG, SWITCH, BadPathError, served_path
from modelhub_torch.hub.search import search as run_search
from modelhub_torch.hub.state import API, COOKIE, Hub, HubError
from modelhub_torch.hub.tokens import Grant
from modelhub_torch.manifest import Manifest
from modelhub_torch.repository import Repository
from modelhub_torch.store.refs import check_alias, check_name
from modelhub_torch.validate import is_object_id, is_version_id

_SERVER_SETTINGS = ("cold",)  # settings naming server-side places, never shown to clients


def create_app(location: str, storage_options: dict[str, Any] | None = None, *, public: bool = False,
               limits: Limits | None = None, web: bool = True) -> FastAPI:
    """An ASGI app serving the repository at ``location`` (created if absent)."""
    hub = Hub(location, storage_options, public=public, limits=limits)
    app = FastAPI(title="modelhub", version=__version__,
                  description="A modelhub_torch repository: push, pull, search and browse model versions.")
    app.state.hub = hub

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and the router's own (404, 405)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        page = hub.page_not_found
        if (exc.status_code == 404 and page is not None and not request.url.path.startswith(API)
                and "text/html" in request.headers.get("accept", "")):
            return page(request)  # a browser at an unknown address gets a page, not JSON
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > hub.limits.max_body):
            return JSONResponse({"error": f"request body of {length} bytes is over this hub's limit of "
                                          f"{hub.limits.max_body:,}; send smaller batches", "status": 413}, 413)
        return await call_next(request)

    app.include_router(api_router(hub), prefix=API)
    if web:
        from modelhub_torch.hub.web import router as web_router

        app.include_router(web_router(hub))
    return app


CONFIG_ENV = "MODELHUB_SERVE_CONFIG"  # how 'modelhub serve --workers N' hands its options to each worker


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``modelhub serve --workers N`` (uvicorn's
    factory): the same location and options in every worker; rate limits count per
    worker; pushes meet at the location's conditional refs as between any two hubs."""
    doc = json.loads(os.environ[CONFIG_ENV])
    limits = Limits(max_body=int(doc["max_body"]), rate=float(doc["rate"]), burst=max(1, int(2 * float(doc["rate"]))))
    return create_app(doc["location"], doc.get("storage_options"), public=bool(doc["public"]), limits=limits)


async def _read_body(request: Request, limit: int) -> Any:
    """The request body, spooled to disk past 64 MiB; 413 past ``limit``."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - the caller closes it
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            spool.close()
            raise HubError(413, f"request body over this hub's limit of {limit:,} bytes; send smaller batches")
        spool.write(chunk)
    spool.seek(0)
    return spool


JSON_BODY = 64 << 20  # a JSON request (object ids, a have-list, a query): far below any upload


async def _json_body(request: Request, what: str) -> dict[str, Any]:
    """A JSON object from the request body, read up to JSON_BODY bytes (a chunked
    request has no Content-Length for the middleware to refuse early)."""
    body = await _read_body(request, JSON_BODY)
    try:
        return _json(body.read(), what)
    finally:
        body.close()


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise HubError(400, f"{what}: the body is not JSON") from None
    if not isinstance(doc, dict):
        raise HubError(400, f"{what}: expected a JSON object")
    return doc


def api_router(hub: Hub) -> APIRouter:
    r = APIRouter()
    read, write = hub.require("read"), hub.require("write")
    store = hub.repo.store
    packs = PackMaker(store)

    def _settings_for_clients() -> bytes:
        doc = json.loads(store.loc.read(CONFIG))
        for key in _SERVER_SETTINGS:
            doc.pop(key, None)
        return json.dumps(doc, indent=2).encode()

    @r.get("/info")
    def info(grant: Grant = Depends(read)) -> dict[str, Any]:
        return {"hub": "modelhub_torch", "version": __version__, "public": hub.public,
                "models": len(store.refs.models()), "max_body": hub.limits.max_body}

    @r.get("/whoami")
    def whoami(grant: Grant = Depends(read)) -> dict[str, Any]:
        return {"token": grant.token_id, "name": grant.name, "scopes": sorted(grant.scopes),
                "models": list(grant.models)}

    @r.get("/files/{path:path}")
    def files(path: str, request: Request, grant: Grant = Depends(read)) -> Response:
        rel = _served(path)
        if rel == CONFIG:
            return Response(_settings_for_clients(), media_type="application/json")
        if rel.startswith("objects/"):
            oid = rel.replace("/", "")[len("objects"):]
            if not is_object_id(oid):
                raise HubError(404, f"no such object: {path}")
            if not store.objects.exists(oid):
                raise HubError(404, f"no object {oid[:12]} here")
            local = store.loc.path(store.objects.rel(oid)) if store.loc.is_local else None
            if local is not None and os.path.isfile(local):  # streamed from disk, ranges by Starlette
                return FileResponse(local, media_type="application/octet-stream")
            data_size = store.objects.size(oid)
            rng = _range(request.headers.get("range"), data_size)
            if rng is None:
                return Response(store.objects.get(oid, verify=False), media_type="application/octet-stream")
            start, end = rng
            part = store.objects.get_ranges(oid, [(start, end - start)])[0]
            return Response(bytes(part), 206, media_type="application/octet-stream",
                            headers={"Content-Range": f"bytes {start}-{end - 1}/{data_size}"})
        try:
            data = store.loc.read(rel)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HubError(404, f"no file {rel} here") from None
        return Response(data, media_type="application/octet-stream")

    @r.get("/refs")
    def refs(grant: Grant = Depends(read)) -> dict[str, Any]:
        """Every file under refs/ with its content (ids and newlines), modelhub.json and
        an archive's switch.json if there is one: what a client reads to open the
        repository, in one request instead of several per version."""
        out: dict[str, str] = {CONFIG: _settings_for_clients().decode()}
        try:
            out[SWITCH] = store.loc.read(SWITCH).decode("utf-8", "replace")
        except FileNotFoundError:
            pass
        for rel in store.loc.walk_files("refs"):
            rel = rel.replace("\\", "/")
            try:
                served_path(rel)  # a name no ref could have is left out
                out[rel] = store.loc.read(rel).decode("utf-8", "replace")[:256]
            except (BadPathError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
        return {"files": out}

    @r.get("/list/{path:path}")
    def listing(path: str, recursive: bool = False, grant: Grant = Depends(read)) -> dict[str, Any]:
        rel = _served(path)
        if rel == CONFIG:
            raise HubError(400, "modelhub.json is a file, not a folder")
        if recursive:
            roots = [rel] if rel else ["objects", "refs"]
            return {"files": sorted(f.replace("\\", "/") for root in roots for f in store.loc.walk_files(root))}
        names = store.loc.listdir(rel) if rel else [CONFIG, "objects", "refs"]
        return {"names": names}

    def writes_model(grant: Grant, model: str) -> None:
        """Objects are uploaded for one model's version: a token limited to other
        models is refused before anything is stored."""
        try:
            check_name("model", model)
        except ModelHubError as exc:
            raise HubError(400, f"{exc} (the 'model' parameter names the model the objects are for)") from None
        hub.may_write(grant, model)

    @r.post("/objects/missing")
    async def missing(request: Request, model: str, grant: Grant = Depends(write)) -> dict[str, Any]:
        writes_model(grant, model)
        doc = await _json_body(request, "objects/missing")
        ids = doc.get("ids")
        if not isinstance(ids, list) or len(ids) > 100_000 or not all(is_object_id(i) for i in ids):
            raise HubError(400, "objects/missing: 'ids' must be a list of at most 100000 object ids")
        return {"missing": [i for i in ids if not store.objects.exists(i)]}

    @r.post("/objects")
    async def upload(request: Request, model: str, grant: Grant = Depends(write)) -> dict[str, Any]:
        writes_model(grant, model)
        body = await _read_body(request, hub.limits.max_body)
        try:
            try:
                batch = list(bundle.decode(body, hub.limits.max_body))
            except bundle.BadBundleError as exc:
                raise HubError(422, str(exc)) from None
            for oid, data in batch:  # every object checked before any is stored
                if store.objects.put(data) != oid:
                    raise HubError(500, f"object {oid[:12]} was stored under another name")
        finally:
            body.close()
        return {"stored": len(batch), "bytes": sum(len(d) for _, d in batch)}

    @r.post("/versions")
    async def receive_version(request: Request, grant: Grant = Depends(write)) -> dict[str, Any]:
        body = await _read_body(request, hub.limits.max_body)
        try:
            raw = body.read()
        finally:
            body.close()
        from modelhub_torch.hub.receiving import receive_manifest

        try:
            m = Manifest.from_bytes(raw, "pushed manifest")
        except FormatError as exc:
            raise HubError(422, str(exc)) from None
        try:
            check_name("model", m.model)
        except ModelHubError as exc:
            raise HubError(400, str(exc)) from None
        hub.may_write(grant, m.model)
        try:
            stored = await _in_thread(receive_manifest, store, m)
        except (DivergedError, ConflictError) as exc:
            raise HubError(409, str(exc)) from None
        except (CorruptObjectError, FormatError) as exc:
            raise HubError(422, f"{m.ref} was refused, nothing of it is visible: {exc}") from None
        except ModelHubError as exc:
            raise HubError(400, str(exc)) from None
        return stored

    @r.put("/tags/{model}/{alias}")
    async def set_tag(model: str, alias: str, request: Request, grant: Grant = Depends(write)) -> dict[str, Any]:
        try:
            check_name("model", model)
            check_alias(alias)
        except ModelHubError as exc:
            raise HubError(400, str(exc)) from None
        hub.may_write(grant, model)
        doc = await _json_body(request, "tags")
        vid, expect = doc.get("version"), doc.get("expect")
        if not is_version_id(vid) or (expect is not None and not is_version_id(expect)):
            raise HubError(400, "tags: 'version' (and 'expect', when given) must be version ids")
        try:
            if store.manifest(vid).model != model:
                raise HubError(400, f"{vid[:12]} is a version of another model than {model!r}")
        except RefNotFoundError:
            raise HubError(404, f"no version {vid[:12]} here: push it first") from None
        try:
            with store.lock:
                store.refs.set_tag(model, alias, vid, expect=expect)
        except ConflictError as exc:
            raise HubError(409, str(exc)) from None
        return {"tag": f"{model}@{alias}", "version": vid}

    @r.post("/pack")
    async def pack(request: Request, grant: Grant = Depends(read)) -> Response:
        """A version cut to its top byte planes, coded against what the client holds
        (hub/packs.py): partial pulls read only what they keep."""
        doc = await _json_body(request, "pack")
        try:
            parts = await _in_thread(lambda: list(packs.make(doc)))
        except ModelHubError as exc:
            raise HubError(400, str(exc)) from None
        return StreamingResponse(iter(parts), media_type="application/octet-stream")

    @r.post("/query")
    async def query(request: Request, grant: Grant = Depends(read)) -> dict[str, Any]:
        doc = await _json_body(request, "query")
        text = doc.get("text")
        if not isinstance(text, str) or len(text) > 10_000:
            raise HubError(400, "query: 'text' must be a DQL statement of at most 10000 characters")
        return await _in_thread(_run_query, hub.repo, text)

    @r.get("/search")
    def search(q: str = "", page: int = 1, per_page: int = 20, grant: Grant = Depends(read)) -> dict[str, Any]:
        try:
            return run_search(hub.repo, q, page, per_page)
        except ModelHubError as exc:
            raise HubError(400, str(exc)) from None

    return r


def _run_query(repo: Repository, text: str) -> dict[str, Any]:
    from modelhub_torch.hub.search import check_select

    try:
        check_select(text)
        result = repo.query(text)
    except ModelHubError as exc:
        raise HubError(400, str(exc)) from None
    return {"columns": result.columns, "rows": result.to_dicts(),
            "versions": [_version_json(v) for v in result]}


def _version_json(v: Any) -> dict[str, Any]:
    d = asdict(v)
    d["lossy"] = list(d.get("lossy") or ())
    return d


def _served(path: str) -> str:
    try:
        return served_path(path)
    except BadPathError as exc:
        raise HubError(400, str(exc)) from None


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` of a single ``bytes=a-b`` range; None for the whole file."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    start_s, sep, end_s = spec.strip().partition("-")
    if unit.strip() != "bytes" or not sep or "," in spec:
        raise HubError(416, f"unsupported range {header!r}: one 'bytes=START-END' range")
    try:
        if start_s == "":
            start, end = max(0, size - int(end_s)), size
        else:
            start = int(start_s)
            end = min(size, int(end_s) + 1) if end_s else size
    except ValueError:
        raise HubError(416, f"malformed range {header!r}") from None
    if start < 0 or start > end or start > size:
        raise HubError(416, f"range {header!r} is outside the {size}-byte file", headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


__all__ = ["API", "COOKIE", "Hub", "HubError", "app_from_environment", "create_app"]
