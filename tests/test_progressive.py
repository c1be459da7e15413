"""Progressive inference through the store: plane-wise reads, byte accounting, tiers,
and answers equal to the full-precision forward on real digits data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modelhub_torch import Repository
from modelhub_torch.cli import main
from modelhub_torch.progressive import ProgressiveModel, progressive_predict
from modelhub_torch.progressive.planes import PlaneReader
from modelhub_torch.progressive.weights import known_mask


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc(x.flatten(1))


def trained(module: nn.Module, steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    x, y = digits()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for i in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        F.cross_entropy(module(x[idx]), y[idx]).backward()
        opt.step()
    return module.eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    torch.manual_seed(0)
    repo = Repository.init(tmp_path_factory.mktemp("prog") / "hub")
    mlp, cnn = trained(MLP()), trained(SmallCNN())
    repo.commit(mlp, "mlp", metrics={"acc": 1.0})
    repo.commit(cnn, "cnn")
    return repo, mlp, cnn


def test_plane_reads_are_incremental_and_counted(hub) -> None:
    repo, mlp, _ = hub
    r = PlaneReader(repo, "mlp@latest")
    m = repo.manifest(repo.resolve("mlp@latest"))
    frames = {t["path"].removeprefix(""): t for t in m.tensors}
    per_plane = [sum(int(c["frames"][p][1]) for t in frames.values() for c in t["data"]["chunks"]) for p in range(4)]
    assert r.bytes_full == sum(per_plane)
    for k in range(1, 5):
        for name in r.tensors:
            r.fetch(name, k)
            r.fetch(name, k)  # already known: nothing read again
        assert r.bytes_read == sum(per_plane[:k])
        for name, t in r.tensors.items():
            true = mlp.state_dict()[name].contiguous().view(-1).view(torch.int32).numpy().view(np.uint32)
            mask = np.uint32(known_mask("float32", k, t.layout))
            assert t.layout == "exp-first"
            assert np.array_equal(r.bits(name) & mask, true & mask)
    assert all(torch.equal(r.tensor(n), mlp.state_dict()[n]) for n in r.tensors)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("k", [1, 5])
def test_answers_equal_the_full_forward(hub, which: str, k: int) -> None:
    repo, mlp, cnn = hub
    module = {"mlp": mlp, "cnn": cnn}[which]
    x, _ = digits()
    want = module(x).topk(k, dim=1).indices
    res = ProgressiveModel(type(module)(), repo, f"{which}@v1").predict(x, k=k)
    assert torch.equal(res.topk, want)
    assert set(res.planes.tolist()) <= {1, 2, 3, 4} and res.bytes_read <= res.bytes_full
    shares = res.share_by_tier()
    assert abs(sum(shares.values()) - 1) < 1e-9


def test_low_planes_are_read_only_when_needed(hub) -> None:
    repo, mlp, _ = hub
    x, _ = digits()
    tiers = ProgressiveModel(MLP(), repo, "mlp@v1").predict(x, k=1).planes
    easy = int((tiers == 2).nonzero()[0])  # an input two planes decide
    pm = ProgressiveModel(MLP(), repo, "mlp@v1", start_planes=2)
    after_two = pm.bytes_read
    res = pm.predict(x[easy : easy + 1], k=1)
    assert int(res.planes[0]) == 2 and res.bytes_read == after_two < res.bytes_full  # nothing more read
    hard = tiers > 2
    if bool(hard.any()):  # undecided inputs make the next planes come in
        assert pm.predict(x[hard], k=1).bytes_read > after_two
    one_shot = progressive_predict(MLP(), repo, "mlp@v1", x[:50], k=1)
    assert torch.equal(one_shot.topk, mlp(x[:50]).topk(1, dim=1).indices)


def test_unsupported_and_mismatched_modules_are_refused(hub) -> None:
    from modelhub_torch import ModelHubError

    repo, _, _ = hub

    class Sorts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.sort(self.fc1(x), dim=1).values)

    with pytest.raises(ModelHubError, match="sort"):
        ProgressiveModel(Sorts(), repo, "mlp@v1")
    with pytest.raises(ModelHubError, match="no weights named"):
        ProgressiveModel(SmallCNN(), repo, "mlp@v1")


def test_cli_eval_progressive(hub, tmp_path, capsys) -> None:
    repo, mlp, _ = hub
    x, y = digits()
    data = tmp_path / "digits.pt"
    torch.save({"x": x, "y": y}, data)
    args = ["--repo", repo.url, "--json", "eval", "mlp@v1", "--data", str(data), "--module", f"{__name__}:MLP"]
    assert main([*args, "--progressive"]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    acc = float((mlp(x).argmax(1) == y).float().mean())
    assert doc["accuracy"] == pytest.approx(acc) and doc["bytes_read"] <= doc["bytes_full"]
    assert abs(sum(doc["decided_by_planes"].values()) - 1) < 1e-9
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(acc)


def test_weights_stored_as_views_are_read_plane_wise(hub, tmp_path) -> None:
    """Weights that are views of one buffer (a flat-parameter wrapper) are stored as
    that buffer: each is read plane by plane from it, and a channels_last network
    (weights stored in logical order, placed on load) answers as it does."""
    _, mlp, cnn = hub
    repo = Repository.init(tmp_path / "hub")
    sd = mlp.state_dict()
    w1, w2 = sd["fc1.weight"], sd["fc2.weight"]
    flat = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    views = {**sd, "fc1.weight": flat[: w1.numel()].view_as(w1), "fc2.weight": flat[w1.numel():].view_as(w2)}
    v = repo.commit(views, "flat")
    assert [r["path"] for r in repo.manifest(v.id).tensors] == ["fc1.weight/<storage>", "fc1.bias", "fc2.bias"]
    r = PlaneReader(repo, v.ref)
    for k in (1, 2, 4):
        for name in r.tensors:
            r.fetch(name, k)
        for name, t in r.tensors.items():
            true = sd[name].contiguous().view(-1).view(torch.int32).numpy().view(np.uint32)
            assert t.shape == tuple(sd[name].shape)
            mask = np.uint32(known_mask("float32", k, t.layout))
            assert np.array_equal(r.bits(name) & mask, true & mask), (name, k)
    assert all(torch.equal(r.tensor(n), sd[n]) for n in r.tensors)
    x, _ = digits()
    res = ProgressiveModel(MLP(), repo, v.ref).predict(x, k=1)
    assert torch.equal(res.topk, mlp(x).topk(1, dim=1).indices)
    cl = repo.commit({k: t.to(memory_format=torch.channels_last) if t.dim() == 4 else t
                      for k, t in cnn.state_dict().items()}, "cl")
    assert repo.load(cl.ref)["conv2.weight"].is_contiguous(memory_format=torch.channels_last)
    res = ProgressiveModel(SmallCNN(), repo, cl.ref).predict(x, k=1)
    assert torch.equal(res.topk, cnn(x).topk(1, dim=1).indices)


@pytest.mark.parametrize("op", ["sub", "xor"])
def test_versions_stored_as_plane_separable_deltas_are_read_plane_wise(tmp_path, op) -> None:
    """With 1-byte lanes (or XOR) a reverse delta's high planes come from its own high
    planes and its base's: older versions stay progressive, and answers stay exact."""
    from modelhub_torch.pas.codec import CodecConfig

    repo = Repository.init(tmp_path / "hub", delta=CodecConfig(op=op, lane=1, group_from=8), context_coding=False)
    mlp = trained(MLP(), steps=100)
    states = []
    opt = torch.optim.SGD(mlp.parameters(), lr=1e-3)
    x, y = digits()
    for _ in range(3):
        states.append({k: v.clone() for k, v in mlp.state_dict().items()})
        repo.commit(mlp, "mlp")
        opt.zero_grad()
        F.cross_entropy(mlp(x[:256]), y[:256]).backward()
        opt.step()
    v1 = repo.manifest(repo.resolve("mlp@v1"))
    deltas = {r["path"].split("/")[-1] for r in v1.tensors if r["data"].get("base") is not None}
    assert {"fc1.weight", "fc2.weight"} <= deltas  # the weights are stored as deltas
    store = PlaneReader(repo, "mlp@v1")
    assert all(t.separable and t.delta == (name in deltas) for name, t in store.tensors.items())
    store.fetch("fc1.weight", 2)
    t = store.tensors["fc1.weight"]
    want = states[0]["fc1.weight"].flatten().view(torch.int32).numpy().view(np.uint32)
    assert np.array_equal(store.bits("fc1.weight"), want & np.uint32(0xFFFF0000))  # top two IEEE planes, exact
    assert store.bytes_read < store.bytes_full
    store.fetch("fc1.weight", 4)
    assert t.exact is not None and np.array_equal(t.exact, want)
    for ref, sd in (("mlp@v1", states[0]), ("mlp@v2", states[1])):
        net = MLP().eval()
        net.load_state_dict(sd)
        res = ProgressiveModel(MLP(), repo, ref).predict(x, k=1)
        with torch.no_grad():
            assert torch.equal(res.topk, net(x).topk(1, dim=1).indices)
        assert float((res.planes <= 2).float().mean()) > 0.9  # most decided from the high planes


def test_cli_eval_imports_module_from_working_directory(hub, tmp_path, capsys, monkeypatch) -> None:
    """`--module mine:Net` finds mine.py in the working directory, as `python -m` would;
    an unimportable one is refused with what to do."""
    repo, mlp, _ = hub
    x, y = digits()
    data = tmp_path / "digits.pt"
    torch.save({"x": x, "y": y}, data)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "mine_mlp_arch.py").write_text(
        "from torch import nn\nfrom torch.nn import functional as F\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc2(F.relu(self.fc1(x)))\n"
    )
    monkeypatch.chdir(workdir)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(workdir))])
    args = ["--repo", repo.url, "--json", "eval", "mlp@v1", "--data", str(data), "--progressive"]
    assert main([*args, "--module", "mine_mlp_arch:Net"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(float((mlp(x).argmax(1) == y).float().mean()))
    assert main([*args, "--module", "not_here_at_all:Net"]) != 0
    assert "pass --module PKG.MOD:CLASS" in capsys.readouterr().err
