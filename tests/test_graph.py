"""Network-graph capture: fx data flow, hook and registration-order fallbacks, digest, diff."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modelhub_torch.errors import ModelHubError
from modelhub_torch.graph import capture_graph, describe_graph, diff_graphs, graph_digest


# ------------------------------------------------------------------ networks
class LeNet(nn.Module):
    """Layers as modules, called in a straight line."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.drop(self.fc1(self.flatten(x))))


class AlexNetish(nn.Module):
    """Layers with weights as modules, everything else functional, as usually written."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1))
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.features(x)), 2)
        x = F.avg_pool2d(torch.relu(self.conv2(x)), kernel_size=2)
        x = F.adaptive_avg_pool2d(x, 2)
        x = torch.flatten(x.flatten(1), 1)
        x = x.view(x.size(0), -1)
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


class Residual(nn.Module):
    """A skip connection (``x + y``) and a concatenation: data flow that is not a line."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv2(self.relu(self.bn1(self.conv1(x))))
        z = x + y
        return torch.cat([z, self.proj(x)], dim=1)


class Probe(nn.Module):
    """A childless user layer that records the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return x


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.probe = Probe()
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.a.weight.fill_(1.0)
            self.a.bias.zero_()

    def forward(self, x):
        h = self.a(x)
        h = self.act(h) if h.sum() > 0 else self.b(h)
        return self.head(self.act(self.probe(h)))


class Twice(nn.Module):
    """One layer called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(self.lin(x))


class Small(nn.Module):
    """conv -> (relu) -> pool, for diffs."""

    def __init__(self, relu: bool = False, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel)
        if relu:
            self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "relu"):
            x = self.relu(x)
        return self.pool(x)


def by_name(graph: dict) -> dict[str, dict]:
    return {n["name"]: n for n in graph["nodes"]}


def chain(*names: str) -> list[list[str]]:
    return [list(pair) for pair in itertools.pairwise(names)]


def assert_json(graph: dict) -> None:
    """Plain JSON (no tuples, NaN or tensors) that round-trips unchanged."""
    assert json.loads(json.dumps(graph, allow_nan=False)) == graph


# ------------------------------------------------------------------ fx
def test_lenet_nodes_edges_attrs_params():
    net = LeNet()
    g = capture_graph(net)
    assert set(g) == {"method", "nodes", "edges"}
    assert g["method"] == "fx"
    names = [n["name"] for n in g["nodes"]]
    order = ["x", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "drop"]
    assert names == [*order, "fc2", "output"]
    assert g["edges"] == chain(*names)
    nodes = by_name(g)
    assert nodes["x"] == {
        "name": "x",
        "op": "input",
        "type": "input",
        "category": "input",
        "kind": None,
        "attrs": {},
        "params": 0,
    }
    assert nodes["output"]["op"] == "output"
    conv1 = nodes["conv1"]
    assert (conv1["op"], conv1["type"], conv1["category"], conv1["kind"]) == (
        "module",
        "Conv2d",
        "conv",
        None,
    )
    assert conv1["attrs"] == {
        "in_channels": 1,
        "out_channels": 6,
        "kernel_size": [5, 5],
        "stride": [1, 1],
        "padding": [0, 0],
        "dilation": [1, 1],
        "groups": 1,
        "bias": True,
    }
    assert (nodes["pool1"]["category"], nodes["pool1"]["kind"]) == ("pool", "max")
    assert nodes["pool1"]["attrs"]["kernel_size"] == [2, 2]
    assert nodes["pool1"]["attrs"]["stride"] == [2, 2]
    assert (nodes["pool2"]["type"], nodes["pool2"]["kind"]) == ("AvgPool2d", "avg")
    assert nodes["relu1"]["category"] == "relu"
    assert nodes["flatten"]["category"] == "flatten"
    assert nodes["fc1"]["attrs"] == {"in_features": 256, "out_features": 120, "bias": True}
    assert nodes["drop"]["attrs"] == {"p": 0.5}
    for name, module in net.named_modules():
        if name in nodes:
            own = sum(p.numel() for p in module.parameters(recurse=False))
            assert nodes[name]["params"] == own
    assert nodes["conv1"]["params"] == 6 * 1 * 5 * 5 + 6
    assert nodes["relu1"]["params"] == 0
    assert_json(g)


