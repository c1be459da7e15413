"""The hub over real HTTP (uvicorn on 127.0.0.1): push, pull, clone, read-only
repositories, search, tokens, and every refusal leaving nothing stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import assert_bit_equal
from hub_server import free_port, running_app, running_hub
from test_progressive import MLP, digits
from test_sync import make_source, same_versions, trajectory

import modelhub_torch
from modelhub_torch import Repository
from modelhub_torch.cli import main
from modelhub_torch.errors import DivergedError, HubAuthError, HubRequestError, ReadOnlyError
from modelhub_torch.hub import bundle
from modelhub_torch.hub.client import HubClient
from modelhub_torch.hub.limits import Limits
from modelhub_torch.hub.tokens import TokenStore
from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import hash_bytes


@pytest.fixture(scope="module")
def ckpts() -> list[dict]:
    return trajectory(4)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test has its own object cache and config file, and no token in the environment."""
    monkeypatch.setenv("MODELHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("MODELHUB_TOKEN", raising=False)


def token(server: Path, scope: str, models: list[str] | None = None) -> str:
    Repository.init(server, exist_ok=True)
    return TokenStore(Location(server)).create(scope, models)


def objects_in(path: Path) -> set[str]:
    """Object ids under ``path`` (a repository's objects/, or the hub object cache)."""
    base = path / "objects" if (path / "objects").is_dir() else path
    return {p.parent.name + p.name for p in base.glob("*/*") if not p.name.startswith(".")}


def test_push_pull_clone_and_read_only_repository(tmp_path: Path, ckpts: list[dict],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src", ckpts, count=3)
    monkeypatch.setenv("MODELHUB_TOKEN", token(tmp_path / "hub", "write"))
    with running_hub(tmp_path / "hub", web=False) as url:
        report = src.push(url)
        assert report.versions == ["mlp@v1", "mlp@v2", "mlp@v3"] and report.tags == ["mlp@best"]
        same_versions(src, Repository(tmp_path / "hub"), report.versions)
        assert Repository(tmp_path / "hub").verify() == []
        # a hub URL is a read-only repository: load, versions, tags, query (run by the hub)
        remote = Repository(url)
        assert [v.ref for v in remote.versions()] == report.versions
        assert remote.tags("mlp") == {"best": "mlp@v2"}
        assert_bit_equal(remote.load("mlp@best"), ckpts[1])
        assert_bit_equal(modelhub_torch.load(url, "mlp@v3"), ckpts[2])
        found = remote.query("select m where m.name = \"mlp\" and m.metrics.val_acc > 0.52")
        assert found.refs == ["mlp@v2", "mlp@v3"] and found[0].metrics["val_acc"] == 0.55
        with pytest.raises(ReadOnlyError, match="push versions to it"):
            remote.commit(ckpts[0], "mlp")
        # clone, then an incremental push and pull move only the new version
        clone = Repository.clone(url, tmp_path / "clone")
        same_versions(src, clone, report.versions)
        src.commit(ckpts[3], "mlp", message="epoch 3")
        assert src.push(url).versions == ["mlp@v4"]
        assert clone.pull(url).versions == ["mlp@v4"]
        assert_bit_equal(clone.load("mlp@v4"), ckpts[3])
        assert clone.pull(url).versions == [] and src.push(url).versions == []
        # a history that diverged is refused before anything is written
        other = make_source(tmp_path / "other", trajectory(1, seed=5), count=1)
        with pytest.raises(DivergedError, match="diverged"):
            other.push(url)


def progressive_matches_full(repo: Repository, ckpt: dict, start_planes: int):
    """Progressive top-1 of mlp@v4 in ``repo`` on 200 digits, asserted equal to the full
    network's; the result (which planes each input needed)."""
    from modelhub_torch.progressive import ProgressiveModel

    x, _ = digits()
    net = MLP()
    net.load_state_dict(ckpt["state_dict"])
    res = ProgressiveModel(MLP(), repo, "mlp@v4", start_planes=start_planes).predict(x[:200], k=1)
    assert torch.equal(res.topk, net(x[:200]).topk(1, dim=1).indices)
    return res


def test_partial_pull_from_a_hub_reads_only_the_top_planes(tmp_path: Path, ckpts: list[dict]) -> None:
    make_source(tmp_path / "hub", ckpts)
    with running_hub(tmp_path / "hub", public=True, web=False) as url:
        full = Repository.clone(url, tmp_path / "full")
        part = Repository.clone(url, tmp_path / "part", planes=2)
        assert part.last_sync.partial == [f"mlp@v{n}" for n in range(1, 5)]
        assert part.last_sync.bytes < 0.7 * full.last_sync.bytes
        assert part.verify() == []
        assert part.manifest(part.resolve("mlp@v4")).extra["partial"]["source"] == url
        res = progressive_matches_full(part, ckpts[3], start_planes=2)
        assert int(res.planes.min()) == 2
        # a full load fetches the rest from the hub, by version id: only the planes the
        # copy lacks (the packs its cold_packs name), the top planes it holds kept
        # (a version leaning on one held partially here comes whole instead: mlp@v2
        # after mlp@v1, not before)
        assert part.manifest(part.resolve("mlp@v2")).extra["partial"]["base"] == part.resolve("mlp@v1")
        for n in (1, 2):
            before = part.manifest(part.resolve(f"mlp@v{n}"))
            assert_bit_equal(part.load(f"mlp@v{n}"), ckpts[n - 1])
            after = part.manifest(part.resolve(f"mlp@v{n}"))
            assert not after.partial and (after.packs, after.cold_packs) == (before.packs, before.cold_packs)
            assert {o for o in before.cold_packs if o} <= objects_in(tmp_path / "part")
        assert part.verify() == []
        for n, ckpt in enumerate(ckpts, 1):  # and every other version too
            assert_bit_equal(part.load(f"mlp@v{n}"), ckpt)
        assert part.verify() == [] and not any(part.manifest(v.id).partial for v in part.versions())


def test_progressive_over_the_network_fetches_only_the_planes_it_needs(tmp_path: Path, ckpts: list[dict]) -> None:
    make_source(tmp_path / "hub", ckpts)
    hub = Repository(tmp_path / "hub")
    newest = hub.manifest(hub.resolve("mlp@v4"))
    with running_hub(tmp_path / "hub", public=True, web=False) as url:
        remote = Repository(url)
        res = progressive_matches_full(remote, ckpts[3], start_planes=1)
        cached = objects_in(tmp_path / "cache" / "hub-objects")
        used_planes = int(res.planes.max())
        assert set(newest.packs[:used_planes]) <= cached
        assert not set(newest.packs[used_planes:]) & cached  # the low planes never crossed
    with pytest.raises(HubRequestError, match="cannot reach the hub"):
        Repository(url)


def test_refusals_store_nothing(tmp_path: Path, ckpts: list[dict]) -> None:
    server = tmp_path / "hub"
    src = make_source(tmp_path / "src", ckpts, count=2)
    write, read = token(server, "write"), token(server, "read")
    team = token(server, "write", ["team-*"])
    limits = Limits(max_body=64 << 10, rate=1000, burst=1000)
    with running_hub(server, web=False, limits=limits) as url:
        before = objects_in(server)
        # no token, a bad token, a read token pushing, a token for other models
        with pytest.raises(HubAuthError, match="needs a token") as e:
            Repository(url)
        assert e.value.status == 401
        with pytest.raises(HubAuthError, match="not accepted") as e:
            HubClient(url, "mh_0123456789abcdef_" + "x" * 43).info()
        assert e.value.status == 401
        with pytest.raises(HubAuthError, match="needs 'write'") as e:
            src.push(url, storage_options={"token": read})
        assert e.value.status == 403
        with pytest.raises(HubAuthError, match="only models matching team-") as e:
            src.push(url, storage_options={"token": team})
        assert e.value.status == 403
        # a forged object: its bytes do not hash to its name
        client = HubClient(url, write)
        body = b"".join(bundle.encode([(hash_bytes(b"good"), b"good"), ("ab" * 32, b"forged")]))
        resp = client.request("POST", "/objects", content=body, params={"model": "mlp"})
        assert resp.status_code == 422 and "does not match its name" in resp.json()["error"]
        # a path out of the repository, and names that are not names
        for path in ("/files/..%2F..%2Fetc%2Fpasswd", "/files/refs/..%2F..%2Fx", "/files/hub/tokens",
                     "/files/tmp/x", "/list/..%2Fx"):
            resp = client.request("GET", path)
            assert resp.status_code in (400, 404), path
            assert "invalid path" in resp.json()["error"] or resp.status_code == 404
        resp = client.request("PUT", "/tags/..%2Fx/best", json={"version": "0" * 32})
        assert resp.status_code in (400, 404)
        # an upload over the body limit
        big = os.urandom(100 << 10)
        resp = client.request("POST", "/objects", content=b"".join(bundle.encode([(hash_bytes(big), big)])),
                              params={"model": "mlp"})
        assert resp.status_code == 413 and "limit" in resp.json()["error"]
        # a chunked JSON body (no Content-Length for the middleware) is bounded too
        import modelhub_torch.hub.server as server_module

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(server_module, "JSON_BODY", 4096)
            chunks = (b'{"ids": [' + b'"' + b"a" * 64 + b'",' for _ in range(100))
            resp = client.request("POST", "/objects/missing", content=chunks, params={"model": "mlp"})
            assert resp.status_code == 413 and "limit" in resp.json()["error"]
        assert objects_in(server) == before  # nothing of any of it was stored
        assert Repository(server).versions() == []


def test_a_forged_manifest_never_becomes_visible(tmp_path: Path, ckpts: list[dict]) -> None:
    from modelhub_torch.manifest import Manifest

    server = tmp_path / "hub"
    src = make_source(tmp_path / "src", ckpts, count=2)
    write = token(server, "write")
    with running_hub(server, web=False) as url:
        src.push(url, ["mlp@v1"], storage_options={"token": write})
        client = HubClient(url, write)
        m = src.manifest(src.resolve("mlp@v2"))
        # objects uploaded, then a manifest whose digest does not match its bits
        objs = [(oid, src.objects.get(oid)) for oid in sorted(m.objects())]
        assert client.upload("mlp", [(o, len(d)) for o, d in objs], dict(objs).__getitem__) > 0
        tensors = [dict(t) for t in m.tensors]
        tensors[0] = {**tensors[0], "digest": "0" * len(tensors[0]["digest"])}
        forged = Manifest(**{**m.__dict__, "tensors": tensors})
        resp = client.request("POST", "/versions", content=forged.to_bytes())
        assert resp.status_code == 422 and "nothing of it is visible" in resp.json()["error"]
        assert [v.ref for v in Repository(server).versions()] == ["mlp@v1"]
        # another version's id with other content: refused, the stored one untouched
        v1 = src.manifest(src.resolve("mlp@v1"))
        impostor = Manifest(**{**m.__dict__, "id": v1.id, "number": 1})
        resp = client.request("POST", "/versions", content=impostor.to_bytes())
        assert resp.status_code == 409
        # a partial manifest (whose completion would make the hub fetch from a URL)
        partial = Manifest(**{**m.__dict__, "extra": {**m.extra, "partial": {"planes": 1, "source": "http://x"}}})
        resp = client.request("POST", "/versions", content=partial.to_bytes())
        assert resp.status_code == 400 and "some of its byte planes" in resp.json()["error"]
        hub = Repository(server)
        assert [v.ref for v in hub.versions()] == ["mlp@v1"]
        assert_bit_equal(hub.load("mlp@v1"), ckpts[0])
        assert hub.verify() == []
        # the real push then goes through
        r = src.push(url, storage_options={"token": write})
        assert r.versions == ["mlp@v2"]
        assert_bit_equal(Repository(server).load("mlp@v2"), ckpts[1])


def test_a_push_cut_short_resends_only_what_did_not_arrive(tmp_path: Path, ckpts: list[dict],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src", ckpts, count=3)
    monkeypatch.setenv("MODELHUB_TOKEN", token(tmp_path / "hub", "write"))
    with running_hub(tmp_path / "hub", web=False) as url:
        src.push(url, ["mlp@v1", "mlp@v2"])
        sent_before = objects_in(tmp_path / "hub")

        def cut(self, manifest: bytes) -> None:  # the connection dies after the objects went
            raise HubRequestError("connection reset", 0)

        with monkeypatch.context() as patch:
            patch.setattr(HubClient, "send_version", cut)
            with pytest.raises(HubRequestError, match="connection reset"):
                src.push(url)
        uploaded = objects_in(tmp_path / "hub") - sent_before
        assert uploaded and [v.ref for v in Repository(tmp_path / "hub").versions()] == ["mlp@v1", "mlp@v2"]
        r = src.push(url)
        assert r.versions == ["mlp@v3"] and r.skipped == ["mlp@v1", "mlp@v2"]
        manifest = Repository(tmp_path / "hub").refs.manifest_of(src.resolve("mlp@v3"))
        assert r.bytes == (tmp_path / "hub" / "objects" / manifest[:2] / manifest[2:]).stat().st_size
        assert_bit_equal(Repository(url).load("mlp@v3"), ckpts[2])


def test_requests_over_the_rate_get_429_and_the_client_waits(tmp_path: Path, ckpts: list[dict]) -> None:
    make_source(tmp_path / "hub", ckpts, count=1)
    with running_hub(tmp_path / "hub", public=True, web=False, limits=Limits(rate=5, burst=5)) as url:
        raw = httpx.Client(base_url=url)
        codes = [raw.get("/api/v1/info").status_code for _ in range(12)]
        assert codes[:5] == [200] * 5 and 429 in codes
        resp = raw.get("/api/v1/info")
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        started = time.monotonic()
        assert HubClient(url).info()["hub"] == "modelhub_torch"  # retried after Retry-After
        assert time.monotonic() - started < 15


def test_search_text_and_dql(tmp_path: Path, ckpts: list[dict]) -> None:
    hub = make_source(tmp_path / "hub", ckpts, count=3)
    hub.copy("mlp@v3", "team-ft", message="fine-tune <b>bold</b>")
    with running_hub(tmp_path / "hub", public=True, web=False) as url:
        client = HubClient(url)
        assert [r["ref"] for r in client.search("epoch 1")["results"]] == ["mlp@v2", "mlp@v1"]  # 1 in v1
        doc = client.search('"epoch 1"')
        assert [r["ref"] for r in doc["results"]] == ["mlp@v2"]
        assert client.search("bold")["results"][0]["ref"] == "team-ft@v1"
        assert client.search("best")["results"][0]["tags"] == ["best"]
        assert client.search("val_acc")["total"] == 3
        page = client.search("", page=2, per_page=3)
        assert page["total"] == 4 and len(page["results"]) == 1
        doc = client.search('select m where m.metrics.val_acc >= 0.55')
        assert doc["kind"] == "dql" and sorted(r["ref"] for r in doc["results"]) == ["mlp@v2", "mlp@v3"]
        with pytest.raises(HubRequestError, match=r"\^"):
            client.search("select m where m[")
        with pytest.raises(HubRequestError, match="only DQL 'select'"):
            client.query("delete m")
        for statement in ('construct m2 from m1 mutate m1["fc1"].delete',  # they would commit on the hub
                          'slice m2 from m1 mutate m2.input = m1["fc1"] and m2.output = m1["fc2"]',
                          'evaluate m from "q" with config = "/etc/passwd"'):
            with pytest.raises(HubRequestError, match="only DQL 'select'"):
                client.query(statement)
        assert not [m for m in Repository(tmp_path / "hub").models() if m.endswith(("-construct", "-slice"))]


def test_cli_serve_login_publish_search_clone(tmp_path: Path, ckpts: list[dict],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two processes: ``modelhub serve`` in one folder, the CLI in another."""
    server, work = tmp_path / "server", tmp_path / "work"
    work.mkdir()
    assert main(["init", str(server)]) == 0
    capsys.readouterr()
    assert main(["token", "create", "--scope", "write", "--repo", str(server), "--json"]) == 0
    tok = json.loads(capsys.readouterr().out)["token"]
    proc, url = _serve(str(server), "--workers", "2")  # two worker processes behind one port
    try:
        _wait_until_up(proc, url)
        repo = str(work / "repo")
        assert main(["init", repo]) == 0
        for i in range(2):
            torch.save(ckpts[i], work / f"e{i}.pt")
            assert main(["commit", str(work / f"e{i}.pt"), "--model", "digits", "-m", f"epoch {i}",
                         "--metric", f"val_acc={0.5 + i / 10}", "--repo", repo]) == 0
        capsys.readouterr()
        assert main(["publish", url, "--repo", repo]) == 2  # no token yet
        assert "needs a token" in capsys.readouterr().err
        assert main(["login", url, "--token", tok]) == 0
        assert "logged in" in capsys.readouterr().out
        saved = tmp_path / "config" / "modelhub" / "tokens.json"
        assert oct(saved.stat().st_mode & 0o777) == "0o600"
        assert main(["publish", url, "--repo", repo, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["versions"] == ["digits@v1", "digits@v2"]
        assert main(["search", '"epoch 1"', "--hub", url, "--json"]) == 0
        assert [r["ref"] for r in json.loads(capsys.readouterr().out)["results"]] == ["digits@v2"]
        assert main(["search", 'select m where m.metrics.val_acc > 0.55', "--hub", url]) == 0
        assert "digits@v2" in capsys.readouterr().out
        assert main(["clone", url, str(work / "copy"), "--json"]) == 0
        capsys.readouterr()
        assert main(["export", "digits@v2", str(work / "out.pt"), "--repo", str(work / "copy")]) == 0
        assert_bit_equal(torch.load(work / "out.pt", weights_only=True), ckpts[1])
        torch.save(ckpts[2], work / "e2.pt")  # a new version published, then pulled by the copy
        assert main(["commit", str(work / "e2.pt"), "--model", "digits", "-m", "epoch 2", "--repo", repo]) == 0
        assert main(["publish", url, "digits", "--repo", repo]) == 0
        capsys.readouterr()
        assert main(["pull", url, "--repo", str(work / "copy"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["versions"] == ["digits@v3"]
        assert main(["export", "digits@v3", str(work / "v3.pt"), "--repo", str(work / "copy")]) == 0
        assert_bit_equal(torch.load(work / "v3.pt", weights_only=True), ckpts[2])
        assert main(["logout", url]) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _serve(location: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """``modelhub serve`` in its own process; returns it and its URL once it answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "modelhub_torch.cli", "serve", location, "--port", str(port),
                             *extra], env=env, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_until_up(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/api/v1/info").status_code in (200, 401):
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)


def test_two_hub_processes_over_one_s3_repository_lose_no_push(s3_repo_url, tmp_path: Path,
                                                               ckpts: list[dict],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    url, options = s3_repo_url
    Repository.init(url, storage_options=options)
    monkeypatch.setenv("MODELHUB_TOKEN", TokenStore(Location(url, options)).create("write"))
    endpoint = f"endpoint_url={options['endpoint_url']}"
    hubs = [_serve(url, "--storage-option", endpoint) for _ in range(2)]
    sources = {}
    for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3)):
        repo = Repository.init(tmp_path / name)
        for i, c in enumerate(trajectory(3, seed=seed, steps=5)):
            repo.commit(c, name, message=f"{name} {i}")
        sources[name] = repo
    try:
        for proc, hub in hubs:
            _wait_until_up(proc, hub)
        (_, one), (_, two) = hubs
        jobs = [(sources["alpha"], one), (sources["beta"], two), (sources["gamma"], one), (sources["gamma"], two)]
        errors: list[BaseException] = []

        def push(src: Repository, hub: str) -> None:
            try:
                src.push(hub)
            except DivergedError as exc:  # the loser of a race on one version's number says so
                assert "during the transfer" in str(exc) or "another version" in str(exc), exc
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=push, args=job) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        for src, hub in jobs[:3]:  # whatever raced, every version is there once pushing again is a no-op
            src.push(hub)
            assert src.push(two).versions == []
        shared = Repository(url, storage_options=options)
        for name, src in sources.items():
            assert [v.ref for v in shared.versions(name)] == [f"{name}@v{n}" for n in (1, 2, 3)]
            for v in src.versions():
                assert shared.resolve(v.ref) == v.id
                assert_bit_equal(shared.load(v.ref), src.load(v.ref))
        assert shared.verify() == []
        # both hubs see every push, whichever hub took it
        for _, hub in hubs:
            assert HubClient(hub).search("")["total"] == 9
    finally:
        for proc, _ in hubs:
            proc.terminate()
            proc.wait(timeout=30)


def test_a_hub_mounted_under_a_path_in_another_app(tmp_path: Path, ckpts: list[dict]) -> None:
    """``create_app`` in an app of one's own: the API, its docs, the pages and the client
    all work under the mount's path."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from modelhub_torch.hub.server import create_app

    make_source(tmp_path / "hub", ckpts, count=2)
    outer = Starlette(routes=[Mount("/models-hub", app=create_app(str(tmp_path / "hub"), public=True))])
    with running_app(outer) as root:
        url = f"{root}/models-hub"
        spec = httpx.get(f"{url}/openapi.json").json()
        assert {"/api/v1/files/{path}", "/api/v1/versions", "/api/v1/objects", "/api/v1/search"} <= set(spec["paths"])
        assert httpx.get(f"{url}/docs").status_code == 200
        page = httpx.get(f"{url}/models/mlp", headers={"Accept": "text/html"})
        assert page.status_code == 200 and 'href="/models-hub/models/mlp/v/2"' in page.text
        clone = Repository.clone(url, tmp_path / "clone")
        assert clone.last_sync.versions == ["mlp@v1", "mlp@v2"]
        assert_bit_equal(clone.load("mlp@best"), ckpts[1])


def test_the_object_cache_is_bounded_and_drops_damaged_copies(tmp_path: Path) -> None:
    from modelhub_torch.hub.fs import ObjectCache

    cache = ObjectCache(tmp_path / "c", limit=10_000)
    blobs = [os.urandom(3_000) for _ in range(6)]
    for i, blob in enumerate(blobs):
        cache.put(hash_bytes(blob), blob)
        os.utime(cache.path(hash_bytes(blob)), (i, i))  # read in this order
    held = sum(p.stat().st_size for p in (tmp_path / "c").rglob("*") if p.is_file())
    assert held <= 10_000
    assert cache.read(hash_bytes(blobs[-1])) == blobs[-1]  # the newest stay
    assert cache.read(hash_bytes(blobs[0])) is None  # the oldest went
    assert cache.read(hash_bytes(blobs[-1]), 10, 20) == blobs[-1][10:20]
    cache.path(hash_bytes(blobs[-1])).write_bytes(b"x" * 3_000)  # damaged on disk
    assert cache.read(hash_bytes(blobs[-1])) is None and not cache.path(hash_bytes(blobs[-1])).exists()
    big = os.urandom(20_000)
    cache.put(hash_bytes(big), big)  # over the whole limit: never kept
    assert cache.read(hash_bytes(big)) is None
