"""Progressive inference benchmark on scikit-learn's digits (all 1,797 images).

Three models trained here (an MLP 64-128-10, a LeNet-like CNN, a residual CNN with
BatchNorm and GELU), committed to a local repository, then evaluated with
ProgressiveModel for k = 1 and 5: the share of inputs still undecided after 1, 2 and
3 planes (and, as the baseline, with plain interval bounds alone), the bytes read against a full load, and the wall time against a full load
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
from modelhub_torch.progressive.intervals import decide_topk


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


def flippable(model: MLP, weights: dict, x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` whose top-1 some weights inside ``weights``' bounds change.

    For Linear → ReLU → Linear on exact inputs every hidden unit depends on its own row
    of fc1 only, so the smallest ``z_t − z_b`` over the weight box is a sum of per-unit
    minima over the corners: the weights that reach it are built here (the bounds are
    float32 values a completion of the low planes takes) and run in float32. A row this
    flips is undecidable at these planes by any sound bound, not only by ours."""
    lo = {n: w[0].float() for n, w in weights.items()}
    hi = {n: w[1].float() for n, w in weights.items()}
    with torch.no_grad():
        top = model(x).argmax(1)
        out = torch.zeros(len(x), dtype=torch.bool)
        for i in range(len(x)):
            xi, t = x[i], int(top[i])
            pos = xi >= 0
            w1_up = torch.where(pos, hi["fc1.weight"], lo["fc1.weight"])  # largest pre-activation
            w1_dn = torch.where(pos, lo["fc1.weight"], hi["fc1.weight"])
            h_up = F.relu(w1_up @ xi + hi["fc1.bias"])
            h_dn = F.relu(w1_dn @ xi + lo["fc1.bias"])
            for b in range(10):
                if b == t:
                    continue
                d_up = hi["fc2.weight"][t] - lo["fc2.weight"][b]  # W_t high, W_b low
                d_dn = lo["fc2.weight"][t] - hi["fc2.weight"][b]
                corners = torch.stack([d_up * h_up, d_up * h_dn, d_dn * h_up, d_dn * h_dn])
                pick = corners.argmin(0)
                up_h = (pick == 0) | (pick == 2)
                d_hi = pick <= 1
                m = MLP().eval()
                state = {k: v.clone() for k, v in model.state_dict().items()}
                state["fc1.weight"] = torch.where(up_h.unsqueeze(1), w1_up, w1_dn)
                state["fc1.bias"] = torch.where(up_h, hi["fc1.bias"], lo["fc1.bias"])
                state["fc2.weight"][t] = torch.where(d_hi, hi["fc2.weight"][t], lo["fc2.weight"][t])
                state["fc2.weight"][b] = torch.where(d_hi, lo["fc2.weight"][b], hi["fc2.weight"][b])
                state["fc2.bias"][t], state["fc2.bias"][b] = lo["fc2.bias"][t], hi["fc2.bias"][b]
                m.load_state_dict(state)
                if int(m(xi[None]).argmax(1)) != t:
                    out[i] = True
                    break
    return out


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
    header = ["model", "k", "acc", "undecided @1", "@2", "@3", "plain intervals @2", "@3", "bytes: layer-wise", "all at once", "full",
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
                # the baseline: plain interval bounds and the top-k rule alone, per tier
                pm = ProgressiveModel(cls(), repo, f"{name}@latest")
                plain = []
                for tier in (1, 2, 3):
                    for layer in pm.store.tensors:
                        pm.store.fetch(layer, tier)
                    plain_decided, _ = decide_topk(*pm.net.bounds(x, pm._weights(tier)), k)
                    plain.append(float((~plain_decided).float().mean()))
                if name == "mlp" and k == 1:
                    open_rows = (res.planes > 2).nonzero().flatten()
                    pm = ProgressiveModel(cls(), repo, f"{name}@latest")
                    for layer in pm.store.tensors:
                        pm.store.fetch(layer, 2)
                    flips = flippable(model, pm._weights(2), x[open_rows])
                    certificate = (f"mlp, k=1: {len(open_rows)} inputs undecided at 2 planes; for "
                                   f"{int(flips.sum())} of them weights within the 2-plane bounds change the "
                                   f"top-1 (constructed and run in float32): no sound bound decides those")

                def progressive(cls=cls, name=name, k=k) -> None:
                    ProgressiveModel(cls(), repo, f"{name}@latest").predict(x, k=k)

                def ordinary(cls=cls, name=name, k=k) -> None:
                    m = cls().eval()
                    m.load_state_dict(repo.load_state_dict(f"{name}@latest"))
                    with torch.no_grad():
                        m(x).topk(k, dim=1)

                rows.append([
                    name, str(k), f"{acc:.3f}", *(f"{100 * u:.1f}%" for u in undecided),
                    *(f"{100 * u:.1f}%" for u in plain[1:]),
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
    print(certificate)
    print()
    print(f"low planes (2, 3) on a slower fsspec location ({1e3 * SlowFileSystem.LATENCY_S:.0f} ms a request, "
          f"{SlowFileSystem.BYTES_PER_S / 1e6:.0f} MB/s), high planes on local disk")
    print(table(slow_rows, slow_header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
