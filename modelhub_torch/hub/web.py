"""The hub's web pages: server-rendered HTML over the same repository the API serves.

No JavaScript (the drawings are inline SVG from ``svg.py``), so the pages work in any
browser and a strict Content-Security-Policy forbids every script: even if escaping
were ever missed, a commit message could not run code. Jinja2 autoescapes every
template; the only markup passed through unescaped is the SVG ``svg.py`` builds, which
escapes each string itself.

Access follows the API: a public hub shows its pages to anyone; otherwise a page asks
for a read token, given once on ``/login`` and kept in an HttpOnly, SameSite=Strict
cookie that ``Hub.grant`` reads like a bearer header.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from modelhub_torch.errors import ModelHubError, RefNotFoundError
from modelhub_torch.hub import svg
from modelhub_torch.hub.search import MAX_PER_PAGE, is_dql
from modelhub_torch.hub.search import search as run_search
from modelhub_torch.hub.state import COOKIE, Hub, client_address
from modelhub_torch.hub.tokens import Grant
from modelhub_torch.records import Version
from modelhub_torch.store.refs import check_name

__all__ = ["router"]

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
PER_PAGE = 20
MAX_QUERY = 10_000  # characters of a search, as the API allows
MAX_LOGIN_BODY = 16 << 10
MAX_LINEAGE_CHILDREN = 60  # copies to other models drawn on a model's lineage
# No script may run on these pages, whatever a user managed to store in a message.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LOGIN_REASONS = {
    "needed": "This hub needs a token to browse it: log in with one.",
    "expired": "The token saved in this browser was not accepted any more (revoked, or from another "
               "hub): log in again.",
    "out": "You are logged out.",
}


# ------------------------------------------------------------------ formatting
def format_value(value: Any) -> str:
    """A metric, hparam or info value as text: floats to 4 significant digits, JSON
    words for booleans and null, JSON for lists and dicts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= 300 else text[:299] + "…"
    return str(value)


