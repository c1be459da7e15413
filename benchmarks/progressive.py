"""Progressive inference benchmark on scikit-learn's digits (all 1,797 images).

Three models trained here (an MLP 64-128-10, a LeNet-like CNN, a residual CNN with
BatchNorm and GELU), committed to a local repository, then evaluated with
ProgressiveModel for k = 1 and 5: the share of inputs still undecided after 1, 2 and
3 planes, the bytes read against a full load, and the wall time against a full load
plus the ordinary forward. Every answer is checked against the ordinary forward.
The wall times are taken twice: with the whole store on local disk, and with the two
low-order planes archived to a slower fsspec location (``archive --cold``; a local
folder behind a filesystem that adds 20 ms per request and reads at 50 MB/s, like a
remote object store). There a 16-input batch is timed too: small batches are mostly
decided by the high planes, so they never touch the slow tier.

    python benchmarks/progressive.py [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storage import median_time, table

from modelhub_torch import Repository
from modelhub_torch.progressive import ProgressiveModel


class SlowFileSystem(LocalFileSystem):
    """A local folder that answers like a remote store: fixed latency per request,
    limited bandwidth (``slowfile:///path``)."""

    protocol = ("slowfile",)
    LATENCY_S = 0.020
    BYTES_PER_S = 50e6

    @classmethod
    def _strip_protocol(cls, path):  # type: ignore[no-untyped-def]
        path = str(path)
        if path.startswith("slowfile://"):
            path = path[len("slowfile://"):]
        return super()._strip_protocol(path)

    def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        data = super().cat_file(path, start=start, end=end, **kwargs)
        time.sleep(self.LATENCY_S + len(data) / self.BYTES_PER_S)
        return data


fsspec.register_implementation("slowfile", SlowFileSystem, clobber=True)


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
    slow_header = ["model", "k", "batch", "undecided @2", "bytes read", "progressive ms", "load+predict ms"]
    rows, slow_rows = [], []
    with tempfile.TemporaryDirectory() as d:
        repo = Repository.init(Path(d) / "hub")
        slow = Repository.init(Path(d) / "slow-hub")
        for name, cls in (("mlp", MLP), ("lenet", LeNet), ("resnet-bn", ResidualBN)):
            model = train(cls(), x, y, args.steps)
            repo.commit(model, name)
            slow.commit(model, name)
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
        # the slow tier: the low planes of every version go to the slow location
        slow.archive(1e6, cold=f"slowfile://{d}/cold", cold_price=0.0)
        for name, cls in (("mlp", MLP), ("lenet", LeNet), ("resnet-bn", ResidualBN)):
            m = slow.manifest(slow.resolve(f"{name}@latest"))
            assert all(r["data"].get("cold_from") == 2 for r in m.tensors if r["dtype"] == "float32"
                       and r["nbytes"] >= 64), f"{name}: low planes not all in the slow tier"
            model = cls().eval()
            model.load_state_dict(slow.load_state_dict(f"{name}@latest"))
            for k in (1, 5):
                for batch in (x[:16], x):
                    res = ProgressiveModel(cls(), slow, f"{name}@latest").predict(batch, k=k)
                    with torch.no_grad():
                        assert torch.equal(res.topk, model(batch).topk(k, dim=1).indices), (name, k)

                    def progressive(cls=cls, name=name, k=k, batch=batch) -> None:
                        ProgressiveModel(cls(), slow, f"{name}@latest").predict(batch, k=k)

                    def ordinary(cls=cls, name=name, k=k, batch=batch) -> None:
                        m = cls().eval()
                        m.load_state_dict(slow.load_state_dict(f"{name}@latest"))
                        with torch.no_grad():
                            m(batch).topk(k, dim=1)

                    slow_rows.append([
                        name, str(k), str(len(batch)), f"{100 * float((res.planes > 2).float().mean()):.1f}%",
                        f"{100 * res.bytes_read / res.bytes_full:.0f}%",
                        f"{median_time(progressive, 3) * 1e3:.0f}", f"{median_time(ordinary, 3) * 1e3:.0f}",
                    ])
    print(f"digits, {len(x)} inputs, {os.cpu_count()} CPUs; every answer equals the ordinary forward")
    print(table(rows, header))
    print()
    print(f"low planes (2, 3) on a slower fsspec location ({1e3 * SlowFileSystem.LATENCY_S:.0f} ms a request, "
          f"{SlowFileSystem.BYTES_PER_S / 1e6:.0f} MB/s), high planes on local disk")
    print(table(slow_rows, slow_header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
