"""push / pull / clone between repositories: only what is missing moves, thin, checked,
bit-exact, with every piece of metadata; divergence refused with nothing written;
partial (top-planes) pulls; interrupted transfers."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import assert_bit_equal
from test_progressive import MLP, digits
from torch.nn import functional as F

from modelhub_torch import Repository
from modelhub_torch.budget import estimate
from modelhub_torch.cli import main
from modelhub_torch.errors import DivergedError, ModelHubError, PartialVersionError


def trajectory(versions: int, seed: int = 0, steps: int = 40) -> list[dict]:
    """Checkpoints of a real (small) training run on digits: weights and optimizer state."""
    torch.manual_seed(seed)
    net, (x, y) = MLP(), digits()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    out = []
    for v in range(versions):
        for i in range(steps):
            idx = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(v * 1000 + i))
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        out.append({"state_dict": {k: t.clone() for k, t in net.state_dict().items()},
                    "optimizer": opt.state_dict(), "epoch": v})
    return out


@pytest.fixture(scope="module")
def ckpts() -> list[dict]:
    return [
        {**c, "optimizer": {"state": {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
                                      for k, s in c["optimizer"]["state"].items()},
                            "param_groups": c["optimizer"]["param_groups"]}}
        for c in trajectory(5)
    ]


def make_source(path: Path, ckpts: list[dict], count: int | None = None) -> Repository:
    repo = Repository.init(path)
    for i, c in enumerate(ckpts[:count]):
        repo.commit(c, "mlp", metrics={"val_acc": 0.5 + i / 20, "step": i}, hparams={"lr": 0.01},
                    message=f"epoch {i}", info={"epoch": i})
    if len(ckpts[:count]) >= 2:
        repo.tag("mlp@v2", "best")
    repo.wait()
    return repo


def same_versions(a: Repository, b: Repository, refs: list[str]) -> None:
    """Both sides hold the same versions: ids, numbers, lineage, metadata and bits."""
    for ref in refs:
        va, vb = a.version(ref), b.version(ref)
        assert (va.id, va.number, va.parent, va.created_at) == (vb.id, vb.number, vb.parent, vb.created_at)
        assert (va.metrics, va.hparams, va.message, va.info) == (vb.metrics, vb.hparams, vb.message, vb.info)
        ma, mb = a.manifest(va.id), b.manifest(vb.id)
        assert ma.skeleton == mb.skeleton and ma.extra.get("graph") == mb.extra.get("graph")
        assert_bit_equal(b.load(ref, weights_only=True), a.load(ref, weights_only=True))


def test_push_moves_everything_bit_exact_with_metadata(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts)
    report = src.push(tmp_path / "dst")
    dst = Repository(tmp_path / "dst")
    refs = [f"mlp@v{n}" for n in range(1, 6)]
    assert report.versions == refs and report.skipped == [] and report.tags == ["mlp@best"]
    same_versions(src, dst, refs)
    assert dst.tags("mlp") == {"best": "mlp@v2"}
    for i, ref in enumerate(refs):
        assert_bit_equal(dst.load(ref), ckpts[i])
    assert dst.verify() == [] and src.verify() == []
    # thin: less crosses than the versions' own stored bytes, far less than raw
    raw = sum(v.raw_bytes for v in src.versions())
    assert report.bytes < 0.8 * raw
    # every version restores within the destination's budget
    dst.wait()
    for v in dst.versions():
        assert estimate(dst.store.manifest, v.id).factor <= dst.settings["max_load_factor"] + 1e-9


def test_incremental_push_moves_only_the_new_version_as_a_delta(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=4)
    first = src.push(tmp_path / "dst")
    assert len(first.versions) == 4
    again = src.push(tmp_path / "dst")
    assert again.versions == [] and again.bytes == 0 and again.objects == 0 and len(again.skipped) == 4
    src.commit(ckpts[4], "mlp", message="epoch 4")
    src.wait()
    newest = src.version("mlp@v5")
    one = src.push(tmp_path / "dst")
    assert one.versions == ["mlp@v5"] and len(one.skipped) == 4
    whole = sum(src.store.manifest(newest.id).plane_bytes())  # how the source stores it: whole
    assert one.bytes < 0.75 * whole, (one.bytes, whole)
    assert_bit_equal(Repository(tmp_path / "dst").load("mlp@v5"), ckpts[4])


def test_pull_named_refs_and_fine_tunes_of_other_models(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=3)
    ft = src.copy("mlp@v2", "mlp-ft", message="fine-tune start")
    tuned = {**ckpts[3], "epoch": 99}
    src.commit(tuned, "mlp-ft")
    dst = Repository.init(tmp_path / "dst")
    r = dst.pull(src, ["mlp@v2"])
    assert r.versions == ["mlp@v2"] and dst.models() == ["mlp"]
    assert [v.ref for v in dst.versions()] == ["mlp@v2"]  # only what was named (no ancestors)
    r = dst.pull(src, ["mlp-ft"])
    assert r.versions == ["mlp-ft@v1", "mlp-ft@v2"]
    # the copy links to mlp@v2, which the destination holds: its tensors did not cross again
    assert dst.version("mlp-ft@v1").parent == "mlp@v2" and dst.version(ft.ref).id == ft.id
    assert_bit_equal(dst.load("mlp-ft@v2"), tuned)
    r = dst.pull(src)  # the rest: v1 and v3 get their numbers, between existing ones
    assert sorted(r.versions) == ["mlp@v1", "mlp@v3"] and sorted(r.skipped) == ["mlp-ft@v1", "mlp-ft@v2", "mlp@v2"]
    same_versions(src, dst, ["mlp@v1", "mlp@v2", "mlp@v3", "mlp-ft@v1", "mlp-ft@v2"])
    assert dst.verify() == []


def test_divergence_is_refused_with_nothing_written(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=2)
    src.push(tmp_path / "dst")
    dst = Repository(tmp_path / "dst")
    src.commit(ckpts[2], "mlp", message="here")
    dst.commit(ckpts[3], "mlp", message="there")
    other = src.commit(ckpts[4], "other")
    before = sorted(dst.objects), [v.ref for v in dst.versions()]
    with pytest.raises(DivergedError, match=r"mlp@v3 is [0-9a-f]{12} in .* but [0-9a-f]{12} in "):
        src.push(dst)
    assert (sorted(dst.objects), [v.ref for v in dst.versions()]) == before
    with pytest.raises(DivergedError):
        dst.pull(src)
    # other refs still transfer
    assert src.push(dst, ["other"]).versions == [other.ref]


def test_aliases_fast_forward_and_refuse_moves_on_both_sides(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=4)
    src.push(tmp_path / "dst")
    dst = Repository(tmp_path / "dst")
    src.tag("mlp@v4", "best")  # moved forward at the source only
    assert src.push(dst).tags == ["mlp@best"] and dst.tags("mlp")["best"] == "mlp@v4"
    src.tag("mlp@v3", "best")
    dst.tag("mlp@v1", "best")  # moved on both sides
    with pytest.raises(DivergedError, match="mlp@best"):
        src.push(dst)
    assert dst.tags("mlp")["best"] == "mlp@v1"


def test_clone_with_top_planes_then_progressive_then_full_load(tmp_path: Path, ckpts: list[dict]) -> None:
    from modelhub_torch.progressive import ProgressiveModel

    src = make_source(tmp_path / "src", ckpts)
    full = Repository.clone(src, tmp_path / "full")
    part = Repository.clone(src, tmp_path / "part", planes=2)
    assert part.last_sync.partial == [f"mlp@v{n}" for n in range(1, 6)]
    assert part.last_sync.bytes < 0.7 * full.last_sync.bytes
    assert part.verify() == []  # what is there is checked; missing planes are not damage
    # progressive inference on the partial copy answers as the full network does
    x, _ = digits()
    net = MLP()
    net.load_state_dict(ckpts[4]["state_dict"])
    want = net(x[:200]).topk(1, dim=1).indices
    pm = ProgressiveModel(MLP(), part, "mlp@v5", start_planes=2)
    res = pm.predict(x[:200], k=1)
    assert torch.equal(res.topk, want)
    # (inputs two planes cannot decide made it fetch mlp@v5 in full from the source)
    assert part.manifest(part.resolve("mlp@v5")).partial == bool((res.planes == 2).all())
    # a full load fetches the rest from the source, once, and the version is complete
    assert part.manifest(part.resolve("mlp@v3")).partial
    assert_bit_equal(part.load("mlp@v3"), ckpts[2])
    assert not part.manifest(part.resolve("mlp@v3")).partial
    assert part.verify() == []
    # with the source gone, the error says what happened and what to do
    import shutil

    shutil.rmtree(tmp_path / "src")
    with pytest.raises(PartialVersionError, match=r"top 2 byte planes .*pull it again"):
        part.load("mlp@v1")
    assert_bit_equal(part.load("mlp@v3"), ckpts[2])  # completed ones stay loadable
    # a full pull from another copy completes the rest
    still = [f"mlp@v{n}" for n in range(1, 6) if part.manifest(part.resolve(f"mlp@v{n}")).partial]
    assert "mlp@v1" in still and "mlp@v3" not in still
    r = part.pull(full)
    assert sorted(r.versions) == still
    for i in range(5):
        assert_bit_equal(part.load(f"mlp@v{i + 1}"), ckpts[i])
    assert part.verify() == []


def test_partial_versions_are_not_pushed_on_nor_archived(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=2)
    part = Repository.clone(src, tmp_path / "part", planes=1)
    with pytest.raises(ModelHubError, match="top 1 byte planes"):
        part.push(tmp_path / "elsewhere")
    with pytest.raises(ModelHubError, match="archive re-plans every version"):
        part.archive()
    # a commit on top of a partial version never links into its missing planes
    part.commit(ckpts[1], "mlp-copy")
    v = part.version("mlp-copy@v1")
    m = part.manifest(v.id)
    assert all(r["data"].get("version") in (None, v.id) for r in m.tensors)


def test_errors_name_the_problem(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=1)
    with pytest.raises(ModelHubError, match="same repository"):
        src.push(src)
    with pytest.raises(ModelHubError, match="positive number of byte planes"):
        Repository.init(tmp_path / "d").pull(src, planes=0)
    with pytest.raises(ModelHubError, match="already exists"):
        Repository.clone(src, tmp_path / "src")
    with pytest.raises(KeyError, match="nope"):
        src.push(tmp_path / "e", ["nope@v1"])


def test_a_damaged_source_object_stops_the_transfer_cleanly(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts, count=3)
    v3 = src.manifest(src.resolve("mlp@v3"))
    pack = next(oid for oid in v3.packs if oid)
    path = Path(src.objects.loc.path(src.objects.rel(pack)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    dst = Repository.init(tmp_path / "dst")
    with pytest.raises(ModelHubError, match=r"checksum|corrupt"):
        dst.pull(src)
    # the versions before the damaged one landed whole; nothing of mlp@v3 is visible
    assert [v.ref for v in dst.versions()] in ([], ["mlp@v1"], ["mlp@v1", "mlp@v2"])
    assert "mlp@v3" not in [v.ref for v in dst.versions()]
    assert dst.verify() == []


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import modelhub_torch.sync.receive as receive
    from modelhub_torch import Repository

    count = {"n": 0}
    real = receive._publish

    def publish(dst, m):
        count["n"] += 1
        if count["n"] == int(sys.argv[3]):
            dst.objects.put(m.to_bytes())  # the manifest object lands, the refs do not
            os.kill(os.getpid(), signal.SIGKILL)
        return real(dst, m)

    receive._publish = publish
    Repository(sys.argv[1]).push(sys.argv[2])
    """
)


