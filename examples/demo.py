"""End-to-end demo: train on real data, version every checkpoint compactly, restore.

1. Train a small CNN on scikit-learn's digits with Lightning, keeping every epoch's
   checkpoint the way users do today (ModelCheckpoint(save_top_k=-1)).
2. Import those checkpoints into a modelhub repository with the CLI.
3. Show the repository: lineage, storage saved, one version, a diff of two.
4. Restore a version bit for bit with ``modelhub_torch.load`` and evaluate it.

Run it with ``make demo``; the repository is left in ./demo-hub for you to explore
(``modelhub --repo demo-hub list``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from digits import DigitsCNN, accuracy, loaders  # noqa: E402

import modelhub_torch  # noqa: E402

WORK = ROOT / "demo-hub"
CKPTS = WORK / "lightning-checkpoints"
REPO = WORK / "repo"
EPOCHS = 12


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def modelhub(*args: str) -> None:
    cmd = [sys.executable, "-m", "modelhub_torch.cli", "--repo", str(REPO), *args]
    print("$ modelhub " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    if WORK.exists():
        shutil.rmtree(WORK)
    step(f"1. train a digits CNN for {EPOCHS} epochs, one Lightning checkpoint per epoch")
    pl.seed_everything(0, workers=True)
    train, val = loaders()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=CKPTS, save_top_k=-1, filename="{epoch}")],
    )
    module = DigitsCNN()
    trainer.fit(module, train, val)
    files = sorted(CKPTS.glob("*.ckpt"))
    mc_bytes = sum(f.stat().st_size for f in files)
    print(f"ModelCheckpoint wrote {len(files)} files, {mc_bytes / 1024:.0f} KiB;"
          f" final val_acc {float(trainer.callback_metrics['val_acc']):.3f}")

    step("2. version them in a modelhub repository")
    modelhub("init", str(REPO))
    modelhub("import", str(CKPTS), "--model", "digits-cnn")
    modelhub("tag", "digits-cnn@latest", "final")

    step("3. explore")
    modelhub("list")
    modelhub("stats")
    modelhub("desc", "digits-cnn@v6")
    modelhub("diff", "digits-cnn@v1", "digits-cnn@final")
    repo = modelhub_torch.Repository(REPO)
    stored = repo.stats()["stored_bytes"]
    print(f"\nstorage: ModelCheckpoint {mc_bytes / 1024:.0f} KiB -> modelhub {stored / 1024:.0f} KiB"
          f" ({mc_bytes / stored:.2f}x smaller, every checkpoint kept, optimizer state included)")

    step("4. restore digits-cnn@v6 (epoch 5) bit for bit and evaluate it")
    ckpt = modelhub_torch.load(REPO, "digits-cnn@v6")
    original = torch.load(CKPTS / "epoch=5.ckpt", weights_only=True)
    same = all(
        torch.equal(ckpt["state_dict"][k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8))
        for k, v in original["state_dict"].items()
    )
    restored = DigitsCNN(**ckpt["hyper_parameters"])
    restored.load_state_dict(ckpt["state_dict"])
    print(f"epoch {ckpt['epoch']}: weights bit-identical to the .ckpt file: {same};"
          f" val_acc {accuracy(restored):.3f}")
    modelhub("verify")
    print(f"\nDone. Explore it yourself: .venv/bin/modelhub --repo {REPO.relative_to(ROOT)} list")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
