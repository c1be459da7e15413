"""Commit streams: it never holds much more than two extra copies of the largest tensor."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import torch

from modelhub_torch import Repository

N = 16 << 20  # 16 Mi float32 = 64 MiB


def _peak_during(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_commit_memory_is_bounded_by_the_largest_tensor(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, generator=g) * 0.05
    small = {f"b{i}": torch.randn(1000, generator=g) for i in range(20)}
    size = w.numel() * 4
    repo.commit({"w": w, **small}, "m")  # warm the kernels outside the measurement
    w2 = w + torch.randn(N, generator=g) * 1e-4
    # the second commit also decodes the parent and codes it as a reverse delta
    peak = _peak_during(lambda: repo.commit({"w": w2, **small}, "m"))
    assert peak < 2.5 * size, f"commit peaked at {peak / size:.2f}x the largest tensor"
    got = repo.load("m@v1")["w"]
    assert torch.equal(got.view(torch.int32), w.view(torch.int32))


def test_repack_memory_is_bounded(tmp_path: Path) -> None:
    """Repack re-codes a delta with its neighbour as context (decoded base + context +
    coded chunks at most): still well under three copies of the largest tensor."""
    repo = Repository.init(tmp_path / "repo", max_load_factor=None, repack="commit")
    g = torch.Generator().manual_seed(1)
    w = torch.randn(N, generator=g) * 0.05
    # Adam-like: each weight keeps its own step size, so the neighbouring delta is the
    # context that wins and the re-coded delta is kept
    scale = torch.exp(torch.empty(N).uniform_(-14, -7, generator=g))
    steps = [w]
    for _ in range(3):
        steps.append(steps[-1] + torch.randn(N, generator=g) * scale)
    for s in steps:
        repo.commit({"w": s}, "m")
    size = w.numel() * 4
    peak = _peak_during(repo.repack)
    assert peak < 2.5 * size, f"repack peaked at {peak / size:.2f}x the largest tensor"
    recs = repo.manifest(repo.resolve("m@v2")).tensors
    assert recs[0]["data"].get("context") == {"version": repo.resolve("m@v4"), "index": 0}
    for i, s in enumerate(steps, start=1):
        assert torch.equal(repo.load(f"m@v{i}")["w"].view(torch.int32), s.view(torch.int32))