def test_a_killed_push_leaves_both_sides_valid_and_resumes(tmp_path: Path, ckpts: list[dict]) -> None:
    src = make_source(tmp_path / "src", ckpts)
    script = tmp_path / "kill.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "src"), str(tmp_path / "dst"), "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dst = Repository(tmp_path / "dst")
    assert [v.ref for v in dst.versions()] == ["mlp@v1", "mlp@v2"]
    assert dst.verify() == [] and src.verify() == []
    report = src.push(dst)
    assert report.versions == ["mlp@v3", "mlp@v4", "mlp@v5"] and len(report.skipped) == 2
    for i in range(5):
        assert_bit_equal(dst.load(f"mlp@v{i + 1}"), ckpts[i])
    dst.gc()  # what the killed push left behind goes
    assert dst.verify() == []


def test_cli_push_pull_clone(tmp_path: Path, ckpts: list[dict], capsys: pytest.CaptureFixture[str]) -> None:
    make_source(tmp_path / "src", ckpts, count=3)
    assert main(["--repo", str(tmp_path / "src"), "push", str(tmp_path / "dst"), "mlp@v1", "mlp@v2"]) == 0
    text = capsys.readouterr().out
    assert "pushed 2 version(s)" in text and "mlp@v1, mlp@v2" in text
    assert main(["clone", str(tmp_path / "dst"), str(tmp_path / "c"), "--planes", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["versions"] == ["mlp@v1", "mlp@v2"] and doc["partial"] == ["mlp@v1", "mlp@v2"] and doc["planes"] == 2
    assert main(["--repo", str(tmp_path / "c"), "pull", str(tmp_path / "src"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["versions"] == ["mlp@v1", "mlp@v2", "mlp@v3"] and doc["partial"] == [] and doc["bytes"] > 0
    assert main(["--repo", str(tmp_path / "c"), "pull", str(tmp_path / "src"), "--planes", "0"]) == 2
    assert "positive number" in capsys.readouterr().err


# ------------------------------------------------------------------- on S3
PUSHER = textwrap.dedent(
    """
    import json, sys
    from modelhub_torch import Repository
    src, url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    r = Repository(src).push(url, storage_options=options)
    print(json.dumps({"versions": r.versions, "skipped": r.skipped}))
    """
)


def test_push_clone_pull_through_s3(s3_repo_url, tmp_path: Path, ckpts: list[dict]) -> None:
    url, options = s3_repo_url
    src = make_source(tmp_path / "src", ckpts, count=4)
    first = src.push(url, storage_options=options)
    assert first.versions == [f"mlp@v{n}" for n in range(1, 5)] and first.tags == ["mlp@best"]
    remote = Repository(url, storage_options=options)
    same_versions(src, remote, [f"mlp@v{n}" for n in range(1, 5)])
    assert remote.verify() == []
    src.commit(ckpts[4], "mlp", message="one more")
    src.wait()
    one = src.push(url, storage_options=options)
    assert one.versions == ["mlp@v5"] and len(one.skipped) == 4
    assert one.bytes < 0.75 * sum(src.store.manifest(src.resolve("mlp@v5")).plane_bytes())
    clone = Repository.clone(url, tmp_path / "clone", storage_options=options)
    assert clone.last_sync.versions == [f"mlp@v{n}" for n in range(1, 6)]
    for i in range(5):
        assert_bit_equal(clone.load(f"mlp@v{i + 1}"), ckpts[i])
    assert clone.tags("mlp") == {"best": "mlp@v2"}
    # top planes only, from S3; a full load fetches the rest from the bucket
    part = Repository.clone(url, tmp_path / "part", planes=2, storage_options=options)
    assert part.last_sync.partial == [f"mlp@v{n}" for n in range(1, 6)]
    assert_bit_equal(part.load("mlp@v4"), ckpts[3])
    assert not part.manifest(part.resolve("mlp@v4")).partial and part.verify() == []
    # pull brings what is new at the remote
    src.commit({**ckpts[4], "epoch": 7}, "mlp")
    src.push(url, storage_options=options)
    assert clone.pull(url, storage_options=options).versions == ["mlp@v6"]
    assert_bit_equal(clone.load("mlp@v6"), {**ckpts[4], "epoch": 7})


def test_two_processes_pushing_the_same_versions_to_s3(s3_repo_url, tmp_path: Path, ckpts: list[dict]) -> None:
    url, options = s3_repo_url
    make_source(tmp_path / "src", ckpts, count=3)
    script = tmp_path / "push.py"
    script.write_text(PUSHER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, str(script), str(tmp_path / "src"), url, json.dumps(options)]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    done = []
    for p, (out, err) in zip(procs, outs):
        if p.returncode == 0:
            done.append(json.loads(out.strip().splitlines()[-1]))
        else:  # the loser of a race on one number says so; nothing of it was published
            assert "during the transfer" in err, err
    assert done
    remote = Repository(url, storage_options=options)
    assert [v.ref for v in remote.versions()] == ["mlp@v1", "mlp@v2", "mlp@v3"]
    for i in range(3):
        assert_bit_equal(remote.load(f"mlp@v{i + 1}"), ckpts[i])
    assert remote.verify() == []
    # a second push from either side now moves nothing
    assert Repository(tmp_path / "src").push(url, storage_options=options).versions == []


def test_a_receiver_that_did_not_code_the_frames_checks_them(tmp_path: Path, ckpts: list[dict], monkeypatch) -> None:
    """The hub's path: frames coded elsewhere are decoded against this repository's
    bases before anything is published; a forged one is refused with nothing visible,
    and a thin version over this repository's budget is stored whole."""
    from modelhub_torch.reader import open_reader
    from modelhub_torch.sync import receive as receiving
    from modelhub_torch.sync.receive import receive
    from modelhub_torch.sync.thin import encode_thin

    src = make_source(tmp_path / "src", ckpts, count=2)
    dst = Repository.init(tmp_path / "dst")
    src.push(dst, ["mlp@v1"])
    v2 = src.resolve("mlp@v2")
    thin = encode_thin(src.store, open_reader(src.store), dst.store, v2, src.resolve("mlp@v1"), lambda v: False)
    assert any(r["data"].get("base") for r in thin.manifest.tensors if r["data"]["kind"] == "planes")
    forged = copy.deepcopy(thin.manifest)
    rec = next(r for r in forged.tensors if r["data"]["kind"] == "planes")
    rec["digest"] = "0" * 64  # what the frames decode to no longer matches
    with dst.store.lock, pytest.raises(ModelHubError, match="checksum"):
        receive(dst.store, forged)
    assert [v.ref for v in dst.versions()] == ["mlp@v1"]
    monkeypatch.setattr(receiving, "fits", lambda dst, wire: False)  # as over this repository's budget
    with dst.store.lock:
        stored, size = receive(dst.store, thin.manifest)
    assert size > 0 and all(r["data"].get("base") is None for r in stored.tensors if r["data"]["kind"] == "planes")
    assert_bit_equal(dst.load("mlp@v2"), ckpts[1])
    assert dst.verify() == []


def test_a_version_arriving_twice_keeps_the_first_manifest(tmp_path: Path, ckpts: list[dict]) -> None:
    """Two senders of the same versions code them each their own way. The slower one,
    which planned before the faster published, must not switch in its own manifest of a
    version already there: coded when the destination held newer versions, it links
    into them, while theirs link back into it — a cycle (seen once in a fresh clone's
    make test, two processes pushing to S3)."""
    from modelhub_torch.reader import open_reader
    from modelhub_torch.sync.receive import receive
    from modelhub_torch.sync.thin import encode_thin

    src = make_source(tmp_path / "src", ckpts, count=3)
    dst = Repository.init(tmp_path / "dst")
    src.push(dst)  # the faster sender
    store, before = dst.store, {v.id: dst.store.refs.manifest_of(v.id) for v in dst.versions()}
    for ref in ("mlp@v1", "mlp@v2", "mlp@v3"):  # the slower one, its plan made before any arrived
        vid = src.resolve(ref)
        with store.lock:
            thin = encode_thin(src.store, open_reader(src.store), store, vid, None, lambda v: True)
            receive(store, thin.manifest, checked=True)
    assert {v.id: store.refs.manifest_of(v.id) for v in dst.versions()} == before
    for i in range(3):
        assert_bit_equal(dst.load(f"mlp@v{i + 1}"), ckpts[i])
    assert dst.verify() == [] and dst.gc()["objects_removed"] == 0  # nothing of the second left behind
