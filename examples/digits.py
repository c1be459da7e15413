"""A small CNN on scikit-learn's bundled digits (8x8 images, 10 classes), for Lightning.

Shared by the examples and tests: real data that ships with scikit-learn, so nothing
is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def digits_tensors(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train/validation split (80/20, stratified by a seeded shuffle) of the digits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(0.8 * len(y))
    tr, va = order[:cut], order[cut:]
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])


class DigitsCNN(pl.LightningModule):
    def __init__(self, lr: float = 1e-3, channels: int = 16):
        super().__init__()
        self.save_hyperparameters()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders(seed: int = 0, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    train, val = digits_tensors(seed)
    g = torch.Generator().manual_seed(seed)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, generator=g),
        DataLoader(val, batch_size=256),
    )


def accuracy(module: nn.Module, seed: int = 0) -> float:
    _, val = digits_tensors(seed)
    module.eval()
    with torch.no_grad():
        x, y = val.tensors
        return float((module(x).argmax(1) == y).float().mean())
