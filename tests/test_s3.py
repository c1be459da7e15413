"""Repositories on S3: moto's S3 server on 127.0.0.1 (conftest.py), reached through
s3fs over HTTP — no client is patched. The whole API, the callbacks, the CLI, and
writers in several processes at once (conditional writes, no lock)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import fsspec
import pytest
import torch
from conftest import assert_bit_equal

from modelhub_torch import ModelHubError, Repository
from modelhub_torch.errors import ConflictError
from modelhub_torch.maintenance import scan
from modelhub_torch.store.location import Location
from modelhub_torch.store.repo import RepoStore

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "scripts" / "s3_writer.py"


def _writer_module():
    spec = importlib.util.spec_from_file_location("s3_writer", WRITER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


weights = _writer_module().weights


def _bucket_files(url: str, options: dict) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url, **options)
    return [p[len(root) + 1 :] for p in fs.find(root)]


def _commit_three(repo: Repository, model: str = "m", worker: int = 0) -> list[dict]:
    sds = [weights(worker, i) for i in range(3)]
    for i, sd in enumerate(sds):
        repo.commit(sd, model, metrics={"acc": 0.5 + i / 10}, message=f"step {i}")
    repo.wait()
    return sds


# ----------------------------------------------------------------- the API
def test_the_whole_api_over_s3(s3_repo_url) -> None:
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options)
    sds = _commit_three(repo)
    tuned = {k: v + 1 if v.is_floating_point() else v for k, v in sds[-1].items()}
    repo.commit(tuned, "tuned", parent="m@v3")
    repo.wait()

    # a fresh Repository object (its own view of the bucket) sees it all
    again = Repository(url, storage_options=options)
    assert [v.ref for v in again.versions()] == ["m@v1", "m@v2", "m@v3", "tuned@v1"]
    assert [v.parent for v in again.versions("m")] == [None, "m@v1", "m@v2"]
    assert again.version("tuned@v1").parent == "m@v3"
    for i, sd in enumerate(sds):
        assert_bit_equal(again.load(f"m@v{i + 1}"), sd)
    assert_bit_equal(again.load("tuned@latest"), tuned)
    # the background repack re-encoded the older versions as reverse deltas
    assert again.version("m@v1").stored_bytes < again.version("m@v3").stored_bytes

    assert again.query("select m where m.metrics.acc >= 0.6").refs == ["m@v2", "m@v3"]
    again.tag("m@v2", "best")
    assert again.tags("m") == {"best": "m@v2"}
    assert_bit_equal(again.load("m@best"), sds[1])
    assert again.verify() == []
    stats = again.stats()
    assert stats["versions"] == 4 and stats["stored_bytes"] < stats["raw_bytes"]

    files = _bucket_files(url, options)
    assert "refs/models/m/3" in files and "refs/tags/m/best" in files
    assert not [f for f in files if f.startswith(("tmp/", "locks/"))]  # no temp names, leases released

    # gc: an unreferenced object stays while it is young (others may be mid-commit)
    junk = again.objects.put(b"nobody points at me")
    assert again.gc()["objects_removed"] == 0 and again.objects.exists(junk)
    done = again.gc(grace=0)
    assert done["objects_removed"] == 1 and not again.objects.exists(junk)
    for i, sd in enumerate(sds):
        assert_bit_equal(again.load(f"m@v{i + 1}"), sd)


def test_archive_with_a_cold_tier_on_s3(s3_repo_url) -> None:
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options)
    sds = _commit_three(repo)
    cold = url.rsplit("/", 1)[0] + "/cold"
    report = repo.archive(alpha=50.0, cold=cold, cold_price=0.01, hot_planes=1)
    assert repo.settings["cold"] == cold
    assert report.cold_after > 0  # low planes went to the cold tier ...
    assert _bucket_files(cold, options)  # ... under the same bucket, with the same options
    reopened = Repository(url, storage_options=options)
    assert reopened.objects.cold is not None
    for i, sd in enumerate(sds):
        assert_bit_equal(reopened.load(f"m@v{i + 1}"), sd)
    assert reopened.verify() == []


def test_modelhub_urls_and_fsspec_configuration(s3_repo_url, monkeypatch) -> None:
    url, options = s3_repo_url
    sds = _commit_three(Repository.init(url, storage_options=options))
    # a modelhub:// URL reopens the repository with the options this process opened it with
    with fsspec.open(f"modelhub://{url}#m@latest", "rb") as fh:
        assert_bit_equal(torch.load(fh, weights_only=True), sds[2])
    # with no options given, fsspec's configuration (what FSSPEC_S3_* variables fill at
    # import) applies, to Repository and modelhub:// URLs alike
    monkeypatch.setattr("modelhub_torch.repository._OPENED_WITH", {})
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(options))
    bare = Repository(url)
    assert [v.ref for v in bare.versions()] == ["m@v1", "m@v2", "m@v3"]
    with fsspec.open(f"modelhub://{url}#m@v2", "rb") as fh:
        assert_bit_equal(torch.load(fh, weights_only=True), sds[1])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modelhub_torch.cli", *args], capture_output=True, text=True, timeout=120,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_cli_on_s3_with_fsspec_environment_variables(s3_repo_url, tmp_path) -> None:
    url, options = s3_repo_url
    _commit_three(Repository.init(url, storage_options=options))
    env = {"FSSPEC_S3_ENDPOINT_URL": options["endpoint_url"], "FSSPEC_S3_KEY": options["key"],
           "FSSPEC_S3_SECRET": options["secret"], "MODELHUB_CACHE": str(tmp_path / "cli-cache")}
    done = _cli("--repo", url, "list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [v["ref"] for v in json.loads(done.stdout)["versions"]] == ["m@v1", "m@v2", "m@v3"]
    # modelhub:// URLs in a process configured only by the environment (a listing:
    # reading a version's bytes is tested above, without torch's import time here)
    code = f"import fsspec; print(fsspec.filesystem('modelhub').ls({url!r}, detail=False))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([f"{url}#m@v{n}" for n in (1, 2, 3)])
    # --storage-option instead of the environment (the CLI in this process: fsspec's
    # configuration here has no S3 entries)
    from modelhub_torch.cli import main

    assert "s3" not in fsspec.config.conf
    opts = [f"--storage-option=endpoint_url={options['endpoint_url']}", f"--storage-option=key={options['key']}",
            f"--storage-option=secret={options['secret']}"]
    assert main(["--repo", url, *opts, "tag", "m@v1", "stable"]) == 0
    assert Repository(url, storage_options=options).tags("m") == {"stable": "m@v1"}


def test_lightning_callback_writes_to_s3(s3_repo_url, tmp_path) -> None:
    from lightning_module import TinyMLP, digits_loaders, trainer

    from modelhub_torch.callbacks import ModelHubCheckpoint

    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options)
    cb = ModelHubCheckpoint(repo, "mlp", monitor="val_loss")
    torch.manual_seed(0)
    module = TinyMLP()
    train, val = digits_loaders()
    trainer(tmp_path, [cb], max_epochs=2).fit(module, train, val)
    vs = repo.versions("mlp")
    assert [v.number for v in vs] == [1, 2] and [v.info["epoch"] for v in vs] == [0, 1]
    assert_bit_equal(dict(repo.load("mlp@latest")["state_dict"]), dict(module.state_dict()))
    best = min(vs, key=lambda v: v.metrics["val_loss"])
    assert repo.version("mlp@best").ref == best.ref
    # Lightning opens the callback's modelhub://s3://... path itself
    loaded = TinyMLP.load_from_checkpoint(cb.best_model_path)
    assert_bit_equal(dict(loaded.state_dict()), dict(repo.load_state_dict(best.ref)))


def test_big_objects_stream_from_a_local_spool(s3_repo_url, monkeypatch) -> None:
    """Objects over the one-PUT size are spooled to a temp file and streamed (an
    If-None-Match upload on S3; one already there is left as it is)."""
    from modelhub_torch.store import location, objects

    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options)
    monkeypatch.setattr(objects, "SPOOL_BYTES", 256)  # rolls over to a file
    monkeypatch.setattr(location, "PUT_BYTES", 0)  # every object streamed
    sds = _commit_three(repo)
    oid = repo.objects.put(b"twice")
    assert repo.objects.put(b"twice") == oid and repo.objects.get(oid) == b"twice"
    for i, sd in enumerate(sds):
        assert_bit_equal(Repository(url, storage_options=options).load(f"m@v{i + 1}"), sd)


def test_requests_per_commit_and_load_do_not_grow_with_tensors(s3_repo_url, s3_server) -> None:
    """A commit and a load cost a few requests per plane pack, not per tensor."""
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options, repack="manual")
    sd = {f"l{i}.weight": torch.randn(32, 16) for i in range(12)}
    repo.commit(sd, "m")
    s3_server.requests.clear()
    v = repo.commit({k: t + 1 for k, t in sd.items()}, "m")
    commit_requests = list(s3_server.requests)
    packs = len([p for p in repo.manifest(v.id).packs if p])
    assert 4 <= packs <= 5
    # listing refs (2), the parent's refs (2), packs, manifest, version ref, numbered ref
    assert len(commit_requests) <= 4 + packs + 3, commit_requests
    fresh = Repository(url, storage_options=options)
    s3_server.requests.clear()
    assert_bit_equal(fresh.load("m@v1"), sd)
    load_requests = list(s3_server.requests)
    assert len(load_requests) <= 4 + packs, load_requests  # listing, 2 refs, manifest, one GET per pack


# --------------------------------------------------------- concurrent writers
def _start_writers(url: str, options: dict, jobs: list[list[str]], tmp_path: Path) -> list[list[dict]]:
    """Run writer process k with the ``MODEL:COUNT`` jobs ``jobs[k]``, started together."""
    go = tmp_path / "go"
    procs = []
    for worker, todo in enumerate(jobs):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELHUB_TEST_S3_OPTIONS": json.dumps(options),
               "MODELHUB_CACHE": str(tmp_path / f"cache-{worker}")}
        procs.append(subprocess.Popen(
            [sys.executable, str(WRITER), url, str(worker), str(go), *todo],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        ))
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_concurrent_writers_lose_no_version(s3_repo_url, tmp_path) -> None:
    """Two processes commit 10 versions each to model m at the same time, then 2 each
    to a model of their own (a and b: two processes writing two models)."""
    url, options = s3_repo_url
    watcher = Repository.init(url, storage_options=options)  # opened before: its index must notice
    assert watcher.versions() == []
    results = _start_writers(url, options, [["m:10", "a:2"], ["m:10", "b:2"]], tmp_path)

    vs = watcher.versions("m")
    assert sorted(v.number for v in vs) == list(range(1, 21))  # each number used once
    by_id = {v.id: v for v in vs}
    for worker, done in enumerate(results):
        mine = [d for d in done if d["model"] == "m"]
        assert [d["i"] for d in mine] == list(range(10))
        for d in mine:  # every commit a writer made is there, under the number it was told
            v = by_id[d["id"]]
            assert (v.number, v.metrics) == (d["number"], {"worker": worker, "i": d["i"]})
            assert d["parent"] == (f"m@v{v.number - 1}" if v.number > 1 else None)  # as returned
        assert [d["number"] for d in mine] == sorted(d["number"] for d in mine)
    # one linear history: each version's parent is the one numbered before it
    assert [v.parent for v in vs] == [None] + [f"m@v{n}" for n in range(1, 20)]
    assert watcher.resolve("m@latest") == vs[-1].id
    for v in vs:
        assert_bit_equal(watcher.load(v.ref), weights(v.metrics["worker"], v.metrics["i"]))
    for worker, model in enumerate("ab"):
        own = watcher.versions(model)
        assert [(v.number, v.metrics) for v in own] == [(1, {"worker": worker, "i": 1000}),
                                                        (2, {"worker": worker, "i": 1001})]
        assert [v.id for v in own] == [d["id"] for d in results[worker] if d["model"] == model]
        for v in own:
            assert_bit_equal(watcher.load(v.ref), weights(worker, v.metrics["i"]))
    # no orphaned version, leftover or damage (verify less its decoding: loaded above)
    assert scan(watcher.store).problems == []
    assert not [f for f in _bucket_files(url, options) if f.startswith(("tmp/", "locks/"))]


def _racing(repo: Repository, rival: Repository, rival_sd: dict, monkeypatch) -> None:
    """Make ``repo``'s next claim of a number lose: just before it, ``rival`` (another
    writer) commits and takes that number."""
    store = repo.store
    claim = store.refs.create_number

    def first_someone_else(model: str, number: int, vid: str) -> bool:
        monkeypatch.setattr(store.refs, "create_number", claim)
        rival.commit(rival_sd, model)
        return claim(model, number, vid)

    monkeypatch.setattr(store.refs, "create_number", first_someone_else)


def test_a_commit_that_loses_its_number_takes_the_next(s3_repo_url, monkeypatch) -> None:
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options, repack="manual")
    rival = Repository(url, storage_options=options)
    repo.commit(weights(0, 0), "m")
    _racing(repo, rival, weights(1, 0), monkeypatch)
    mine = repo.commit(weights(0, 1), "m")
    theirs = rival.version("m@v2")
    assert theirs.metrics == {} and mine.number == 3
    assert mine.parent == "m@v2"  # renumbered and re-parented, same version id
    assert repo.manifest(mine.id).number == 3 and repo.manifest(mine.id).parent == theirs.id
    assert_bit_equal(repo.load("m@v2"), weights(1, 0))
    assert_bit_equal(repo.load("m@v3"), weights(0, 1))
    assert repo.verify() == []  # nothing left of the lost claim
    repo.repack()  # the parents' re-encodes, done later, keep every version exact
    for ref, sd in (("m@v1", weights(0, 0)), ("m@v2", weights(1, 0)), ("m@v3", weights(0, 1))):
        assert_bit_equal(Repository(url, storage_options=options).load(ref), sd)


def test_expect_number_still_refuses_a_number_taken_meanwhile(s3_repo_url, monkeypatch) -> None:
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options, repack="manual")
    rival = Repository(url, storage_options=options)
    repo.commit(weights(0, 0), "m")
    _racing(repo, rival, weights(1, 0), monkeypatch)
    with pytest.raises(ModelHubError, match="expected to commit m@v2 but the next version is m@v3"):
        repo.commit(weights(0, 1), "m", expect_number=2)
    assert [v.ref for v in repo.versions()] == ["m@v1", "m@v2"]
    assert len(repo.refs.version_ids()) == 2  # the refused version was withdrawn
    assert repo.verify() == []


def test_tags_move_by_compare_and_swap(s3_repo_url) -> None:
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options, repack="manual")
    _commit_three(repo)
    other = Repository(url, storage_options=options)
    repo.tag("m@v1", "best", expect=None)  # created only if absent
    with pytest.raises(ConflictError, match="points at"):
        other.tag("m@v2", "best", expect=None)
    other.tag("m@v2", "best", expect="m@v1")
    with pytest.raises(ConflictError, match="another writer moved it"):
        repo.tag("m@v3", "best", expect="m@v1")  # it read v1, but other moved it
    assert repo.tags("m") == {"best": "m@v2"}
    repo.tag("m@v3", "best")  # without expect: moves from wherever it is
    assert other.tags("m") == {"best": "m@v3"}


def test_two_writers_moving_one_tag(s3_repo_url) -> None:
    """Threads with stores of their own (no shared lock), as two processes would be."""
    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options, repack="manual")
    _commit_three(repo)
    ids = [repo.resolve(f"m@v{n}") for n in (1, 2, 3)]
    errors: list[BaseException] = []
    wins = [0, 0]

    def mover(k: int) -> None:
        refs = RepoStore(url, options).refs
        for _ in range(8):
            current = refs.tags("m").get("best")
            target = ids[(ids.index(current) + 1) % 3] if current else ids[0]
            try:
                refs.set_tag("m", "best", target, expect=current)
                wins[k] += 1
            except ConflictError:
                continue
            except BaseException as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=mover, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # every successful move advanced the tag by one step from where it was: none lost
    assert ids.index(repo.refs.tags("m")["best"]) == (sum(wins) - 1) % 3


def test_conditional_writes_lose_no_update(s3_repo_url) -> None:
    """Four writers incrementing one counter file by read, then replace-if-match: the
    final count is the number of increments (none lost)."""
    url, options = s3_repo_url
    Repository.init(url, storage_options=options)
    Location(url, options).create_exclusive("counter", b"0")

    def bump() -> None:
        loc = Location(url, options)
        for _ in range(10):
            while True:
                data, etag = loc.read_with_etag("counter")
                if loc.replace_if_match("counter", str(int(data) + 1).encode(), etag):
                    break

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Location(url, options).read("counter") == b"40"
    assert Location(url, options).create_exclusive("counter", b"x") is None


def test_a_repack_lease_keeps_a_second_repacker_out(s3_repo_url) -> None:
    from modelhub_torch.store.lease import model_lease

    url, options = s3_repo_url
    repo = Repository.init(url, storage_options=options, repack="manual")
    sds = _commit_three(repo)
    with model_lease(Location(url, options), "m", shared=True) as held:
        assert held.held
        report = Repository(url, storage_options=options).repack()
        assert report.skipped == ["m"] and report.deltas == 0
    report = repo.repack()  # released: the next repack does the job
    assert report.skipped == [] and report.deltas == 2
    for i, sd in enumerate(sds):
        assert_bit_equal(repo.load(f"m@v{i + 1}"), sd)


def test_an_expired_lease_is_taken_over(s3_repo_url) -> None:
    from modelhub_torch.store.lease import model_lease

    url, options = s3_repo_url
    Repository.init(url, storage_options=options)
    loc = Location(url, options)
    with model_lease(loc, "m", shared=True, seconds=-1) as stale:  # a holder that stalled
        assert stale.held
        with model_lease(Location(url, options), "m", shared=True) as taker:
            assert taker.held
            assert not stale.renew()  # the stalled holder finds out and stops
        with model_lease(Location(url, options), "m", shared=True) as third:
            assert third.held  # the taker released it
