"""Training benchmark: ModelCheckpoint(save_top_k=-1) vs ModelHubCheckpoint, same run.

The digits CNN of examples/digits.py trained with Lightning for 12 epochs, one
checkpoint per epoch, under each checkpointing setup in turn (same seed, same data):

    python benchmarks/training.py [--epochs 12] [--repeats 3]

Columns: bytes on disk after the fit (checkpoint files, or the repository without its
rebuildable SQLite index), wall time of ``fit``, and the time each save keeps the
training loop waiting (the callback's save call, median over the saves; for
ModelCheckpoint that is Lightning's own dump + torch.save + write). "none" is the same
fit without checkpointing, for reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore")

import pytorch_lightning as pl  # noqa: E402
from digits import DigitsCNN, loaders  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from storage import table  # noqa: E402

from modelhub_torch import Repository  # noqa: E402
from modelhub_torch.callbacks import ModelHubCheckpoint  # noqa: E402


def timed(cls: type) -> type:
    """``cls`` whose every save call is timed (what the training loop waits for)."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
            t0 = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            self.save_times = [*getattr(self, "save_times", []), time.perf_counter() - t0]

    Timed.__name__ = cls.__name__
    return Timed


def dir_bytes(root: Path, skip: str = "index") -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        if Path(dirpath).name == skip:
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def run(setup: str, workdir: Path, epochs: int) -> dict[str, Any]:
    """One fit under ``setup``; returns bytes, fit seconds and per-save seconds."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    callbacks: list[Any] = []
    target = workdir / "out"
    if setup == "ModelCheckpoint":
        cb = timed(ModelCheckpoint)(dirpath=target, save_top_k=-1, every_n_epochs=1)
        callbacks.append(cb)
    elif setup != "none":
        _, mode, state = setup.split()
        cb = timed(ModelHubCheckpoint)(
            Repository.init(target), "digits", async_save=(mode == "async"), trainer_state=state
        )
        callbacks.append(cb)
    pl.seed_everything(0, workers=True)
    train, val = loaders()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=setup != "none",
        default_root_dir=str(workdir), callbacks=callbacks,
    )
    t0 = time.perf_counter()
    trainer.fit(DigitsCNN(), train, val)
    fit_s = time.perf_counter() - t0
    if setup not in ("none", "ModelCheckpoint"):
        Repository(target).wait()  # the last save's background repack, before bytes are counted
    saves = getattr(callbacks[0], "save_times", []) if callbacks else []
    return {
        "bytes": dir_bytes(target) if target.exists() else 0,
        "fit_s": fit_s,
        "save_s": statistics.median(saves) if saves else 0.0,
        "saves": len(saves),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3, help="fits per setup (medians are shown)")
    args = ap.parse_args(argv)
    setups = ["none", "ModelCheckpoint", "ModelHub sync latest", "ModelHub sync all",
              "ModelHub async latest", "ModelHub async all"]
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as d:
        run("ModelCheckpoint", Path(d) / "warmup", 1)  # imports, numba compilation
        run("ModelHub sync latest", Path(d) / "warmup", 2)
        for _ in range(args.repeats):  # interleaved, so drift hits every setup alike
            for s in setups:
                results[s].append(run(s, Path(d) / "run", args.epochs))

    def med(s: str, key: str) -> float:
        return statistics.median(r[key] for r in results[s])

    mc_bytes, mc_save = med("ModelCheckpoint", "bytes"), med("ModelCheckpoint", "save_s")
    header = ["setup", "saves", "bytes on disk", "vs ModelCheckpoint", "fit s", "wait per save ms", "vs ModelCheckpoint save"]
    rows = []
    for s in setups:
        b, save = med(s, "bytes"), med(s, "save_s")
        rows.append([
            s, str(results[s][0]["saves"]), f"{b / 1e6:.3f} MB" if b else "-",
            f"1/{mc_bytes / b:.2f}" if b else "-", f"{med(s, 'fit_s'):.2f}",
            f"{save * 1e3:.1f}" if save else "-", f"{save / mc_save:.2f}x" if save else "-",
        ])
    print(f"digits CNN, {args.epochs} epochs, one checkpoint per epoch; medians of {args.repeats} fits; {os.cpu_count()} CPUs")
    print(table(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
