"""Regenerate tests/golden/features-v1: a repository whose stored data uses every frame
kind and format feature (only when FORMAT.md's format changes; see tests/test_format.py).

It holds, by construction (the test asserts each occurs):
- ``traj``: a fine-tune trajectory (per-weight step sizes that drift slowly, as Adam's
  do): whole tensors in exponent-first layout (``rans8``, ``raw``, ``zstd`` frames),
  reverse ``sub`` deltas with an ``exponent_context``, a grandparent re-coded with its
  neighbour delta as ``context`` (``rans_ctx`` frames), and ``same`` records;
- ``old``: frames written as before rans8 (four-state ``rans0``);
- ``net``: archived with a cold tier (``cold_packs``, ``cold_from``) and ``net@v1``
  stored lossily (``quant:4``);
- ``ft``: a checkpoint whose optimizer state was pruned (``dropped`` records).

Tensor values come from a fixed seed; object and version ids do not (packs start with
random bytes, ids with a random part), so every run writes other files. ``expected.json``
holds the BLAKE3 of every tensor each version loads to — for ``net@v1`` the lossy
values the archive chose — which the test compares bit for bit. The repository's
``cold`` setting is the relative path ``../cold``: the test points it at its copy.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TARGET = HERE / "features-v1"
COLD_SETTING = "../cold"
SEED = 20240614


def _f32(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return _top16((rng.standard_normal(n) * scale).astype(np.float32))


def _top16(x: np.ndarray) -> np.ndarray:
    """float32 values whose low 16 bits are zero (bfloat16 precision): their two low
    planes code to a few bytes, which keeps the fixture small."""
    return (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def trajectory(steps: int = 3) -> list[dict[str, Any]]:
    """Checkpoints of a small fine-tune: 16384 float32 weights (the smallest tensor
    context coding runs on) whose steps scale with their size and a per-weight rate
    that drifts slowly, a float16 and a bfloat16 tensor, an int64 counter and a frozen
    bool mask (stored once, then as ``same`` records)."""
    rng = np.random.default_rng(SEED)
    w = _f32(rng, 16384, 0.05)
    rate = np.exp(rng.standard_normal(w.size) * 1.5) * 1e-2
    h = _f32(rng, 1024, 0.1).astype(np.float16)
    mask = torch.from_numpy(rng.random(300) < 0.5)
    out = []
    for i in range(steps):
        w = _top16(w + np.abs(w) * rate * rng.standard_normal(w.size))
        rate = rate * np.exp(rng.standard_normal(w.size) * 0.05)
        h = (h + (rng.standard_normal(h.size) * 1e-3).astype(np.float16)).astype(np.float16)
        out.append({
            "state_dict": {
                "w": torch.from_numpy(w.copy()).reshape(128, 128),
                "h": torch.from_numpy(h.copy()),
                "bf": torch.from_numpy(_f32(rng, 256, 1.0)).to(torch.bfloat16),
                "mask": mask.clone(),
            },
            "global_step": torch.tensor(100 * (i + 1), dtype=torch.int64),
        })
    return out


def network(versions: int = 2) -> list[dict[str, Any]]:
    """Checkpoints with trainer state (to prune): weights, a bias and Adam moments."""
    rng = np.random.default_rng(SEED + 1)
    w = _f32(rng, 4096, 0.02)
    out = []
    for i in range(versions):
        w = _top16(w + _f32(rng, w.size, 1e-3))
        out.append({
            "state_dict": {"fc.weight": torch.from_numpy(w.copy()).reshape(32, 128),
                           "fc.bias": torch.from_numpy(_f32(rng, 32, 0.1))},
            "optimizer": {"exp_avg": torch.from_numpy(_f32(rng, 4096, 1e-3)),
                          "exp_avg_sq": torch.from_numpy(np.abs(_f32(rng, 4096, 1e-6)))},
            "epoch": i,
        })
    return out


def old_frames() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(SEED + 2)
    return {"w": torch.from_numpy(_f32(rng, 16384, 0.02)), "b": torch.from_numpy(_f32(rng, 64, 1.0))}


def tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (loaded) checkpoint by its path, e.g. ``state_dict/w``."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out: dict[str, torch.Tensor] = {}
        for k, v in obj.items():
            out.update(tensors(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {}


def digest(t: torch.Tensor) -> str:
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return blake3.blake3(raw).hexdigest()


def _commit_rans0(repo: Any, obj: Any, model: str) -> None:
    """Commit as a version written before rans8 did: four-state rANS frames."""
    from modelhub_torch.kernels import rans
    from modelhub_torch.pas import entropy

    def four_state(arr: np.ndarray, counts: np.ndarray) -> bytes:
        out = np.empty(rans.HEADER_BYTES + 2 * arr.shape[0] + 64, np.uint8)
        return out[: rans.rans_encode(arr, rans.normalize_freqs(counts), out, rans.STATES)].tobytes()

    saved = entropy._rans_encode, entropy.RANS8
    entropy._rans_encode, entropy.RANS8 = four_state, entropy.RANS
    try:
        repo.commit(obj, model, message="frames of a version before rans8")
    finally:
        entropy._rans_encode, entropy.RANS8 = saved


def main() -> int:
    from make_golden import tidy

    from modelhub_torch import Repository

    if TARGET.exists():
        shutil.rmtree(TARGET)
    root, cold = TARGET / "repo", TARGET / "cold"
    repo = Repository.init(root)
    inputs: dict[str, Any] = {}
    for i, ckpt in enumerate(network()):
        inputs[repo.commit(ckpt, "net", message=f"net {i + 1}").ref] = ckpt
    repo.archive(alpha=2.0, lossy={"net@v1": "quant:4"}, cold=str(cold), hot_planes=2)
    for i, ckpt in enumerate(trajectory()):
        inputs[repo.commit(ckpt, "traj", metrics={"loss": 1.0 / (i + 1)}, message=f"step {i + 1}").ref] = ckpt
    _commit_rans0(repo, old_frames(), "old")
    inputs["old@v1"] = old_frames()
    pruned = network(versions=3)[-1]
    inputs[repo.commit(pruned, "ft", message="trainer state pruned").ref] = pruned
    repo.prune("ft@v1", ["optimizer"])
    del pruned["optimizer"]

    expected = {}
    for ref, given in inputs.items():
        got = tensors(repo.load(ref))
        want = tensors(given)
        assert sorted(got) == sorted(want), (ref, sorted(got), sorted(want))
        if ref != "net@v1":  # the lossy version loads as its rounded values
            assert all(digest(got[p]) == digest(want[p]) for p in want), ref
        expected[ref] = {p: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                             "blake3": digest(t)} for p, t in sorted(got.items())}
    assert repo.verify() == [], repo.verify()
    (TARGET / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")

    settings = json.loads((root / "modelhub.json").read_text())
    settings["cold"] = COLD_SETTING
    (root / "modelhub.json").write_text(json.dumps(settings, indent=2))
    tidy(root)
    shutil.rmtree(cold / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
