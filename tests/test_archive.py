"""Repository.archive / `modelhub archive`: re-planned storage, every version bit-exact,
crash-safe switch, cold tier, lossy schemes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_bit_equal
from test_prune import _trajectory

from modelhub_torch import ModelHubError, Repository
from modelhub_torch.cli import main
from modelhub_torch.cli.output import human_size

SCRIPT = Path(__file__).parent / "scripts" / "archive_killed.py"


def _build(root: Path) -> tuple[Repository, dict[str, object]]:
    """Two runs and a fine-tune with Lightning-shaped checkpoints: reverse deltas,
    forward deltas, shared tensors, a pruned version, a tag."""
    repo = Repository.init(root)
    expect: dict[str, object] = {}
    for c in _trajectory(6, seed=0):
        expect[repo.commit(c, "m").ref] = c
    repo.prune("m@v2", ["optimizer_states", "lr_schedulers"])
    expect["m@v2"] = {k: v for k, v in expect["m@v2"].items() if k not in ("optimizer_states", "lr_schedulers")}
    base = expect["m@v4"]["state_dict"]
    for k, c in enumerate(_trajectory(3, seed=1)):
        sd = {name: base[name] + 0.01 * (k + 1) * c["state_dict"][name] for name in base}
        sd["2.bias"] = base["2.bias"]  # unchanged layer: shared with the base
        expect[repo.commit(sd, "ft", parent="m@v4" if k == 0 else None).ref] = sd
    repo.tag("m@v5", "best")
    return repo, expect


def _check_all(repo: Repository, expect: dict[str, object]) -> None:
    for ref, obj in expect.items():
        assert_bit_equal(repo.load(ref, weights_only=False), obj, ref)
    assert repo.verify() == []


@pytest.fixture
def built(tmp_path):
    return _build(tmp_path / "r")


@pytest.mark.parametrize("algorithm", ["mst", "spt", "last", "pas-mt", "pas-pt"])
def test_every_version_bit_exact_after_archive(built, algorithm) -> None:
    repo, expect = built
    r = repo.archive(2.0, algorithm=algorithm)
    assert r.versions == len(expect)
    if algorithm in ("spt", "pas-mt", "pas-pt"):  # the budget-aware planners meet the budget
        assert r.feasible
    if algorithm == "mst":  # least storage, whatever the recreation cost
        assert r.planned_storage == pytest.approx(r.mst_storage)
    _check_all(repo, expect)
    assert repo.gc(dry_run=True)["objects_removed"] == 0  # the archive collected its garbage
    assert repo.resolve("m@best") == repo.resolve("m@v5")
    assert repo.version("m@v2").info == {}  # metadata untouched
    # reopened (fresh manifests, rebuilt index): still the same
    repo.catalog.close()
    again = Repository(repo.url)
    assert again.verify(rebuild_index=True) == []
    _check_all(again, expect)


def _drift(root: Path, n: int = 10) -> tuple[Repository, dict[str, object]]:
    """A slowly drifting model (small steps, as late in training or in a fine-tune)."""
    repo = Repository.init(root)
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(256, 128, generator=g) * 0.05, "b": torch.randn(128, generator=g) * 0.05}
    expect: dict[str, object] = {}
    for _ in range(n):
        sd = {k: v - 1e-4 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        expect[repo.commit(sd, "m").ref] = sd
    return repo, expect


def test_alpha_trades_storage_for_recreation(tmp_path) -> None:
    repo, expect = _drift(tmp_path / "r")
    fastest = repo.archive(1.0, algorithm="pas-mt")
    # budget 1x: nothing may be slower than its shortest path, so every tensor is whole
    for v in repo.versions():
        for rec in repo.manifest(v.id).tensors:
            assert rec["data"]["kind"] == "same" or rec["data"]["base"] is None
    assert fastest.recreation_mean_s == pytest.approx(fastest.spt_recreation_mean_s)
    loose = repo.archive(50.0, algorithm="pas-mt")
    assert loose.stored_after < 0.8 * fastest.stored_after
    assert loose.planned_storage <= 1.01 * loose.mst_storage
    assert loose.recreation_mean_s > fastest.recreation_mean_s
    mid = repo.archive(2.0, algorithm="pas-pt", scheme="parallel")
    assert mid.feasible
    assert mid.recreation_max_s <= 2.0 * mid.spt_recreation_max_s * (1 + 1e-9)
    assert mid.planned_storage < fastest.planned_storage
    _check_all(repo, expect)


def test_dry_run_writes_nothing(built, tmp_path) -> None:
    repo, _expect = built
    root = Path(repo.url)
    before = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "index" not in p.parts)
    r = repo.archive(3.0, dry_run=True)
    assert r.dry_run and r.stored_after == r.stored_before
    r = repo.archive(3.0, dry_run=True, cold=str(tmp_path / "cold"), cold_price=0.01)
    assert r.planned_storage < r.spt_storage and r.cold_after == 0
    assert json.loads((root / "modelhub.json").read_text()).get("cold") is None and repo.settings["cold"] is None
    assert repo.objects.cold is None
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "index" not in p.parts) == before


def test_reader_opened_before_an_archive_still_loads(built, tmp_path) -> None:
    """A second Repository caches the old manifests; the archive deletes their packs."""
    repo, expect = built
    other = Repository(repo.url)
    for ref in expect:
        other.load(ref, weights_only=False)  # warm its manifest cache
    repo.archive(8.0, algorithm="mst")
    for ref, obj in expect.items():
        assert_bit_equal(other.load(ref, weights_only=False), obj, ref)


def test_commits_after_an_archive_work(built) -> None:
    repo, expect = built
    repo.archive(4.0, algorithm="pas-mt")
    ckpt = _trajectory(7, seed=0)[6]
    expect[repo.commit(ckpt, "m").ref] = ckpt
    repo.prune("m@v4", ["optimizer_states"])
    expect["m@v4"] = {k: v for k, v in expect["m@v4"].items() if k != "optimizer_states"}
    _check_all(repo, expect)


@pytest.mark.parametrize(
    ("step", "k"),
    [("put", 0), ("put", 3), ("pack", 5), ("pack", 20), ("journal", 0), ("switch", 2), ("switch", 7), ("delete", 1),
     ("delete", 8)],
)
def test_kill_during_archive_leaves_a_consistent_repository(built, step, k) -> None:
    repo, expect = built
    root = Path(repo.url)
    repo.catalog.close()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(root), step, str(k)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr  # it really died mid-way
    assert "finished" not in proc.stdout
    again = Repository(root)  # rolls an interrupted switch forward
    assert not (root / "switch.json").exists()
    for ref, obj in expect.items():
        assert_bit_equal(again.load(ref, weights_only=False), obj, ref)
    # a kill mid-write leaves temp files, which verify reports (harmless) and gc removes
    found = again.verify()
    assert all(p.kind == "temp-files" and not p.damage for p in found), found
    assert bool(found) == bool(list((root / "tmp").iterdir()))
    again.gc()
    _check_all(again, expect)
    assert not list((root / "tmp").iterdir())
    again.archive(2.0)  # and it can be archived again
    _check_all(again, expect)


def test_unfinished_switch_is_read_through_the_journal_when_read_only(built, monkeypatch) -> None:
    repo, expect = built
    from modelhub_torch import publish
    from modelhub_torch.archive import plan_repository
    from modelhub_torch.archive.rewrite import Rewriter
    from modelhub_torch.store.switch import write_switch

    rg, plan, *_ = plan_repository(repo.store, alpha=8.0, algorithm="mst")
    new = Rewriter(repo.store, repo.reader(), rg, plan, 2).run()
    write_switch(repo.loc, {m.id: repo.objects.put(m.to_bytes()) for m in new}, "archive")

    def read_only(store, manifests):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(publish, "apply_switch", read_only)
    ro = Repository(repo.url)
    assert ro.store.pending and (Path(repo.url) / "switch.json").exists()
    for ref, obj in expect.items():
        assert_bit_equal(ro.load(ref, weights_only=False), obj, ref)
    monkeypatch.undo()
    _check_all(Repository(repo.url), expect)


def test_cold_tier_holds_low_planes_and_reads_are_transparent(built, tmp_path) -> None:
    repo, expect = built
    cold = tmp_path / "cold"
    r = repo.archive(4.0, cold=str(cold), cold_price=0.05)
    assert r.cold_after > 0
    assert json.loads((Path(repo.url) / "modelhub.json").read_text())["cold"] == str(cold.resolve())
    cold_packs = {oid for v in repo.versions() for oid in repo.manifest(v.id).cold_packs if oid}
    assert cold_packs
    for oid in cold_packs:  # only in the cold location
        assert (cold / "objects" / oid[:2] / oid[2:]).exists()
        assert not (Path(repo.url) / "objects" / oid[:2] / oid[2:]).exists()
    for v in repo.versions():
        for rec in repo.manifest(v.id).tensors:
            if rec["data"].get("cold_from") is not None:
                assert rec["data"]["cold_from"] == 2
    repo.catalog.close()
    _check_all(Repository(repo.url), expect)
    # a commit re-encodes the latest version: its cold frames come back hot, still exact
    again = Repository(repo.url)
    ckpt = _trajectory(7, seed=0)[6]
    expect[again.commit(ckpt, "m").ref] = ckpt
    _check_all(again, expect)
    # budget 1x: cold reads are slower, so everything comes back and the tier empties
    fastest = again.archive(1.0)
    assert fastest.cold_after == 0 and fastest.cold_before > 0
    assert not [p for p in (cold / "objects").rglob("*") if p.is_file()]
    _check_all(again, expect)
    with pytest.raises(ModelHubError, match="already keeps its cold tier"):
        again.archive(2.0, cold=str(tmp_path / "elsewhere"))


def test_a_repository_opened_before_an_archive_elsewhere_finds_the_cold_tier(built, tmp_path) -> None:
    """A long-lived Repository (a server, a notebook) keeps reading when another process
    archives and moves low planes to a new cold tier (seen in the demo)."""
    repo, expect = built
    opened_before = Repository(repo.url)
    _check_all(opened_before, {ref: expect[ref] for ref in list(expect)[:1]})  # manifests cached
    Repository(repo.url).archive(4.0, cold=str(tmp_path / "cold"), cold_price=0.05)
    assert opened_before.store.objects.cold is None
    _check_all(opened_before, expect)
    assert opened_before.store.objects.cold is not None


def test_progressive_reads_high_planes_of_a_cold_tiered_version(tmp_path) -> None:
    from modelhub_torch.progressive import ProgressiveModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    repo = Repository.init(tmp_path / "r")
    repo.commit(net, "net")
    repo.archive(3.0, cold=str(tmp_path / "cold"), cold_price=0.01)
    assert any(r["data"].get("cold_from") for r in repo.manifest(repo.resolve("net@v1")).tensors)
    x = torch.randn(200, 64)
    res = ProgressiveModel(net, repo, "net@v1").predict(x, k=1)
    with torch.no_grad():
        assert torch.equal(res.topk[:, 0], net(x).argmax(1))


def test_lossy_versions(built) -> None:
    repo, expect = built
    r = repo.archive(2.0, lossy={"m@v3": "fp16", "ft@v1": "quant:3", "m@v1": "bf16"})
    assert r.lossy == {"m@v3": "fp16", "ft@v1": "quant:3", "m@v1": "bf16"}
    got = repo.load("m@v3", weights_only=False)
    want = expect["m@v3"]
    for name, t in want["state_dict"].items():
        assert torch.equal(got["state_dict"][name], t.half().float())
    assert got["epoch"] == want["epoch"] and got["global_step"] == want["global_step"]
    bf = repo.load_state_dict("m@v1")
    for name, t in expect["m@v1"]["state_dict"].items():
        assert torch.equal(bf[name].view(torch.int32) & 0xFFFF, torch.zeros_like(t, dtype=torch.int32))
        assert torch.allclose(bf[name], t, rtol=2**-8, atol=0)
    q = repo.load_state_dict("ft@v1")
    for name, t in q.items():
        assert t.unique().numel() <= 8
        assert (t - expect["ft@v1"][name]).abs().max() < 0.5 * (expect["ft@v1"][name].abs().max() + 1e-6)
    for ref in ("m@v3", "ft@v1", "m@v1"):
        assert repo.version(ref).info["lossy"] in ("fp16", "quant:3", "bf16")
    assert "lossy" not in repo.version("m@v4").info
    for ref, obj in expect.items():  # every other version, incl. ft@v2 built on ft@v1, is exact
        if ref not in ("m@v3", "ft@v1", "m@v1"):
            assert_bit_equal(repo.load(ref, weights_only=False), obj, ref)
    assert repo.verify() == []
    sizes = {v.ref: v.stored_bytes for v in repo.versions()}
    # re-archiving keeps the lossy versions as they are (same values, still compact)
    before = {ref: repo.load_state_dict(ref) for ref in ("m@v3", "ft@v1")}
    repo.archive(3.0)
    for ref, sd in before.items():
        assert_bit_equal(repo.load_state_dict(ref), sd, ref)
        assert repo.version(ref).stored_bytes <= sizes[ref] * 1.05
    assert repo.verify() == []


def test_bad_arguments_change_nothing(built) -> None:
    repo, expect = built
    for kwargs, match in [
        ({"alpha": 0.5}, "alpha must be >= 1"),
        ({"algorithm": "greedy"}, "unknown algorithm"),
        ({"scheme": "serial"}, "unknown scheme"),
        ({"lossy": {"m@v1": "int4"}}, "fp16"),
        ({"lossy": {"m@v99": "fp16"}}, "m@v99"),
        ({"cold": repo.url}, "another location"),
    ]:
        alpha = kwargs.pop("alpha", 2.0)
        with pytest.raises(ModelHubError, match=match):
            repo.archive(alpha, **kwargs)
    _check_all(repo, expect)


def test_cli_archive(built, capsys, tmp_path) -> None:
    repo, expect = built
    assert main(["--repo", repo.url, "archive", "--budget", "3", "--algorithm", "pas-pt", "--measure"]) == 0
    text = capsys.readouterr().out
    assert "archived 9 versions" in text and "storage:" in text
    assert "version recreation (modelled): mean" in text and "measured load: mean" in text
    assert main(["--repo", repo.url, "--json", "archive", "--dry-run", "--scheme", "parallel"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dry_run"] and doc["scheme"] == "parallel" and doc["feasible"]
    assert main(["--repo", repo.url, "archive", "--lossy", "fp16"]) == 2
    assert "opt-in per version" in capsys.readouterr().err
    assert main(["--repo", repo.url, "archive", "--lossy", "fp16", "--versions", "m@v5"]) == 0
    capsys.readouterr()
    assert main(["--repo", repo.url, "desc", "m@v5"]) == 0
    text = capsys.readouterr().out
    assert "lossy:    fp16" in text and "lossy fp16" in text
    _check_all(repo, {k: v for k, v in expect.items() if k != "m@v5"})
    # with a cold tier, what stays in the repository itself is said separately
    assert main(["--repo", repo.url, "--json", "archive", "--cold", str(tmp_path / "cold")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cold_before"] == 0 and 0 < doc["cold_after"] < doc["stored_after"]
    hot = doc["stored_after"] - doc["cold_after"]
    assert main(["--repo", repo.url, "archive", "--budget", "2"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"in the repository itself: .* \(\d+\.\d\dx\); in the cold tier: ", text), text
    # the "before" figures are what the first archive left in each tier
    assert f"in the repository itself: {human_size(hot)} -> " in text
    assert f"in the cold tier: {human_size(doc['cold_after'])} -> " in text


def test_cli_lossy_accuracy_check(tmp_path, capsys) -> None:
    """The accuracy check evaluates the version before and after (digits MLP)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    repo = Repository.init(tmp_path / "r")
    repo.commit(net, "mlp")
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    import digits_mlp_for_cli  # noqa: F401 - importable, as --module needs

    assert main(["--repo", repo.url, "archive", "--lossy", "quant:2", "--versions", "mlp@v1",
                 "--data", str(tmp_path / "data.pt"), "--module", "digits_mlp_for_cli:DigitsMLP"]) == 0
    text = capsys.readouterr().out
    assert "ACC BEFORE" in text and "mlp@v1" in text
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    assert f"{acc:.4g}"[:4] in text
    before = repo.load_state_dict("mlp@v1")
    # without --module nothing is imported, and the version is left as it was
    assert main(["--repo", repo.url, "archive", "--lossy", "quant:4", "--versions", "mlp@v1",
                 "--data", str(tmp_path / "data.pt")]) == 2
    err = capsys.readouterr().err
    assert "archive --data needs the network's class: pass --module" in err
    assert_bit_equal(repo.load_state_dict("mlp@v1"), before)
