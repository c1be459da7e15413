"""The hub's web pages: what they show (checked in the HTML, over a real server) and
that a real browser can click through them, download a version bit-exactly, search,
and log in to a private hub; every string a user wrote stays text."""

from __future__ import annotations

import copy
import html
import io
import re
import shutil
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from conftest import assert_bit_equal
from hub_server import running_hub
from markupsafe import escape
from torch import nn

from modelhub_torch.hub import svg
from modelhub_torch.hub.server import COOKIE
from modelhub_torch.hub.tokens import TokenStore
from modelhub_torch.repository import Repository
from modelhub_torch.store.location import Location

SCRIPT = "<script>alert(1)</script>"
EVIL_TENSOR = "<img src=x onerror=alert(2)>"
EVIL_METRIC = '<i>m"</i>'
EVIL_HPARAM = "<b>h</b>"
EVIL_INFO = "<s>k</s>"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


# ------------------------------------------------------------------ fixtures
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))  # 212 parameters


def _clone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict as committed (an OrderedDict, its _metadata included), frozen."""
    return copy.deepcopy(sd)


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """mlp v1..v3 (v2 tagged best, its message a script; v3 without a graph), its
    fine-tune mlp-ft v1 (a copy of mlp@v2) and v2, and 'odd', whose every name is markup."""
    path = tmp_path_factory.mktemp("web") / "repo"
    repo = Repository.init(str(path))
    torch.manual_seed(0)
    net = _mlp()
    weights: dict[str, dict[str, torch.Tensor]] = {}
    repo.commit(net, "mlp", metrics={"acc": 0.5, "loss": 1.0}, hparams={"lr": 0.01}, message="first")
    weights["mlp@v1"] = _clone(net.state_dict())
    with torch.no_grad():
        net[0].weight.add_(0.125)
    repo.commit(net, "mlp", metrics={"acc": 0.7, "loss": 0.6}, hparams={"lr": 0.01}, message=SCRIPT)
    weights["mlp@v2"] = _clone(net.state_dict())
    with torch.no_grad():
        net[2].bias.mul_(0.5)
    repo.commit(net.state_dict(), "mlp", metrics={"acc": 0.65, "loss": 0.55}, hparams={"lr": 0.001},
                message="third: a plain state_dict")
    weights["mlp@v3"] = _clone(net.state_dict())
    repo.tag("mlp@v2", "best")
    repo.copy("mlp@v2", "mlp-ft")
    ft = _mlp()
    ft.load_state_dict(weights["mlp@v2"])
    with torch.no_grad():
        ft[2].weight.add_(0.25)
    repo.commit(ft, "mlp-ft", metrics={"acc": 0.8}, message="fine-tuned")
    weights["mlp-ft@v2"] = _clone(ft.state_dict())
    repo.commit({EVIL_TENSOR: torch.arange(3.0), "w": torch.ones(2)}, "odd", metrics={EVIL_METRIC: 1.5},
                hparams={EVIL_HPARAM: "<u>x</u>"}, info={EVIL_INFO: "<em>"}, message='<b>bold</b> & "quoted"')
    repo.wait()
    return {"path": str(path), "weights": weights}


@pytest.fixture(scope="module")
def hub_url(hub_repo: dict[str, Any]) -> Iterator[str]:
    with running_hub(hub_repo["path"], public=True) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        pytest.skip("no Chromium for the browser tests: pip install playwright and install Debian's chromium "
                    "(apt-get install chromium) to run the browser tests")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=30, **kw)


def _cells(page: str, css_class: str) -> list[str]:
    """The text of every ``<td class="...css_class...">``, unescaped."""
    found = re.findall(rf'<td class="[^"]*\b{css_class}\b[^"]*">(.*?)</td>', page, re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in found]


def _svg(page: str, marker: str) -> str:
    """The inline ``<svg ...>`` element whose opening tag holds ``marker``."""
    m = re.search(rf"<svg [^>]*{re.escape(marker)}[^>]*>.*?</svg>", page, re.S)
    assert m, f"no svg with {marker!r}"
    ET.fromstring(m.group(0))  # well-formed XML, so every string in it was escaped
    return m.group(0)


# ------------------------------------------------------------------ pure drawings
def test_drawings_escape_every_string_and_stay_well_formed() -> None:
    evil = '<script>alert("x")</script> & \'q\''
    nodes = [svg.LineageNode(key="a@v1", label=evil, sub=evil, title=evil, href='/m?x="1"&y', kind="parent"),
             svg.LineageNode(key=evil, label="v1", href=None)]
    lineage = svg.lineage_svg(nodes, [("a@v1", evil)])
    plot = svg.metric_plot_svg(evil, [(1, 0.5), (2, float("nan")), (3, 0.25)])
    graph = {"nodes": [{"name": evil, "type": evil, "category": "linear", "kind": None,
                        "attrs": {"in_features": 2, "out_features": evil}, "params": 6},
                       {"name": "out", "type": "output", "category": "output", "kind": None, "attrs": {}, "params": 0}],
             "edges": [[evil, "out"]]}
    network = svg.network_svg(graph)
    for drawing in (lineage, plot, network):
        assert "<script" not in drawing
        root = ET.fromstring(drawing)  # parses: nothing a user wrote broke the markup
        texts = "".join(root.itertext())
        assert "alert" in texts  # ...and it is still shown, as text
    assert ET.fromstring(lineage).find(".//{http://www.w3.org/2000/svg}a").get("href") == '/m?x="1"&y'
    assert "1 not finite" in plot and plot.count('class="point"') == 2
    assert network.count('class="node"') == 2 and 'data-from="&lt;script&gt;' in network
    assert svg.metric_plot_svg("m", [(1, float("inf"))]).count("no finite values") == 1
    assert svg.lineage_svg([], []) == "" and svg.network_svg({"nodes": [], "edges": []}) == ""


# ------------------------------------------------------------------ pages, as HTML
def test_home_lists_models_with_latest_best_metrics_and_size(hub_url: str) -> None:
    r = _get(hub_url + "/")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    rows = dict(re.findall(r'<tr data-model="([^"]+)">(.*?)</tr>', r.text, re.S))
    assert list(rows) == ["mlp", "mlp-ft", "odd"]
    assert "mlp@v3" in rows["mlp"] and "(best" in rows["mlp"] and 'href="/models/mlp/v/2">mlp@v2' in rows["mlp"]
    assert re.search(r'<span class="k">acc</span> 0\.7<', rows["mlp"])  # the best version's, not v3's 0.65
    assert "mlp-ft@v2" in rows["mlp-ft"] and "(latest" in rows["mlp-ft"] and "0.8" in rows["mlp-ft"]
    assert re.search(r'title="[\d,]+ bytes">[\d.]+ (B|KiB)</span>', rows["mlp"])
    assert escape(EVIL_METRIC) in rows["odd"] and EVIL_METRIC not in r.text


def test_model_page_versions_lineage_plots_and_pull(hub_url: str) -> None:
    r = _get(hub_url + "/models/mlp")
    assert r.status_code == 200
    assert re.findall(r'<tr data-number="(\d+)">', r.text) == ["1", "2", "3"]
    assert _cells(r.text, "message") == ["first", SCRIPT, "third: a plain state_dict"]
    assert SCRIPT not in r.text and html.escape(SCRIPT, quote=False) in r.text
    assert '<span class="tag alias-best">best</span>' in r.text
    lineage = _svg(r.text, 'class="lineage"')
    assert re.findall(r'<g class="node (\w+)" data-ref="([^"]+)"', lineage) == [
        ("self", "mlp@v1"), ("self", "mlp@v2"), ("self", "mlp@v3"), ("child", "mlp-ft@v1")]
    assert re.findall(r'data-from="([^"]+)" data-to="([^"]+)"', lineage) == [
        ("mlp@v1", "mlp@v2"), ("mlp@v2", "mlp@v3"), ("mlp@v2", "mlp-ft@v1")]
    acc, loss = _svg(r.text, 'data-metric="acc"'), _svg(r.text, 'data-metric="loss"')
    assert re.findall(r'<title>(v\d: [\d.]+)</title>', acc) == ["v1: 0.5", "v2: 0.7", "v3: 0.65"]
    assert loss.count('class="point"') == 3
    assert f'value="modelhub pull {hub_url} mlp"' in r.text

    ft = _get(hub_url + "/models/mlp-ft").text  # a fine-tune: its parent is another model's version
    lineage = _svg(ft, 'class="lineage"')
    assert re.findall(r'<g class="node (\w+)" data-ref="([^"]+)"', lineage) == [
        ("parent", "mlp@v2"), ("self", "mlp-ft@v1"), ("self", "mlp-ft@v2")]
    assert ("mlp@v2", "mlp-ft@v1") in re.findall(r'data-from="([^"]+)" data-to="([^"]+)"', lineage)


def test_version_page_network_tensors_diff_and_fields(hub_url: str) -> None:
    page = _get(hub_url + "/models/mlp/v/2").text
    assert _cells(page, "tensor-name") == ["0.weight", "0.bias", "2.weight", "2.bias"]
    network = _svg(page, 'class="network"')
    assert re.findall(r'<g class="node" data-name="([^"]+)"', network) == ["input_1", "0", "1", "2", "output"]
    assert "8-&gt;16" in network and "144 params" in network
    diff = " ".join(page[page.index('<div id="diff">'):].split())
    assert "<strong>1</strong> tensor changed, 3 unchanged" in diff
    assert _cells(diff, "mono")[:1] == ["0.weight"]
    assert "Layers whose weights changed: <code>0</code>" in diff
    fields = dict(re.findall(r"<dt>([^<]+)</dt><dd[^>]*>(.*?)</dd>", page, re.S))
    assert fields["m.name"] == "mlp" and fields["m.version"] == "2" and fields["m.metrics.acc"] == "0.7"
    assert fields["m.hparams.lr"] == "0.01" and fields["m.message"] == html.escape(SCRIPT, quote=False)
    assert re.fullmatch(r"[0-9a-f]{32}", fields["m.id"]) and "best" in fields["m.tags"]
    assert 'href="/models/mlp/v/2/download.pt"' in page and 'href="/models/mlp/v/2/download.safetensors"' in page
    assert SCRIPT not in page

    first = _get(hub_url + "/models/mlp/v/1").text
    assert "No parent" in first
    third = " ".join(_get(hub_url + "/models/mlp/v/3").text.split())
    assert "No network graph was recorded" in third and 'class="network"' not in third
    assert "<strong>1</strong> tensor changed" in third and "Layers whose weights changed: <code>2</code>" in third
    assert "Same network structure" in diff and "Network:" not in third

    odd = _get(hub_url + "/models/odd/v/1").text  # every name a user chose is shown as text
    for raw in (EVIL_TENSOR, EVIL_METRIC, EVIL_HPARAM, EVIL_INFO, "<u>x</u>", "<b>bold</b>"):
        assert raw not in odd
    assert _cells(odd, "tensor-name") == [EVIL_TENSOR, "w"]
    assert f"m.metrics.{escape(EVIL_METRIC)}" in odd and f"m.info.{escape(EVIL_INFO)}" in odd


def test_unknown_or_invalid_pages_say_what_to_do(hub_url: str) -> None:
    for path, words in [("/models/nope", "no model named &#39;nope&#39;"),
                        ("/models/mlp/v/9", "mlp has no version 9"),
                        ("/models/mlp/v/x", "not a version number"),
                        ("/models/nope/v/1", "no model named"),
                        ("/models/-bad", "invalid model name"),
                        ("/models/mlp/v/9/download.pt", "mlp has no version 9")]:
        r = _get(hub_url + path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html") and words in r.text, path
        assert 'href="/">See every model' in r.text


def test_search_text_dql_pages_and_errors(hub_url: str) -> None:
    def refs(page: str) -> list[str]:
        table = page[page.index('<table id="results">'):] if 'id="results"' in page else ""
        return re.findall(r'href="/models/[^"]+/v/\d+">([^<]+)</a>', table)

    text = _get(hub_url + "/", params={"q": "alert"}).text
    assert refs(text) == ["mlp@v2"] and html.escape(SCRIPT, quote=False) in text and SCRIPT not in text
    assert '<span class="tag alias-best">best</span>' in text

    dql = _get(hub_url + "/", params={"q": "select m where m.metrics.acc > 0.6"}).text
    assert sorted(refs(dql)) == ["mlp-ft@v2", "mlp@v2", "mlp@v3"] and "DQL query" in dql

    paged = _get(hub_url + "/", params={"q": "mlp", "per_page": "2", "page": "2"}).text
    assert "5 versions found, showing 3–4" in paged and len(refs(paged)) == 2 and "page 2 of 3" in paged
    assert 'rel="next" href="/?q=mlp&amp;page=3&amp;per_page=2"' in paged

    bad = _get(hub_url + "/", params={"q": "select m where m.metrics.acc >> 1"})
    assert bad.status_code == 400
    pre = html.unescape(re.search(r'<pre class="error" id="search-error">(.*?)</pre>', bad.text, re.S).group(1))
    query_line, caret_line = pre.splitlines()[-2:]
    assert query_line.strip() == "select m where m.metrics.acc >> 1"
    assert caret_line.strip() == "^" and caret_line.index("^") == query_line.index(">>") + 1


def test_downloads_stream_bit_exact_files_and_leave_nothing(hub_url: str, hub_repo: dict[str, Any]) -> None:
    from safetensors.torch import load as load_safetensors

    before = set(Path(tempfile.gettempdir()).glob("modelhub-web-*"))
    pt = _get(hub_url + "/models/mlp/v/2/download.pt")
    assert pt.status_code == 200 and 'filename="mlp-v2.pt"' in pt.headers["content-disposition"]
    assert_bit_equal(torch.load(io.BytesIO(pt.content), weights_only=True), hub_repo["weights"]["mlp@v2"])
    st = _get(hub_url + "/models/mlp-ft/v/2/download.safetensors")
    assert st.status_code == 200 and 'filename="mlp-ft-v2.safetensors"' in st.headers["content-disposition"]
    want = hub_repo["weights"]["mlp-ft@v2"]  # safetensors keeps its tensors sorted by name
    assert_bit_equal(dict(sorted(load_safetensors(st.content).items())), dict(sorted(want.items())))
    deadline = time.monotonic() + 5
    while set(Path(tempfile.gettempdir()).glob("modelhub-web-*")) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(Path(tempfile.gettempdir()).glob("modelhub-web-*")) - before


# ------------------------------------------------------------------ in a browser
def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path


def test_browser_clicks_through_downloads_and_searches(browser: Any, hub_url: str, hub_repo: dict[str, Any],
                                                       tmp_path: Path) -> None:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(hub_url + "/")
        assert page.locator("#models tbody tr").count() == 3
        page.screenshot(path=str(tmp_path / "home.png"), full_page=True)

        page.locator('tr[data-model="mlp"] a.model-link').click()
        page.wait_for_url(hub_url + "/models/mlp")
        assert page.locator("#versions tbody tr").count() == 3
        assert page.locator("#versions tbody tr td.message").all_inner_texts() == [
            "first", SCRIPT, "third: a plain state_dict"]
        assert page.locator("#lineage svg g.node").count() == 4 and page.locator("#plots svg").count() == 2
        assert page.locator("#pull").input_value() == f"modelhub pull {hub_url} mlp"
        page.screenshot(path=str(tmp_path / "model.png"), full_page=True)

        page.locator('tr[data-number="2"] a.version-link').click()
        page.wait_for_url(hub_url + "/models/mlp/v/2")
        assert page.locator("#message").inner_text() == SCRIPT
        assert page.locator("td.tensor-name").all_inner_texts() == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert page.locator("#network svg g.node").count() == 5
        page.screenshot(path=str(tmp_path / "version.png"), full_page=True)
        with page.expect_download() as info:
            page.locator("#download-pt").click()
        download = info.value
        assert download.suggested_filename == "mlp-v2.pt"
        assert_bit_equal(torch.load(download.path(), weights_only=True), hub_repo["weights"]["mlp@v2"])

        page.goto(hub_url + "/models/odd/v/1")  # markup in every name: shown, never run
        assert page.locator("td.tensor-name").first.inner_text() == EVIL_TENSOR
        assert page.locator("img").count() == 0

        page.fill('input[name="q"]', "alert")
        page.press('input[name="q"]', "Enter")
        page.wait_for_url(re.compile(r".*\?q=alert$"))
        assert page.locator("#results tbody tr").count() == 1
        page.fill('input[name="q"]', "select m where m.metrics.acc > 0.6")
        page.press('input[name="q"]', "Enter")
        page.wait_for_url(re.compile(r".*\?q=select.*"))
        assert page.locator("#results tbody tr").count() == 3
        assert page.locator("#search-total").inner_text().startswith("3 versions found")
        page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
        page.fill('input[name="q"]', "select m wher")
        page.press('input[name="q"]', "Enter")
        page.wait_for_url(re.compile(r".*wher$"))
        error = page.locator("pre#search-error").inner_text()
        assert "select m wher" in error and error.rstrip().endswith("^")
        page.screenshot(path=str(tmp_path / "search-error.png"), full_page=True)
    finally:
        context.close()
    assert dialogs == []  # no script ran anywhere
    for name in ("home", "model", "version", "search", "search-error"):
        _assert_png(tmp_path / f"{name}.png")


# ------------------------------------------------------------------ a private hub
def test_private_hub_needs_a_token_cookie(hub_repo: dict[str, Any], browser: Any) -> None:
    token = TokenStore(Location(hub_repo["path"])).create("read", name="alice")
    with running_hub(hub_repo["path"], public=False) as url:
        r = _get(url + "/models/mlp?x=1")
        assert r.status_code == 303
        target = urllib.parse.urlsplit(r.headers["location"])
        assert target.path == "/login"
        assert urllib.parse.parse_qs(target.query) == {"next": ["/models/mlp?x=1"], "reason": ["needed"]}
        assert _get(url + "/models/mlp/v/2/download.pt").status_code == 303
        assert "needs a token" in _get(url + r.headers["location"]).text

        bad = httpx.post(url + "/login", data={"token": "mh_0123456789abcdef_" + "x" * 43, "next": "/"})
        assert bad.status_code == 401 and "not accepted" in bad.text and "set-cookie" not in bad.headers
        good = httpx.post(url + "/login", data={"token": token, "next": "/models/mlp"})
        assert good.status_code == 303 and good.headers["location"] == "/models/mlp"
        cookie = good.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={token}") and "HttpOnly" in cookie and "Path=/" in cookie
        assert "samesite=strict" in cookie.lower()
        evil = httpx.post(url + "/login", data={"token": token, "next": "//evil.example/x"})
        assert evil.headers["location"] == "/"  # never sent off this site

        page = _get(url + "/models/mlp", cookies={COOKIE: token})
        assert page.status_code == 200 and "alice" in page.text
        stale = _get(url + "/", cookies={COOKIE: "mh_0123456789abcdef_" + "y" * 43})
        assert stale.status_code == 303 and "reason=expired" in stale.headers["location"]
        assert f'{COOKIE}=""' in stale.headers["set-cookie"] or "Max-Age=0" in stale.headers["set-cookie"]

        context = browser.new_context()
        try:
            tab = context.new_page()
            tab.goto(url + "/models/mlp")
            assert urllib.parse.urlsplit(tab.url).path == "/login"
            assert "needs a token" in tab.locator("#login-message").inner_text()
            tab.fill("#token", "not-a-token")
            tab.locator("button[type=submit]").click()
            assert "not accepted" in tab.locator("#login-error").inner_text()
            tab.fill("#token", token)
            tab.locator("button[type=submit]").click()
            tab.wait_for_url(url + "/models/mlp")
            assert tab.locator("#versions tbody tr").count() == 3
            saved = {c["name"]: c for c in context.cookies()}[COOKIE]
            assert saved["httpOnly"] and saved["sameSite"] == "Strict" and saved["path"] == "/"
            tab.locator("text=log out").click()
            tab.wait_for_url(re.compile(r".*/login\?reason=out$"))
            assert COOKIE not in {c["name"] for c in context.cookies()}
            tab.goto(url + "/")
            assert urllib.parse.urlsplit(tab.url).path == "/login"
        finally:
            context.close()


def test_an_unknown_address_is_a_page_for_browsers_and_json_for_programs(tmp_path: Path) -> None:
    Repository.init(tmp_path / "hub")
    with running_hub(tmp_path / "hub", public=True) as url:
        page = httpx.get(f"{url}/models/a/b/c/d", headers={"Accept": "text/html"})
        assert page.status_code == 404 and "No such page" in page.text and "<html" in page.text
        api = httpx.get(f"{url}/api/v1/nothing", headers={"Accept": "text/html"})
        assert api.status_code == 404 and api.json()["status"] == 404
