"""A network a repository can rebuild: recorded as allow-listed data at commit time,
rebuilt by ``load_module`` without the user's class, refused by name when it cannot be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_progressive import MLP
from torch import nn

from modelhub_torch import Repository
from modelhub_torch.architecture import build_module, capture_architecture
from modelhub_torch.errors import ModelHubError


class SmallCNN(nn.Module):
    """Conv, BN, ReLU, average pool, flatten, Linear: a LeNet-like digits network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2)
        self.features = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.features(x)
        return self.fc(x.flatten(1))


class Unrebuildable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.rnn = nn.GRU(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x * self.scale)[0].exp()


def trained(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.add_(torch.randn_like(b))
    return net.eval()


RELOAD = """
import sys, torch
from modelhub_torch import Repository
module = Repository(sys.argv[1]).load_module(sys.argv[2])
x = torch.load(sys.argv[3])
with torch.no_grad():
    torch.save(module(x), sys.argv[4])
print(type(module).__name__, sorted({type(m).__module__ for m in module.modules()}))
"""


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_load_module_in_a_fresh_process_without_the_users_class(tmp_path: Path, name: str) -> None:
    net = trained(MLP() if name == "mlp" else SmallCNN())
    x = torch.randn(16, 64) if name == "mlp" else torch.randn(16, 1, 8, 8)
    repo = Repository.init(tmp_path / "repo")
    v = repo.commit(net, name, metrics={"acc": 0.5})
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "reload.py"
    script.write_text(RELOAD)
    # no tests/ on the path: SmallCNN and MLP cannot be imported there
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "repo"), v.ref, str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert "GraphModule" in done.stdout and "test_" not in done.stdout
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), net(x))  # bit for bit
    # a copy (a fine-tune's start) keeps the architecture
    repo.copy(v.ref, f"{name}-ft")
    with torch.no_grad():
        assert torch.equal(repo.load_module(f"{name}-ft@v1")(x), net(x))


def test_what_cannot_be_rebuilt_is_named_and_the_version_still_commits(tmp_path: Path) -> None:
    net = Unrebuildable()
    arch = capture_architecture(net)
    assert arch["unsupported"] == [
        "a parameter or buffer used directly ('scale'), not through a layer",
        "module 'rnn' of type torch.nn.modules.rnn.GRU",
        "tensor method .exp()",
    ]
    repo = Repository.init(tmp_path / "repo")
    v = repo.commit(net, "odd")
    assert repo.load_state_dict(v.ref).keys() == net.state_dict().keys()
    assert repo.query('select m where m.name = "odd"').refs == [v.ref]
    with pytest.raises(ModelHubError, match=r"cannot be rebuilt.*GRU.*load_state_dict"):
        repo.load_module(v.ref)
    plain = repo.commit(MLP().state_dict(), "plain")
    with pytest.raises(ModelHubError, match="without its network"):
        repo.load_module(plain.ref)


def test_a_booby_trapped_architecture_builds_nothing_outside_the_allow_lists() -> None:
    good = json.loads(json.dumps(capture_architecture(MLP())))
    layer = next(iter(good["modules"]))
    traps = [
        {**good, "modules": {layer: {"type": "Module", "args": {}}}},
        {**good, "modules": {"os.system": {"type": "Linear", "args": {"in_features": 1, "out_features": 1}}}},
        {**good, "nodes": [*good["nodes"][:1], {"op": "call_function", "name": "x", "target": "builtins.eval",
                                                "args": {"tuple": ["1"]}, "kwargs": {"dict": {}}}]},
        {**good, "nodes": [*good["nodes"][:1], {"op": "call_method", "name": "x", "target": "__reduce__",
                                                "args": {"tuple": []}, "kwargs": {"dict": {}}}]},
        {**good, "nodes": [{"op": "get_attr", "name": "x", "target": "fc1.weight"}]},
        {**good, "modules": {layer: {"type": "Linear", "args": {"in_features": {"node": "x"}}}}},
        {**good, "format": 99},
        "not a dict",
    ]
    for trap in traps:
        with pytest.raises(ModelHubError):
            build_module(trap)
    assert isinstance(build_module(good), nn.Module)
