"""Train a CNN on scikit-learn's digits with Lightning; every checkpoint becomes a version.

The one line that matters is the callback::

    ModelHubCheckpoint(repo, "digits-cnn", monitor="val_acc", mode="max")

Each epoch's checkpoint is committed to the repository (weights compact, trainer state
kept for the latest and the best version), ``digits-cnn@best`` follows ``val_acc``,
the latest and the best resume with ``trainer.fit(ckpt_path="modelhub://<repo>#<ref>")``
and every version loads (``load_from_checkpoint``); older ones are weights-only.

    python examples/train_digits.py [--repo hub] [--epochs 12] [--compare]

``--compare`` also runs Lightning's ModelCheckpoint(save_top_k=-1) in the same fit (into
a temporary directory) and prints the bytes each wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore")

import pytorch_lightning as pl  # noqa: E402
from digits import DigitsCNN, loaders  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from modelhub_torch import Repository  # noqa: E402
from modelhub_torch.callbacks import ModelHubCheckpoint  # noqa: E402


def dir_bytes(root: Path, skip: str = "index") -> int:
    """Bytes under ``root`` (a repository's rebuildable SQLite index left out)."""
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(root)
        if Path(d).name != skip
        for f in files
    )


def train(repo_path: Path, epochs: int = 12, compare: bool | Path = False, seed: int = 0) -> dict:
    """Fit the digits CNN with the callback; returns what the run produced.
    ``compare``: also let ModelCheckpoint(save_top_k=-1) write its files (into this
    directory, or a temporary one when True) to compare bytes."""
    repo = Repository.init(repo_path, exist_ok=True)
    hub = ModelHubCheckpoint(repo, "digits-cnn", monitor="val_acc", mode="max")
    callbacks: list = [hub]
    with tempfile.TemporaryDirectory() as tmp:
        files_dir = Path(compare) if isinstance(compare, Path) else Path(tmp) / "ckpts"
        if compare:  # what users keep today, written by the same fit
            callbacks.append(ModelCheckpoint(dirpath=files_dir, save_top_k=-1, filename="{epoch}"))
        pl.seed_everything(seed, workers=True)
        train_dl, val_dl = loaders(seed)
        trainer = pl.Trainer(
            max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, deterministic=True, callbacks=callbacks,
            default_root_dir=tmp,
        )
        trainer.fit(DigitsCNN(), train_dl, val_dl)
        files_bytes = dir_bytes(files_dir) if compare else None
    repo.wait()  # the last commit's background repack, before its bytes are counted
    return {
        "repo": repo,
        "best": hub.best_model_ref,
        "best_url": hub.best_model_path,
        "last": hub.last_model_ref,
        "val_acc": float(trainer.callback_metrics["val_acc"]),
        "modelcheckpoint_bytes": files_bytes,
        "repo_bytes": dir_bytes(repo_path),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default="hub", help="repository path or fsspec URL (default: ./hub)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--compare", action="store_true", help="also run ModelCheckpoint and compare bytes")
    args = ap.parse_args(argv)
    out = train(Path(args.repo), args.epochs, args.compare)
    print(f"trained {args.epochs} epochs: final val_acc {out['val_acc']:.3f}; best {out['best']}, latest {out['last']}")
    if out["modelcheckpoint_bytes"]:
        mc, ours = out["modelcheckpoint_bytes"], out["repo_bytes"]
        print(f"ModelCheckpoint(save_top_k=-1) wrote {mc / 1024:.0f} KiB; the repository holds {ours / 1024:.0f} KiB"
              f" ({mc / ours:.2f}x smaller)")
    print(f"resume the best version: trainer.fit(module, ckpt_path={out['best_url']!r})"
          " (older versions are weights-only: load them with load_from_checkpoint)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