def test_functional_calls_are_named_and_classified():
    g = capture_graph(AlexNetish())
    assert g["method"] == "fx"
    nodes = by_name(g)
    assert nodes["features.0"]["type"] == "Conv2d"
    assert nodes["features.0"]["attrs"]["stride"] == [2, 2]
    relu = nodes["relu"]
    assert (relu["op"], relu["type"], relu["category"], relu["params"]) == (
        "function",
        "relu",
        "relu",
        0,
    )
    assert nodes["relu_1"]["category"] == "relu"  # torch.relu
    mp = nodes["max_pool2d"]
    assert (mp["type"], mp["category"], mp["kind"]) == ("max_pool2d", "pool", "max")
    assert mp["attrs"]["kernel_size"] == [2, 2]
    ap = nodes["avg_pool2d"]
    assert (ap["category"], ap["kind"], ap["attrs"]["kernel_size"]) == ("pool", "avg", [2, 2])
    adaptive = nodes["adaptive_avg_pool2d"]
    assert (adaptive["kind"], adaptive["attrs"]) == (
        "avg",
        {"output_size": [2, 2], "adaptive": True},
    )
    # x.flatten(1) is a method call, torch.flatten(x, 1) a function call
    assert (nodes["flatten"]["op"], nodes["flatten"]["category"]) == ("method", "flatten")
    assert nodes["flatten"]["attrs"] == {"start_dim": 1}
    assert (nodes["flatten_1"]["op"], nodes["flatten_1"]["category"]) == ("function", "flatten")
    view = nodes["view"]
    assert (view["op"], view["type"], view["category"]) == ("method", "view", "reshape")
    assert view["attrs"] == {"shape": [None, -1]}  # x.size(0) is no constant
    assert nodes["dropout"]["category"] == "dropout"
    assert nodes["dropout"]["attrs"]["p"] == 0.5
    assert "training" not in nodes["dropout"]["attrs"]  # mode, not architecture
    assert (nodes["log_softmax"]["category"], nodes["log_softmax"]["attrs"]) == (
        "softmax",
        {"dim": 1},
    )
    assert ["features.0", "relu"] in g["edges"]
    assert ["relu", "max_pool2d"] in g["edges"]
    assert ["size", "view"] in g["edges"]
    assert ["log_softmax", "output"] in g["edges"]
    assert_json(g)


def test_residual_edges_follow_data_flow():
    g = capture_graph(Residual())
    names = [n["name"] for n in g["nodes"]]
    assert names == ["x", "conv1", "bn1", "relu", "conv2", "add", "proj", "cat", "output"]
    expected = {
        ("x", "conv1"),
        ("conv1", "bn1"),
        ("bn1", "relu"),
        ("relu", "conv2"),
        ("x", "add"),
        ("conv2", "add"),
        ("x", "proj"),
        ("add", "cat"),
        ("proj", "cat"),
        ("cat", "output"),
    }
    assert len(g["edges"]) == len(expected)
    assert {tuple(e) for e in g["edges"]} == expected
    nodes = by_name(g)
    assert (nodes["add"]["op"], nodes["add"]["type"], nodes["add"]["category"]) == (
        "function",
        "add",
        "add",
    )
    assert (nodes["cat"]["category"], nodes["cat"]["attrs"]) == ("cat", {"dim": 1})
    assert nodes["bn1"]["attrs"] == {"num_features": 4, "eps": 1e-5}
    assert nodes["bn1"]["params"] == 8
    assert nodes["conv2"]["attrs"]["bias"] is False
    assert nodes["conv2"]["params"] == 4 * 4 * 3 * 3
    rows = {r[0]: r for r in describe_graph(g)}
    assert rows["x"][5] == "conv1,add,proj"
    assert rows["conv1"] == ["conv1", "Conv2d", "conv", "3x3 s1 p1 4->4", "148", "bn1"]