def format_bytes(n: int | float | None) -> str:
    """Bytes in binary units (1.8 KiB), as ``modelhub list`` shows them."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def format_when(iso: str | None) -> str:
    """An ISO-8601 UTC time to the second (``2026-01-02 10:35:22 UTC``)."""
    if not iso:
        return "—"
    text = iso.replace("T", " ")
    utc = text.endswith(("+00:00", "Z"))
    text = re.sub(r"(\.\d+)?(Z|[+-]\d\d:\d\d)?$", "", text)
    return f"{text} UTC" if utc else text


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(value=format_value, bytes=format_bytes, when=format_when)
    return env


# ------------------------------------------------------------------ helpers
def _root(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _model_of(ref: str) -> str | None:
    model, at, _ = ref.partition("@")
    return model if at else None


def _int(text: str, default: int, low: int, high: int) -> int:
    try:
        return min(high, max(low, int(text)))
    except (TypeError, ValueError):
        return default


def _local_path(target: str | None, root: str) -> str:
    """Where to go after logging in: a path on this site only (never ``//evil``)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target:
        return target
    return root + "/"


def _aliases_by_ref(repo: Any, models: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for model in set(models):
        for alias, ref in repo.tags(model).items():
            out.setdefault(ref, []).append(alias)
    return {ref: sorted(names) for ref, names in out.items()}


def _number(x: Any) -> float | None:
    """A metric value as a float to plot; None for text, booleans, lists, huge ints."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:
        return None


def _plots(versions: list[Version]) -> list[Markup]:
    """One plot per numeric metric over the version numbers."""
    keys = sorted({k for v in versions for k, x in v.metrics.items() if _number(x) is not None})
    plots = []
    for key in keys:
        points = [(v.number, y) for v in versions if (y := _number(v.metrics.get(key))) is not None]
        plots.append(Markup(svg.metric_plot_svg(key, points)))
    return plots


def lineage(model: str, everything: list[Version], root: str, aliases: dict[str, list[str]] | None = None
            ) -> tuple[list[svg.LineageNode], list[tuple[str, str]]]:
    """The nodes and edges of ``model``'s lineage: its versions, the versions of other
    models they were copied from, and the versions of other models copied from them."""
    own = sorted((v for v in everything if v.model == model), key=lambda v: v.number)
    own_refs = {v.ref for v in own}
    known = {v.ref: v for v in everything}
    by_id = {v.id: v for v in everything}
    aliases = aliases or {}

    def href(ref: str) -> str | None:
        v = known.get(ref)
        return f"{root}/models/{urllib.parse.quote(v.model)}/v/{v.number}" if v else None

    def parent_ref(v: Version) -> str | None:
        if not v.parent:
            return None
        return by_id[v.parent].ref if v.parent in by_id else v.parent

    nodes: list[svg.LineageNode] = []
    edges: list[tuple[str, str]] = []
    seen: set[str] = set()
    for v in own:  # versions of other models this one grew from, first
        p = parent_ref(v)
        if p and p not in own_refs and p not in seen:
            seen.add(p)
            other = known.get(p)
            nodes.append(svg.LineageNode(
                key=p, label=p if other else p[:14], sub="copied from", kind="parent", href=href(p),
                title=f"{p}: {other.message}" if other else f"{p} (not in this hub)"))
    for v in own:
        nodes.append(svg.LineageNode(
            key=v.ref, label=f"v{v.number}", sub=", ".join(aliases.get(v.ref, [])) or format_when(v.created_at)[:10],
            title=f"{v.ref}: {v.message}" if v.message else v.ref, href=href(v.ref), kind="self"))
        p = parent_ref(v)
        if p:
            edges.append((p, v.ref))
    children = sorted((v for v in everything if v.model != model and parent_ref(v) in own_refs),
                      key=lambda v: (v.created_at, v.ref))[:MAX_LINEAGE_CHILDREN]
    for v in children:
        nodes.append(svg.LineageNode(key=v.ref, label=v.ref, sub="copy", kind="child", href=href(v.ref),
                                     title=f"{v.ref}: {v.message}" if v.message else v.ref))
        edges.append((parent_ref(v) or "", v.ref))
    return nodes, edges


def _changed_layers(names: Iterable[str]) -> list[str]:
    """``0.weight``, ``0.bias`` -> ``0``: the modules whose tensors changed, in order."""
    out: list[str] = []
    for name in names:
        layer = name.rsplit(".", 1)[0] if "." in name else name
        if layer not in out:
            out.append(layer)
    return out


# ------------------------------------------------------------------ the router
def router(hub: Hub) -> APIRouter:
    """The pages of ``hub``: home and search, a model, a version, downloads, login."""
    r = APIRouter(include_in_schema=False)
    env = _environment()
    repo = hub.repo

    @functools.lru_cache(maxsize=256)
    def diff_of(parent_id: str, child_id: str) -> Any:
        """A version against its parent: both loaded whole once, then remembered
        (versions never change), so page views do not decode the weights again."""
        return repo.diff(parent_id, child_id)

    def render(request: Request, template: str, grant: Grant | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        context.setdefault("q", "")
        user = None
        if grant is not None and grant.token_id:
            user = grant.name or f"token {grant.token_id}"
        text = env.get_template(template).render(
            root=_root(request), base_url=_base_url(request), public=hub.public, user=user,
            show_search=grant is not None and grant.can("read"), **context)
        return HTMLResponse(text, status, headers=HEADERS)

    def error_page(request: Request, grant: Grant | None, status: int, heading: str, message: str,
                   hint: str = "") -> HTMLResponse:
        return render(request, "error.html", grant, status, heading=heading, message=message, hint=hint)

    def no_such_page(request: Request) -> HTMLResponse:
        return error_page(request, None, 404, "No such page",
                          f"Nothing is served at {request.url.path}.", "Start from the home page.")

    hub.page_not_found = no_such_page  # the app's 404 for browsers (server.py)

    def to_login(request: Request, reason: str) -> RedirectResponse:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query = urllib.parse.urlencode({"next": here, "reason": reason})
        return RedirectResponse(f"{_root(request)}/login?{query}", 303, headers=HEADERS)

    def gate(request: Request) -> tuple[Grant | None, Response | None]:
        """The reader's grant, or the response to send instead (login, too many requests)."""
        try:
            grant = hub.grant(request)
        except HTTPException:
            answer = to_login(request, "expired")
            answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return None, answer
        key = grant.token_id if grant is not None and grant.token_id else f"ip:{client_address(request)}"
        wait = hub.rates.take(key)
        if wait > 0:
            page = error_page(request, grant, 429, "Too many requests",
                              f"At most {hub.limits.rate:g} requests per second; wait {wait:.1f} s and reload.")
            page.headers["Retry-After"] = str(max(1, round(wait)))
            return None, page
        if grant is None or not grant.can("read"):
            return None, to_login(request, "needed")
        return grant, None

    def unknown_model(request: Request, grant: Grant, model: str) -> HTMLResponse:
        return error_page(request, grant, 404, "No such model",
                          f"There is no model named {model!r} on this hub.",
                          "Check the name on the list of models, or search for it; a model appears here "
                          "once someone pushes it ('modelhub push URL MODEL').")

    def bad_name(request: Request, grant: Grant, exc: ModelHubError) -> HTMLResponse:
        return error_page(request, grant, 404, "No such model", str(exc),
                          "Model names in these addresses are letters, digits, '.', '_' and '-'.")

    def find_version(request: Request, grant: Grant, model: str, number: str) -> Version | HTMLResponse:
        try:
            check_name("model", model)
        except ModelHubError as exc:
            return bad_name(request, grant, exc)
        if not re.fullmatch(r"[0-9]{1,9}", number):
            return error_page(request, grant, 404, "No such version",
                              f"{number!r} is not a version number.",
                              f"Versions are numbered 1, 2, 3…: see the list on the page of {model}.")
        try:
            v = repo.version(f"{model}@v{int(number)}")
        except RefNotFoundError:
            if model not in repo.models():
                return unknown_model(request, grant, model)
            return error_page(request, grant, 404, "No such version",
                              f"{model} has no version {int(number)}.",
                              f"See which versions it has on the page of {model}.")
        if v.model != model:  # a ref resolves within its model; never show another one's page
            return unknown_model(request, grant, model)
        return v

    # ---------------------------------------------------------------- login
    @r.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "", reason: str = "") -> Response:
        try:
            grant = hub.grant(request)
        except HTTPException:
            grant = None
        return render(request, "login.html", grant, message=LOGIN_REASONS.get(reason, ""),
                      next=_local_path(next, _root(request)), error="")

    @r.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return error_page(request, None, 413, "Too large", "A login form is a token and nothing more.")
        try:
            fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True,
                                           max_num_fields=10)
        except ValueError:
            fields = {}
        token = (fields.get("token") or [""])[0].strip()
        target = _local_path((fields.get("next") or [""])[0], _root(request))
        wait = hub.rates.take(f"login:{client_address(request)}")
        if wait > 0:
            return error_page(request, None, 429, "Too many requests", f"Wait {wait:.1f} s and try again.")
        grant = await run_in_threadpool(hub.tokens.check, token) if token else None
        if grant is None or not grant.can("read"):
            error = ("Enter a token." if not token else
                     "That token was not accepted: it is mistyped, revoked, or from another hub. "
                     "Ask the hub's admin for one ('modelhub token create --scope read').")
            return render(request, "login.html", None, 401, message="", next=target, error=error)
        answer = RedirectResponse(target, 303, headers=HEADERS)
        answer.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/",
                          secure=request.url.scheme == "https")
        return answer

    @r.get("/logout")
    def logout(request: Request) -> Response:
        answer = RedirectResponse(f"{_root(request)}/login?reason=out", 303, headers=HEADERS)
        answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return answer

    # ---------------------------------------------------------------- home
    @r.get("/", response_class=HTMLResponse)
    def home(request: Request, q: str = "", page: str = "1", per_page: str = str(PER_PAGE)) -> Response:
        grant, answer = gate(request)
        if answer is not None:
            return answer
        q = q.strip()
        if q:
            return search_page(request, grant, q, _int(page, 1, 1, 1 << 30),
                               _int(per_page, PER_PAGE, 1, MAX_PER_PAGE))
        everything = repo.versions()
        by_model: dict[str, list[Version]] = {}
        for v in everything:
            by_model.setdefault(v.model, []).append(v)
        rows = []
        for name in sorted(by_model):
            vs = sorted(by_model[name], key=lambda v: v.number)
            refs = {v.ref: v for v in vs}
            best = refs.get(repo.tags(name).get("best", ""))
            shown, why = (best, "best") if best is not None else (vs[-1], "latest")
            rows.append({"name": name, "count": len(vs), "latest": vs[-1], "shown": shown, "shown_why": why,
                         "stored": sum(v.stored_bytes for v in vs), "raw": sum(v.raw_bytes for v in vs)})
        return render(request, "home.html", grant, models=rows)

    def search_page(request: Request, grant: Grant | None, q: str, page: int, per_page: int) -> Response:
        if len(q) > MAX_QUERY:
            return render(request, "home.html", grant, 400, q=q[:200] + "…", kind="text",
                          error=f"a search is at most {MAX_QUERY:,} characters")
        try:
            found = run_search(repo, q, page, per_page)
        except ModelHubError as exc:
            return render(request, "home.html", grant, 400, q=q, kind="dql" if is_dql(q) else "text",
                          error=str(exc))
        results = found["results"]
        aliases = _aliases_by_ref(repo, (x["model"] for x in results))
        for x in results:
            x["tags"] = sorted(set(x.get("tags") or []) | set(aliases.get(x["ref"], [])))
        total = found["total"]
        return render(request, "home.html", grant, q=q, kind=found["kind"], error="", results=results,
                      total=total, page=page, per_page=per_page, pages=max(1, -(-total // per_page)),
                      first=(page - 1) * per_page + 1, last=min(total, page * per_page))

    # ---------------------------------------------------------------- model
    @r.get("/models/{model}", response_class=HTMLResponse)
    def model_page(request: Request, model: str) -> Response:
        grant, answer = gate(request)
        if answer is not None:
            return answer
        try:
            check_name("model", model)
        except ModelHubError as exc:
            return bad_name(request, grant, exc)
        everything = repo.versions()
        versions = sorted((v for v in everything if v.model == model), key=lambda v: v.number)
        if not versions:
            return unknown_model(request, grant, model)
        aliases = repo.tags(model)
        tags: dict[str, list[str]] = {}
        for alias, ref in aliases.items():
            tags.setdefault(ref, []).append(alias)
        tags = {ref: sorted(names) for ref, names in tags.items()}
        nodes, edges = lineage(model, everything, _root(request), tags)
        return render(request, "model.html", grant, model=model, versions=versions, aliases=aliases,
                      tags=tags,
                      stored=sum(v.stored_bytes for v in versions), raw=sum(v.raw_bytes for v in versions),
                      lineage_svg=Markup(svg.lineage_svg(nodes, edges)), plots=_plots(versions),
                      pull_command=f"modelhub pull {_base_url(request)} {model}")

    def gated_version(request: Request, model: str, number: str) -> tuple[Grant | None, Version | Response]:
        """The version a page or download is about, or the response to send instead
        (login, too many requests, no such version)."""
        grant, answer = gate(request)
        if answer is not None:
            return grant, answer
        return grant, find_version(request, grant, model, number)

    # ---------------------------------------------------------------- version
    @r.get("/models/{model}/v/{number}", response_class=HTMLResponse)
    def version_page(request: Request, model: str, number: str) -> Response:
        grant, v = gated_version(request, model, number)
        if isinstance(v, Response):
            return v
        contents = repo.describe(v.ref)
        network, note = None, ""
        graph = contents.graph
        if not graph:
            note = ("No network graph was recorded with this version: commit the nn.Module itself "
                    "(or pass graph=module) to record one.")
        else:
            try:
                network = Markup(svg.network_svg(graph))
                count = len(graph.get("nodes") or [])
                if count > svg.MAX_NETWORK_NODES:
                    note = f"The first {svg.MAX_NETWORK_NODES:,} of {count:,} layers are drawn."
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                note = f"The recorded graph could not be drawn ({exc.__class__.__name__}: {exc})."
        diff, diff_error, net = None, "", None
        if v.parent:
            try:
                diff = diff_of(repo.resolve(v.parent), v.id)
            except ModelHubError as exc:
                diff_error = str(exc)
        if diff is not None and graph and repo.manifest(diff.a_id).extra.get("graph"):
            net = diff.network  # layers compared only when both sides recorded their network
        known = {x.ref for x in repo.versions()}
        return render(request, "version.html", grant, v=v, contents=contents, network_svg=network,
                      network_note=note, diff=diff, diff_error=diff_error, net=net, known_refs=known,
                      changed_layers=_changed_layers(t.name for t in diff.changed) if diff else [],
                      aliases=sorted(a for a, ref in repo.tags(v.model).items() if ref == v.ref))

    # ---------------------------------------------------------------- downloads
    def download(request: Request, model: str, number: str, suffix: str) -> Response:
        grant, v = gated_version(request, model, number)
        if isinstance(v, Response):
            return v
        folder = tempfile.mkdtemp(prefix="modelhub-web-")
        name = f"{v.model}-v{v.number}{suffix}"
        path = Path(folder) / name
        try:
            if suffix == ".pt" and v.holds_pickle:  # a download never carries pickles: weights only
                import torch

                torch.save(repo.load_state_dict(v.ref), str(path))
            else:
                repo.export(v.ref, path)
        except ModelHubError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return error_page(request, grant, 409, "Cannot download this version", str(exc))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/octet-stream", filename=name,
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @r.get("/models/{model}/v/{number}/download.pt")
    def download_pt(request: Request, model: str, number: str) -> Response:
        return download(request, model, number, ".pt")

    @r.get("/models/{model}/v/{number}/download.safetensors")
    def download_safetensors(request: Request, model: str, number: str) -> Response:
        return download(request, model, number, ".safetensors")

    return r
