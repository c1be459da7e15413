"""Repository.prune: trainer state leaves a version, every other version stays bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_bit_equal

from modelhub_torch import ModelHubError, Repository

STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks")


def _trajectory(n: int, seed: int = 0) -> list[dict]:
    """Lightning-shaped checkpoints of a small model trained with Adam (real updates)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    x, y = torch.randn(256, 32), torch.randint(0, 10, (256,))
    out = []
    for epoch in range(n):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        out.append(copy.deepcopy({
            "epoch": epoch,
            "global_step": 3 * (epoch + 1),
            "pytorch-lightning_version": "2.6.6",
            "state_dict": model.state_dict(),
            "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": epoch}}}},
            "callbacks": {"ModelCheckpoint{}": {"best_model_score": torch.tensor(1.0 / (epoch + 1))}},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [sched.state_dict()],
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 1e-2},
        }))
    return out


def _weights_only(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k not in STATE_KEYS}


def test_prune_keeps_weights_and_every_other_version_bit_exact(tmp_path) -> None:
    ckpts = _trajectory(6)
    repo = Repository.init(tmp_path / "r")
    for c in ckpts:
        repo.commit(c, "m")
    before = repo.stats()["stored_bytes"]
    # the catalog's links name the dependents: a rebuilt index must know them too
    import shutil

    repo.catalog.close()
    shutil.rmtree(tmp_path / "r" / "index")
    repo = Repository(tmp_path / "r")
    # keep the state of v2 (a "best") and v6 (latest); prune the others in an
    # order that makes v2's deltas lean on pruned neighbours
    for n in (5, 3, 1, 4):
        v = repo.prune(f"m@v{n}", STATE_KEYS)
        assert v.number == n and v.raw_bytes < sum(
            t.numel() * t.element_size() for t in ckpts[n - 1]["state_dict"].values()
        ) * 3
    for n, c in enumerate(ckpts, start=1):
        got = repo.load(f"m@v{n}")
        want = c if n in (2, 6) else _weights_only(c)
        assert_bit_equal(got, want)
    assert repo.verify() == []
    after = repo.stats()["stored_bytes"]
    assert after < before * 0.75, (before, after)
    # a pruned version's optimizer is gone for good, with a message that says so
    assert "optimizer_states" not in repo.load("m@v3")


def test_prune_is_idempotent_and_new_commits_still_delta(tmp_path) -> None:
    ckpts = _trajectory(4, seed=1)
    repo = Repository.init(tmp_path / "r")
    for c in ckpts[:3]:
        repo.commit(c, "m")
    repo.prune("m@v2", STATE_KEYS)
    v = repo.prune("m@v2", STATE_KEYS)  # nothing left to remove
    assert_bit_equal(repo.load("m@v2"), _weights_only(ckpts[1]))
    repo.commit(ckpts[3], "m")  # parent v3 keeps state; v2 is re-coded with context
    for n, want in ((1, ckpts[0]), (2, _weights_only(ckpts[1])), (3, ckpts[2]), (4, ckpts[3])):
        assert_bit_equal(repo.load(f"m@v{n}"), want)
    assert v.raw_bytes == repo.version("m@v2").raw_bytes
    assert repo.verify() == []


def test_prune_rebuilds_shared_copies(tmp_path) -> None:
    """A later version that stores an identical tensor as a link into the pruned one."""
    ckpts = _trajectory(2, seed=2)
    repo = Repository.init(tmp_path / "r")
    repo.commit(ckpts[0], "m")
    other = {"exp_avg_copy": ckpts[0]["optimizer_states"][0]["state"][0]["exp_avg"].clone()}
    repo.commit(other, "other")  # deduplicated against m@v1's optimizer state
    repo.prune("m@v1", STATE_KEYS)
    assert_bit_equal(repo.load("other@v1"), other)
    assert_bit_equal(repo.load("m@v1"), _weights_only(ckpts[0]))
    assert repo.verify() == []
    assert repo.gc()["objects_removed"] == 0


def test_prune_refuses_what_it_cannot_do(tmp_path) -> None:
    repo = Repository.init(tmp_path / "r")
    repo.commit({"w": torch.ones(3)}, "plain")
    with pytest.raises(ModelHubError, match="has no version"):
        repo.prune("plain@v9", STATE_KEYS)
    repo.commit([torch.ones(2)], "listy")
    with pytest.raises(ModelHubError, match="not a checkpoint dict"):
        repo.prune("listy@v1", STATE_KEYS)
    # entries that are absent: nothing happens
    assert repo.prune("plain@v1", STATE_KEYS).raw_bytes == 12


def test_prune_sees_links_its_index_missed(tmp_path, monkeypatch) -> None:
    """A parent re-encoded against v3 by another writer (remote repositories keep one
    index per machine) or a crash between the manifest switch and the index update:
    prune must still find the parent's deltas into v3 before dropping anything."""
    import os

    ckpts = _trajectory(3, seed=3)
    url = "memory://prune-stale-" + os.urandom(4).hex()
    monkeypatch.setenv("MODELHUB_CACHE", str(tmp_path / "cache-a"))
    a = Repository.init(url)
    a.commit(ckpts[0], "m")
    a.commit(ckpts[1], "m")
    monkeypatch.setenv("MODELHUB_CACHE", str(tmp_path / "cache-b"))
    b = Repository(url)  # indexes v1, v2 as they are now
    a.commit(ckpts[2], "m")  # v2 becomes a reverse delta against v3
    assert b.catalog.dependents(b.resolve("m@v3")) == set()  # b's index is stale
    b.prune("m@v3", STATE_KEYS)
    assert_bit_equal(b.load("m@v2"), ckpts[1])
    assert_bit_equal(b.load("m@v1"), ckpts[0])
    assert_bit_equal(b.load("m@v3"), _weights_only(ckpts[2]))
    assert b.verify() == []
