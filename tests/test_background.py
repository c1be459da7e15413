"""Background repacks: commits return before their parent is re-encoded, the process
never observes a half-done layout, an exiting interpreter finishes the work, and a
process killed mid-repack loses nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from modelhub_torch import Repository

SCRIPT = Path(__file__).parent / "scripts" / "repack_killed.py"


def _steps(n: int, size: int = 100_000) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(size, generator=g)
    out = []
    for _ in range(n):
        w = w + torch.randn(size, generator=g) * 1e-3
        out.append({"w": w.clone()})
    return out


def _is_delta(repo: Repository, ref: str) -> bool:
    rec = repo.manifest(repo.resolve(ref)).tensors[0]
    return rec["data"]["kind"] == "planes" and rec["data"].get("base") is not None


def _layout(repo: Repository) -> list[bool]:
    return [_is_delta(repo, v.ref) for v in repo.versions("m")]


def test_background_gives_the_layout_a_commit_time_repack_gives(tmp_path) -> None:
    steps = _steps(6)
    bg = Repository.init(tmp_path / "bg")  # the default: repack in the background
    sync = Repository.init(tmp_path / "sync", repack="commit")
    assert bg.settings["repack"] == "background"
    for sd in steps:
        bg.commit(sd, "m")
        sync.commit(sd, "m")
        assert _layout(bg) == _layout(sync)  # observed right after each commit
    assert _layout(bg)[-1] is False and any(_layout(bg))
    for v, sd in zip(bg.versions("m"), steps):
        assert torch.equal(bg.load(v.ref)["w"], sd["w"])
    assert bg.verify() == [] and bg.gc()["objects_removed"] == 0


def test_the_commit_returns_before_the_parent_is_reencoded(tmp_path, monkeypatch) -> None:
    from modelhub_torch import repack

    repo = Repository.init(tmp_path / "r")
    steps = _steps(2)
    repo.commit(steps[0], "m")
    gate, started = threading.Event(), threading.Event()
    real = repack._reverse_delta

    def held(*args, **kwargs):
        started.set()
        assert gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(repack, "_reverse_delta", held)
    v2 = repo.commit(steps[1], "m")  # returns while the repack is held
    assert v2.ref == "m@v2" and started.wait(30)
    # the store itself, without waiting (as another process sees it): v1 still whole
    store = repo._store
    assert store.manifest(store.refs.version_at("m", 1)).tensors[0]["data"].get("base") is None
    gate.set()
    assert _is_delta(repo, "m@v1")  # any call waits for the repack first


def test_a_thread_holding_the_lock_does_not_wait_for_queued_repacks(tmp_path) -> None:
    repo = Repository.init(tmp_path / "r")
    for sd in _steps(3):
        repo.commit(sd, "m")
    done = threading.Event()

    def inside_lock() -> None:
        with repo.store.lock:
            repo.commit(_steps(4)[-1], "m")  # schedules a repack, which needs this lock
            assert [v.number for v in repo.versions("m")] == [1, 2, 3, 4]  # no wait: no deadlock
        done.set()

    t = threading.Thread(target=inside_lock, daemon=True)
    t.start()
    t.join(60)
    assert done.is_set()
    assert [v.number for v in repo.versions("m")] == [1, 2, 3, 4] and _is_delta(repo, "m@v3")


def test_an_exiting_interpreter_finishes_the_repack(tmp_path) -> None:
    root = tmp_path / "repo"
    Repository.init(root)
    code = (
        "import torch, sys\n"
        "from modelhub_torch import Repository\n"
        f"repo = Repository({str(root)!r})\n"
        "g = torch.Generator().manual_seed(0)\n"
        "w = torch.randn(300_000, generator=g)\n"
        "repo.commit({'w': w}, 'm')\n"
        "repo.commit({'w': w + 1e-3}, 'm')\n"
    )  # no wait(): the interpreter exits right after the second commit returns
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert _is_delta(Repository(root), "m@v1")


@pytest.mark.parametrize(("step", "k"), [("pack", 0), ("pack", 2), ("switch", 0), ("switch", 1)])
def test_a_process_killed_mid_repack_loses_nothing(tmp_path, step: str, k: int) -> None:
    root = tmp_path / "repo"
    Repository.init(root, max_load_factor=None)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(root), "4", step, str(k)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    committed = proc.stdout.split()
    assert committed[:2] == ["m@v1", "m@v2"]  # killed in the repack after some commit
    repo = Repository(root)
    for ref in committed:
        want = torch.load(tmp_path / f"v{ref.split('@v')[1]}.pt", weights_only=True)
        assert torch.equal(repo.load(ref)["w"], want)
    problems = repo.verify()
    assert all(p.kind == "temp-files" for p in problems), problems
    repo.gc(repack=True)  # finishes the job and sweeps what the killed repack wrote
    assert repo.verify() == []
    layout = _layout(repo)
    assert layout[:-1] == [True] * (len(committed) - 1) and not layout[-1]
    for ref in committed:
        want = torch.load(tmp_path / f"v{ref.split('@v')[1]}.pt", weights_only=True)
        assert torch.equal(repo.load(ref)["w"], want)
