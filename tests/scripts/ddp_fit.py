"""Run by tests/test_lightning_callback.py in a subprocess: a 2-process CPU DDP fit
(gloo) with ModelHubCheckpoint; each rank writes what it believes the refs are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning_module import TinyMLP, digits_loaders, trainer

from modelhub_torch.callbacks import ModelHubCheckpoint

if __name__ == "__main__":
    root = Path(sys.argv[1])
    torch.manual_seed(0)
    cb = ModelHubCheckpoint(str(root / "hub"), "mlp", monitor="val_loss")
    t = trainer(root, [cb], max_epochs=3, devices=2, strategy="ddp")
    train, val = digits_loaders()
    t.fit(TinyMLP(), train, val)
    out = {"rank": t.global_rank, "best": cb.best_model_ref, "last": cb.last_model_path,
           "k": sorted(cb.best_k_models)}
    (root / f"rank{t.global_rank}.json").write_text(json.dumps(out))