def test_get_attr_is_transparent():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.lin(x) * self.scale

    g = capture_graph(Scale())
    assert [n["name"] for n in g["nodes"]] == ["x", "lin", "mul", "output"]
    assert g["edges"] == chain("x", "lin", "mul", "output")
    assert by_name(g)["mul"]["category"] == "mul"


def test_repeated_module_gets_call_suffix():
    g = capture_graph(Twice())
    assert [n["name"] for n in g["nodes"]] == ["x", "lin", "lin#2", "output"]
    assert g["edges"] == chain("x", "lin", "lin#2", "output")
    assert by_name(g)["lin#2"]["type"] == "Linear"


def test_builtin_layer_with_children_is_one_node():
    """fx does not trace into torch.nn layers; their children's parameters count with them."""

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    net = Attn()
    g = capture_graph(net)
    nodes = by_name(g)
    assert "mha.out_proj" not in nodes
    mha = nodes["mha"]
    assert (mha["category"], mha["attrs"]) == ("attention", {"embed_dim": 8, "num_heads": 2})
    assert mha["params"] == sum(p.numel() for p in net.mha.parameters()) == 288
    assert g["edges"] == chain("x", "mha", "getitem", "output")


def test_layer_names_win_over_pseudo_nodes():
    class Clash(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.ReLU()
            self.output = nn.Linear(2, 2)

        def forward(self, x):
            return self.output(self.x(x))

    g = capture_graph(Clash())
    assert [n["name"] for n in g["nodes"]] == ["x_1", "x", "output", "output_1"]
    assert [n["op"] for n in g["nodes"]] == ["input", "module", "module", "output"]
    assert g["edges"] == chain("x_1", "x", "output", "output_1")


def test_fx_capture_has_no_side_effects():
    net = LeNet()
    net.train()
    net.fc1.eval()
    keys = list(net.state_dict())
    capture_graph(net)
    assert net.training is True
    assert net.fc1.training is False
    assert list(net.state_dict()) == keys
    # the dropout mode is not part of the architecture
    assert graph_digest(capture_graph(AlexNetish().train())) == graph_digest(
        capture_graph(AlexNetish().eval())
    )


# ------------------------------------------------------------------ fallbacks
def test_untraceable_with_example_uses_hooks():
    net = Gate()
    net.train()
    net.head.eval()
    g = capture_graph(net, torch.ones(1, 4))
    assert g["method"] == "hooks"
    names = ["input", "a", "act", "probe", "act#2", "head", "output"]
    assert [n["name"] for n in g["nodes"]] == names
    assert g["edges"] == chain(*names)
    nodes = by_name(g)
    assert nodes["input"]["op"] == "input"
    assert nodes["a"]["attrs"] == {"in_features": 4, "out_features": 4, "bias": True}
    assert nodes["a"]["params"] == 20
    assert (nodes["probe"]["type"], nodes["probe"]["category"]) == ("Probe", "other")
    assert "b" not in nodes  # never called on this input
    # ran once, in eval mode without autograd; flags restored layer by layer
    assert net.probe.seen == [(False, False)]
    assert net.training is True and net.probe.training is True
    assert net.head.training is False
    assert all(not m._forward_hooks for m in net.modules())
    assert_json(g)


def test_example_input_as_tuple_and_dict():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x, y):
            return self.lin(x) if y.sum() > 0 else x

    pair = Pair()
    by_tuple = capture_graph(pair, (torch.ones(1, 2), torch.ones(1)))
    by_dict = capture_graph(pair, {"x": torch.ones(1, 2), "y": torch.ones(1)})
    assert by_tuple == by_dict
    assert [n["name"] for n in by_tuple["nodes"]] == ["input", "lin", "output"]


def test_untraceable_without_example_uses_registration_order():
    net = Gate()
    g = capture_graph(net)
    assert g["method"] == "modules"
    names = ["input", "a", "b", "act", "probe", "head", "output"]
    assert [n["name"] for n in g["nodes"]] == names
    assert g["edges"] == chain(*names)
    assert net.probe.seen == []  # nothing was run
    assert_json(g)


