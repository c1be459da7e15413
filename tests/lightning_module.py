"""A tiny LightningModule on scikit-learn's digits, shared by the Lightning tests and
the DDP script (real data, a few hundred steps a second on CPU)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def digits_loaders(batch_size: int = 64, n: int = 640) -> tuple[DataLoader, DataLoader]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[: n + 256] / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target[: n + 256], dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(x[n:], y[n:]), batch_size=256)
    return train, val


class TinyMLP(pl.LightningModule):
    """Adam + StepLR, logs train_loss, val_loss, val_acc; can raise at a chosen step."""

    def __init__(self, hidden: int = 32, lr: float = 5e-3, fail_at_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _):
        if self.global_step == self.hparams.fail_at_step:
            raise RuntimeError(f"planned failure at step {self.global_step}")
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)]


def trainer(root, callbacks, max_epochs: int = 3, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=kw.pop("devices", 1),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
        **kw,
    )
