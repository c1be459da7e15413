"""The recreation budget: estimates from manifests, commits that honour
max_load_factor, repack within it, and the knobs (settings, CLI)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from modelhub_torch import Repository
from modelhub_torch.budget import estimate, record_cost, whole_cost
from modelhub_torch.cli import main
from modelhub_torch.errors import FormatError


def _trajectory(versions: int, n: int = 60_000, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Adam-like steps on one big tensor, plus a tensor that never changes (a pooler
    left out of the loss) and a small bias."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g) * 0.05
    frozen = torch.randn(20_000, generator=g)
    scale = torch.exp(torch.empty(n).uniform_(-14, -8, generator=g))
    out = []
    for k in range(versions):
        w = w + torch.randn(n, generator=g) * scale
        out.append({"w": w.clone(), "frozen": frozen.clone(), "b": torch.full((4,), float(k))})
    return out


def _factors(repo: Repository, model: str = "m") -> list[float]:
    return [estimate(repo.store.manifest, v.id).factor for v in repo.versions(model)]


def _whole(repo: Repository, model: str = "m") -> list[bool]:
    """Per version: whether none of its records leans on another version's data."""
    out = []
    for v in repo.versions(model):
        recs = repo.manifest(v.id).tensors
        out.append(all(r["data"]["kind"] != "planes" or r["data"].get("base") is None for r in recs))
    return out


def test_a_whole_version_costs_one_whole_load_and_each_hop_adds(tmp_path) -> None:
    repo = Repository.init(tmp_path / "r", max_load_factor=None)
    for sd in _trajectory(5):
        repo.commit(sd, "m")
    f = _factors(repo)
    assert 0.8 < f[-1] < 1.2, f  # the newest is whole
    hops = [a - b for a, b in itertools.pairwise(f)]
    assert all(0.5 < h < 3.0 for h in hops), f  # each older version adds about one delta (rANS planes: ~2)
    assert f == sorted(f, reverse=True)
    m = repo.manifest(repo.resolve("m@v1"))
    w = next(r for r in m.tensors if r["path"] == "w")
    assert record_cost(w) > 0 and whole_cost(w) > 0


@pytest.mark.parametrize("factor", [2.5, 4.0])
def test_every_commit_honours_the_budget(tmp_path, factor: float) -> None:
    traj = _trajectory(12)
    repo = Repository.init(tmp_path / "r", max_load_factor=factor)
    for k, sd in enumerate(traj):
        repo.commit(sd, "m")
        assert max(_factors(repo)) <= factor, (k, _factors(repo))  # after every commit, not only the last
    whole = _whole(repo)
    assert whole[-1]
    # a budget of ~2.5 leaves room for one hop, ~4 for two: whole versions are spaced
    # accordingly, not everywhere (the unchanged tensor's links cost nothing)
    assert sum(whole) <= (6 if factor == 2.5 else 4), whole
    assert sum(whole) >= 2, whole
    for v, sd in zip(repo.versions("m"), traj):
        got = repo.load(v.ref)
        assert all(torch.equal(got[k].view(torch.int32), sd[k].view(torch.int32)) for k in sd)


def test_unbounded_budget_stores_one_chain_and_less(tmp_path) -> None:
    traj = _trajectory(8)
    bounded = Repository.init(tmp_path / "a", max_load_factor=2.5)
    unbounded = Repository.init(tmp_path / "b", max_load_factor=None)
    for sd in traj:
        bounded.commit(sd, "m")
        unbounded.commit(sd, "m")
    assert sum(_whole(unbounded)) == 1
    assert max(_factors(unbounded)) > 2.5 * 2
    assert unbounded.stats()["stored_bytes"] < 0.9 * bounded.stats()["stored_bytes"]