def test_failing_example_falls_back_to_registration_order():
    with pytest.warns(UserWarning, match="registration order"):
        g = capture_graph(Gate(), torch.ones(1, 7))  # wrong width
    assert g["method"] == "modules"


def test_lightning_example_input_array():
    import pytorch_lightning as pl

    class LitGate(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.gate = Gate()
            self.example_input_array = torch.ones(2, 4)

        def forward(self, x):
            return self.gate(x)

    lit = LitGate()
    g = capture_graph(lit)
    assert g["method"] == "hooks"
    assert [n["name"] for n in g["nodes"]][1:3] == ["gate.a", "gate.act"]
    assert lit.training is True


def test_not_a_module():
    with pytest.raises(ModelHubError, match=r"needs a torch\.nn\.Module, got function"):
        capture_graph(lambda x: x)
    with pytest.raises(ModelHubError):
        capture_graph({"conv": nn.Conv2d(1, 1, 1)})


# ------------------------------------------------------------------ digest, table, diff
def test_digest_identifies_the_architecture():
    torch.manual_seed(0)
    a, b = LeNet(), LeNet()
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    digest = graph_digest(capture_graph(a))
    assert digest == graph_digest(capture_graph(b))
    assert re.fullmatch("[0-9a-f]{64}", digest)
    b.conv2 = nn.Conv2d(6, 16, 3)
    assert graph_digest(capture_graph(b)) != digest
    c = LeNet()
    c.pool1 = nn.MaxPool2d((2, 2))  # same layer written another way
    assert graph_digest(capture_graph(c)) == digest


def test_describe_rows():
    rows = describe_graph(capture_graph(LeNet()))
    table = {r[0]: r for r in rows}
    assert [r[0] for r in rows][:3] == ["x", "conv1", "relu1"]
    assert table["conv1"] == ["conv1", "Conv2d", "conv", "5x5 s1 1->6", "156", "relu1"]
    assert table["pool1"] == ["pool1", "MaxPool2d", "pool/max", "2x2 max", "0", "conv2"]
    assert table["pool2"][2:4] == ["pool/avg", "2x2 avg"]
    assert table["fc2"] == ["fc2", "Linear", "linear", "120->10", "1210", "output"]
    assert table["drop"][3] == "p=0.5"
    assert table["output"][5] == ""
    functional = {r[0]: r for r in describe_graph(capture_graph(AlexNetish()))}
    assert functional["max_pool2d"][2:4] == ["pool/max", "2x2 max"]
    assert functional["adaptive_avg_pool2d"][3] == "->2x2 avg"
    assert functional["view"][3] == "shape=?x-1"


def test_diff_inserted_relu():
    before, after = capture_graph(Small()), capture_graph(Small(relu=True))
    d = diff_graphs(before, after)
    assert d == {
        "added": ["relu"],
        "removed": [],
        "changed": [],
        "edges_added": [["conv", "relu"], ["relu", "pool"]],
        "edges_removed": [["conv", "pool"]],
    }
    assert diff_graphs(after, after) == {
        "added": [],
        "removed": [],
        "changed": [],
        "edges_added": [],
        "edges_removed": [],
    }


def test_diff_changed_and_missing_graphs():
    a, b = capture_graph(Small()), capture_graph(Small(kernel=5))
    d = diff_graphs(a, b)
    assert [c["name"] for c in d["changed"]] == ["conv"]
    change = d["changed"][0]
    assert change["before"]["attrs"]["kernel_size"] == [3, 3]
    assert change["after"]["attrs"]["kernel_size"] == [5, 5]
    assert set(change["before"]) == {"type", "category", "kind", "attrs"}
    assert d["added"] == d["removed"] == d["edges_added"] == d["edges_removed"] == []
    fresh = diff_graphs(None, a)
    assert fresh["added"] == ["x", "conv", "pool", "output"]
    assert fresh["edges_added"] == a["edges"]
    gone = diff_graphs(a, None)
    assert gone["removed"] == ["x", "conv", "pool", "output"]
    assert gone["edges_removed"] == a["edges"]
