"""Progressive inference benchmark on scikit-learn's digits (all 1,797 images).

Three models trained here (an MLP 64-128-10, a LeNet-like CNN, a residual CNN with
BatchNorm and GELU), committed to a local repository, then evaluated with
ProgressiveModel for k = 1 and 5: the share of inputs still undecided after 1, 2 and
3 planes, the bytes read against a full load, and the wall time against a full load
plus the ordinary forward. Every answer is checked against the ordinary forward.

    python benchmarks/progressive.py [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storage import median_time, table

from modelhub_torch import Repository
from modelhub_torch.progressive import ProgressiveModel


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 2 * 2, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class ResidualBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(self.stem(x.view(-1, 1, 8, 8))))
        x = F.gelu(x + self.bn2(self.conv(x)))
        return self.fc(self.pool(x).flatten(1))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


def train(module: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(module.parameters(), lr=5e-3)
    module.train()
    for i in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        F.cross_entropy(module(x[idx]), y[idx]).backward()
        opt.step()
    return module.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps per model")
    args = ap.parse_args(argv)
    x, y = digits()
    header = ["model", "k", "acc", "undecided @1", "@2", "@3", "bytes: layer-wise", "all at once", "full",
              "progressive ms", "load+predict ms"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        repo = Repository.init(Path(d) / "hub")
        for name, cls in (("mlp", MLP), ("lenet", LeNet), ("resnet-bn", ResidualBN)):
            model = train(cls(), x, y, args.steps)
            repo.commit(model, name)
            acc = float((model(x).argmax(1) == y).float().mean())
            for k in (1, 5):
                res = ProgressiveModel(cls(), repo, f"{name}@latest").predict(x, k=k)
                assert torch.equal(res.topk, model(x).topk(k, dim=1).indices), (name, k)
                flat = ProgressiveModel(cls(), repo, f"{name}@latest").predict(x, k=k, strategy="all")
                assert torch.equal(flat.topk, res.topk), (name, k)
                n = len(x)
                undecided = [float((res.planes > t).sum()) / n for t in (1, 2, 3)]

                def progressive(cls=cls, name=name, k=k) -> None:
                    ProgressiveModel(cls(), repo, f"{name}@latest").predict(x, k=k)

                def ordinary(cls=cls, name=name, k=k) -> None:
                    m = cls().eval()
                    m.load_state_dict(repo.load_state_dict(f"{name}@latest"))
                    with torch.no_grad():
                        m(x).topk(k, dim=1)

                rows.append([
                    name, str(k), f"{acc:.3f}", *(f"{100 * u:.1f}%" for u in undecided),
                    f"{res.bytes_read:,} ({100 * res.bytes_read / res.bytes_full:.0f}%)",
                    f"{flat.bytes_read:,} ({100 * flat.bytes_read / flat.bytes_full:.0f}%)", f"{res.bytes_full:,}",
                    f"{median_time(progressive, 3) * 1e3:.0f}", f"{median_time(ordinary, 3) * 1e3:.1f}",
                ])
    print(f"digits, {len(x)} inputs, {os.cpu_count()} CPUs; every answer equals the ordinary forward")
    print(table(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
