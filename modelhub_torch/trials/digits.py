"""A built-in data module for ``evaluate`` configs and tests: scikit-learn's bundled
digits (1797 images, 8x8, one channel, pixel values / 16 as float32), split 80/20 with
a seeded permutation. No download: the data ships with scikit-learn.

``data: {class_path: modelhub_torch.trials.digits.DigitsDataModule, init_args:
{batch_size: 32}}``."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from modelhub_torch.errors import ModelHubError


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ModelHubError(
            "DigitsDataModule needs scikit-learn (pip install scikit-learn)"
        ) from None
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # N, 1, 8, 8
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


class DigitsDataModule(pl.LightningDataModule):
    """Digits 8x8 as (N, 1, 8, 8) float32 images and class labels 0..9; training
    batches are shuffled by a generator seeded from ``seed`` and the global seed, so a
    seeded run sees the same batches in every process."""

    def __init__(self, batch_size: int = 64, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ModelHubError(f"DigitsDataModule: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._train: Any = None
        self._val: Any = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        x, y = _digits()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        cut = int(len(x) * 0.8)
        self._train = TensorDataset(x[order[:cut]], y[order[:cut]])
        self._val = TensorDataset(x[order[cut:]], y[order[cut:]])

    def train_dataloader(self) -> DataLoader:
        # drawn from the global generator: seed_everything fixes it per trial
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, generator=g,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val, batch_size=256, num_workers=self.num_workers)


__all__ = ["DigitsDataModule"]
