"""Storage plans on a real repository: storage vs recreation budget, per algorithm.

The repository: three runs of the digits CNN (seeds 0, 1, 2; Lightning checkpoints
with Adam state, one per epoch, 12 epochs each) and two fine-tunes of run 0's last
epoch (lower learning rate, on different halves of the data, 8 snapshots each):
52 versions. Each plan starts from a copy of the repository as the commits left it,
is written by ``archive`` (new objects, switch, gc), then every version is loaded
and timed (measured, not modelled). LAST uses epsilon = alpha - 1. A lossy table
archives run 0's final weights with each lossy scheme: size vs validation accuracy.

    python benchmarks/archive.py [--alphas 1,1.5,2,3,4] [--scheme independent]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchors
import trajectories
from storage import fmt_bytes, repo_bytes, table

from modelhub_torch import Repository
from modelhub_torch.archive import archive
from modelhub_torch.archive.costs import DecodeModel
from modelhub_torch.pas.codec import RepoCodecs

ALGORITHMS = ("mst", "spt", "last", "pas-mt", "pas-pt")


def kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB"


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train, val = trajectories._digits_loaders(seed, batch_size=64)
    xt, yt = train.dataset.tensors
    xv, yv = val.dataset.tensors
    return xt, yt, xv, yv


def fine_tune(ckpt: dict, part: int, snapshots: int) -> list[dict]:
    """Fine-tune a run's last checkpoint on one half of the training data (lr 1e-4)."""
    cls = trajectories._digits_module_class()
    model = cls(lr=1e-4)
    model.load_state_dict(ckpt["state_dict"])
    xt, yt, _, _ = digits_data()
    idx = torch.arange(len(yt))[part::2]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(100 + part)
    out = []
    for epoch in range(snapshots):
        for batch in torch.randperm(len(idx), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx[batch]]), yt[idx[batch]]).backward()
            opt.step()
        out.append({"epoch": epoch, "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                    "optimizer_states": [opt.state_dict()], "hyper_parameters": {"lr": 1e-4}})
    return out


def accuracy(state_dict: dict) -> float:
    model = trajectories._digits_module_class()()
    model.load_state_dict(state_dict)
    _, _, xv, yv = digits_data()
    with torch.no_grad():
        return float((model(xv).argmax(1) == yv).float().mean())


def build(root: Path) -> tuple[list, int]:
    """The 52-version repository; returns the committed objects and ModelCheckpoint bytes."""
    repo = Repository.init(root)
    objs, mc_bytes = [], 0
    runs = []
    for seed in (0, 1, 2):
        ckpts, ckpt_dir = trajectories.digits_trajectory(epochs=12, seed=seed)
        mc_bytes += sum(p.stat().st_size for p in ckpt_dir.glob("*.ckpt"))
        runs.append(ckpts)
        for c in ckpts:
            repo.commit(c, f"digits-s{seed}", metrics={"epoch": c["epoch"]})
            objs.append(c)
    base = repo.resolve("digits-s0@v12")
    for part in (0, 1):
        for k, c in enumerate(fine_tune(runs[0][-1], part, 8)):
            repo.commit(c, f"digits-ft{part}", parent=base if k == 0 else None)
            objs.append(c)
    return objs, mc_bytes


def load_times(repo: Repository, repeats: int = 3) -> list[float]:
    """Per version, the median of ``repeats`` full loads (after one warm-up load)."""
    versions = repo.versions()
    repo.load(versions[0].ref, weights_only=False)
    out = []
    for v in versions:
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            repo.load(v.ref, weights_only=False)
            runs.append(time.perf_counter() - t0)
        out.append(statistics.median(runs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alphas", default="1,1.5,2,3,4")
    ap.add_argument("--scheme", default="independent", choices=("independent", "parallel"))
    args = ap.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]

    work = Path(tempfile.mkdtemp(prefix="mh-archive-bench-"))
    try:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; building the repository ...", flush=True)
        objs, mc_bytes = build(work / "base")
        base = Repository(work / "base")
        committed = repo_bytes(work / "base")
        times0 = load_times(base)
        codecs = RepoCodecs.from_settings(base.settings)
        model = DecodeModel.calibrate(base.objects, codecs.materialize, codecs.delta)
        print(f"{len(base.versions())} versions, {len(objs)} checkpoints; decode model: "
              + ", ".join(f"{k} {v:.3g}" for k, v in model.to_json().items() if v), flush=True)
        rows = [
            ["ModelCheckpoint .ckpt files", "-", kib(mc_bytes), "-", "-", "-", "-", "-"],
            ["torch.save per version", "-", kib(anchors.torch_save_bytes(objs)), "-", "-", "-", "-", "-"],
            ["as committed (reverse deltas)", "-", kib(committed), "-", "-",
             f"{1e3 * statistics.fmean(times0):.1f}", f"{1e3 * max(times0):.1f}", "-"],
        ]
        sizes: dict[str, int] = {}
        for algorithm in ALGORITHMS:
            for alpha in alphas if algorithm not in ("mst", "spt") else [alphas[-1]]:
                root = work / f"{algorithm}-{alpha}"
                shutil.copytree(work / "base", root, ignore=shutil.ignore_patterns("index"))
                repo = Repository(root)
                r = archive(repo.store, alpha=alpha, scheme=args.scheme, algorithm=algorithm, decode_model=model)
                stored = sizes[f"{algorithm} {alpha:g}"] = repo_bytes(root)
                t = load_times(repo)
                assert repo.verify() == [], f"{algorithm} {alpha}: verify failed"
                rows.append([
                    algorithm, "-" if algorithm in ("mst", "spt") else f"{alpha:g}", kib(stored),
                    f"{1e3 * r.recreation_mean_s:.2f}", f"{1e3 * r.recreation_max_s:.2f}",
                    f"{1e3 * statistics.fmean(t):.1f}", f"{1e3 * max(t):.1f}", "yes" if r.feasible else "NO",
                ])
                print(f"  {algorithm} alpha={alpha:g}: {fmt_bytes(stored)} in {r.seconds:.1f} s", flush=True)
                repo.catalog.close()
                shutil.rmtree(root)
        print()
        mst = sizes[f"mst {alphas[-1]:g}"]
        for r in rows:
            r.insert(3, f"{100 * (int(r[2].split()[0].replace(',', '')) * 1024 / mst - 1):+.1f}%")
        print(f"Storage plans, {args.scheme} scheme, budget = alpha x each snapshot's SPT recreation")
        print(table(rows, ["plan", "alpha", "stored", "vs MST", "model mean ms", "model max ms", "load mean ms",
                           "load max ms", "feasible"]))

        print()
        final = objs[11]["state_dict"]
        acc0 = accuracy(final)
        raw = sum(t.numel() * t.element_size() for t in final.values())
        lrows = []
        for scheme in (None, "fp16", "bf16", "fixed:8", "fixed:6", "quant:8", "quant:6", "quant:4", "quant:3"):
            root = work / f"lossy-{scheme}"
            repo = Repository.init(root)
            v = repo.commit(final, "m")
            if scheme:
                archive(repo.store, alpha=1.0, lossy={v.ref: scheme}, decode_model=model)
            size = repo.version(v.ref).stored_bytes
            acc = accuracy(repo.load_state_dict(v.ref))
            lrows.append([scheme or "lossless", fmt_bytes(size), f"{100 * size / raw:.1f}%", f"{acc:.4f}",
                          f"{100 * (acc - acc0):+.2f}"])
            repo.catalog.close()
        print(f"Lossy archival of digits-s0@v12's weights ({fmt_bytes(raw)} raw; validation accuracy {acc0:.4f})")
        print(table(lrows, ["scheme", "stored", "of raw", "val acc", "change (points)"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