def test_the_budget_bounds_versions_an_archive_or_repack_left_deeper(tmp_path) -> None:
    """A repository filled without a budget, then given one: the next commit keeps the
    parent whole rather than push the old chain further past it, and repack adds no
    context coding past it."""
    traj = _trajectory(6)
    repo = Repository.init(tmp_path / "r", max_load_factor=None)
    for sd in traj[:5]:
        repo.commit(sd, "m")
    deepest = max(_factors(repo))
    repo.store.update_settings(max_load_factor=3.0)
    repo.commit(traj[5], "m")
    assert _whole(repo)[-2:] == [True, True]  # v5 stayed whole: v1..v4 lean on it
    assert max(_factors(repo)) == pytest.approx(deepest)
    report = repo.repack()
    assert report.versions == 0 and report.over_budget
    assert max(_factors(repo)) == pytest.approx(deepest)


@pytest.mark.parametrize("bad", [0.5, -1, "2", True, [3]])
def test_a_bad_load_factor_is_refused_with_its_range(tmp_path, bad) -> None:
    with pytest.raises(FormatError, match="max_load_factor"):
        Repository.init(tmp_path / "r", max_load_factor=bad)
    Repository.init(tmp_path / "ok", max_load_factor=None)
    assert json.loads((tmp_path / "ok" / "modelhub.json").read_text())["max_load_factor"] is None


def test_cli_init_sets_the_budget_and_gc_repacks(tmp_path, capsys) -> None:
    root = tmp_path / "r"
    assert main(["--repo", str(root), "init", "--max-load-factor", "2.5"]) == 0
    assert "within 2.5x a whole load" in capsys.readouterr().out
    assert Repository(root).settings["max_load_factor"] == 2.5
    assert main(["--repo", str(tmp_path / "u"), "init", "--max-load-factor", "none"]) == 0
    assert "unbounded delta chains" in capsys.readouterr().out
    assert main(["--repo", str(tmp_path / "d"), "init"]) == 0
    assert Repository(tmp_path / "d").settings["max_load_factor"] == 2.5  # the documented default
    assert main(["--repo", str(tmp_path / "x"), "init", "--max-load-factor", "0.5"]) == 2
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "x").exists()

    repo = Repository(tmp_path / "u")
    repo.store.update_settings(repack="manual")  # leave it all to gc --repack
    traj = _trajectory(5, n=100_000)
    for sd in traj:
        repo.commit(sd, "m")
    capsys.readouterr()
    assert main(["--repo", str(tmp_path / "u"), "gc", "--repack", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # four parents became reverse deltas, then three of them got their neighbour as context
    assert doc["repacked_deltas"] == 4 and doc["repacked_versions"] == 3
    assert doc["repack_bytes_after"] < doc["repack_bytes_before"]
    for v, sd in zip(repo.versions("m"), traj):
        assert torch.equal(repo.load(v.ref)["w"].view(torch.int32), sd["w"].view(torch.int32))
    assert repo.verify() == []


def test_chains_are_checked_once_at_their_end(tmp_path) -> None:
    """A chain restores with one digest check (of the requested tensor), and a corrupt
    base still fails it: the final digest covers every base it was rebuilt from."""
    from modelhub_torch import reader as reader_mod

    repo = Repository.init(tmp_path / "r", max_load_factor=None)
    traj = _trajectory(4, n=50_000)
    for sd in traj:
        repo.commit(sd, "m")
    repo.wait()  # the background repack hashes too
    calls = []
    real = reader_mod.digest_bits
    reader_mod.digest_bits = lambda bits: calls.append(bits.nbytes) or real(bits)
    try:
        r = repo.reader()
        got = r.decode(repo.resolve("m@v1"), 0)
    finally:
        reader_mod.digest_bits = real
    assert calls == [50_000 * 4]
    assert (got == traj[0]["w"].numpy().view(np.uint32)).all()
    # a cached base that was never checked is checked when asked for itself
    calls.clear()
    reader_mod.digest_bits = lambda bits: calls.append(bits.nbytes) or real(bits)
    try:
        r.decode(repo.resolve("m@v2"), 0)
    finally:
        reader_mod.digest_bits = real
    assert calls == [50_000 * 4]
