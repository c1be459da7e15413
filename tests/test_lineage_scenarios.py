"""Random histories: every storage decision the commit policy can take, every version
checked bit-exact after every commit.

Each step picks one of: continue a model (small update), branch from an older version
of the same model (its parent is re-encoded again), fine-tune into another model
(forward deltas), change an architecture (a tensor changes shape at the same path),
repeat a version exactly (same links), add or drop a tensor.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import assert_bit_equal

from modelhub_torch import Repository


def _start(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "emb": torch.randn(50, 8, generator=g),
        "w": torch.randn(8, 8, generator=g),
        "b": torch.zeros(8),
        "steps": torch.tensor(0),
    }


def _update(sd: dict[str, torch.Tensor], g: torch.Generator, rng: random.Random) -> dict[str, torch.Tensor]:
    out = {}
    for k, t in sd.items():
        if t.is_floating_point():
            out[k] = t + torch.randn(t.shape, generator=g) * rng.choice([1e-5, 1e-3, 0.1])
        else:
            out[k] = t + 1
    action = rng.random()
    if action < 0.1 and "w" in out:
        out["w"] = torch.randn(out["w"].shape[0] + 1, 8, generator=g)  # architecture change
    elif action < 0.2:
        out[f"extra{rng.randrange(3)}"] = torch.randn(5, generator=g)
    elif action < 0.25 and len(out) > 2:
        out.pop(rng.choice([k for k in out if k != "emb"]))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_stay_bit_exact(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    repo = Repository.init(tmp_path / "repo", keyframe_interval=4)
    expected: dict[str, dict[str, torch.Tensor]] = {}
    v = repo.commit(_start(g), "base")
    expected[v.ref] = _start(torch.Generator().manual_seed(seed))
    for _ in range(30):
        refs = sorted(expected)
        step = rng.random()
        if step < 0.55:  # continue the latest of a model
            model = rng.choice(sorted({r.split("@")[0] for r in refs}))
            parent = repo.version(f"{model}@latest").ref
            sd = _update(expected[parent], g, rng)
            v = repo.commit(sd, model)
        elif step < 0.7:  # branch from an older version of the same model
            parent = rng.choice(refs)
            sd = _update(expected[parent], g, rng)
            v = repo.commit(sd, parent.split("@")[0], parent=parent)
        elif step < 0.85:  # fine-tune into another model
            parent = rng.choice(refs)
            sd = _update(expected[parent], g, rng)
            v = repo.commit(sd, f"ft{rng.randrange(2)}", parent=parent)
        else:  # the same weights again
            parent = rng.choice(refs)
            sd = {k: t.clone() for k, t in expected[parent].items()}
            v = repo.commit(sd, parent.split("@")[0], parent=parent)
        expected[v.ref] = sd
        fresh = Repository(repo.url)
        for ref, want in expected.items():
            assert_bit_equal(fresh.load(ref), want)
    assert repo.verify() == []
    assert repo.gc()["objects_removed"] == 0
    # tiny tensors: manifests dominate the total, but coded tensor data never expands
    stats = repo.stats()
    assert sum(stats["planes"].values()) <= stats["raw_bytes"]
