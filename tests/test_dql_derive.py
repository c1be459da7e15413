"""DQL slice and construct: the paper's statements (names adapted) on the AlexNet- and
LeNet-like networks of tests/dql_fixture.py, with asserted networks, weights, lineage
and storage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from dql_fixture import build
from torch import fx, nn

from modelhub_torch import Repository
from modelhub_torch.cli import main
from modelhub_torch.errors import DQLError, ModelHubError


@pytest.fixture()
def repo(tmp_path) -> Repository:
    return build(tmp_path / "dql")


def _outputs(module: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value in a forward of ``module`` on ``x`` (fx interpreter)."""
    seen: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> object:
            value = super().run_node(node)
            seen[str(node.target) if node.op == "call_module" else node.name] = value
            return value

    Recorder(fx.symbolic_trace(module)).run(x)
    return seen


def _next(repo: Repository, ref: str, node: str) -> list[str]:
    graph = repo.manifest(repo.version(ref).id).extra["graph"]
    return sorted(dst for src, dst in graph["edges"] if src == node)


def test_paper_slice_is_bit_equal_to_the_source_between_its_nodes(repo) -> None:
    res = repo.query('slice m2 from m1 where m1.name like "alexnet_a%" and m1.version = 3 '
                     'mutate m2.input = m1["conv1"] and m2.output = m1["fc7"]')
    assert res.statement == "slice" and res.refs == ["alexnet_a-slice@v1"]
    row = res.to_dicts()[0]
    assert (row["source"], row["status"]) == ("alexnet_a@v3", "created")
    v = res[0]
    assert v.parent == "alexnet_a@v3" and v.info["derived_by"] == "slice" and v.info["dql"].startswith("slice m2")
    assert v.info["initialised"] == []  # every tensor is the source's
    source = repo.load_module("alexnet_a@v3")
    sliced = repo.load_module(v.ref)
    assert set(sliced.state_dict()) == {k for k in source.state_dict() if not k.startswith("fc8")}
    torch.manual_seed(1)
    x = torch.randn(5, 3, 32, 32)
    seen = _outputs(source, x)
    assert torch.equal(sliced(x), seen["fc7"])  # bit for bit
    # the unchanged tensors cost no bytes: the codec finds them in the parent
    assert v.stored_bytes < 0.05 * v.raw_bytes
    # LeNet: from the second conv (its input: what pool1 gave) to fc2
    res = repo.query('slice m2 from m1 where m1.name = "lenet_max" and m1.version = 2 '
                     'mutate m2.input = m1["conv2"] and m2.output = m1["fc2"] as "lenet-middle"')
    assert res.refs == ["lenet-middle@v1"]
    lenet = repo.load_module("lenet_max@v2")
    x = torch.randn(3, 1, 28, 28)
    seen = _outputs(lenet, x)
    middle = repo.load_module("lenet-middle@v1")
    assert torch.equal(middle(seen["pool1"]), seen["fc2"])
    assert [n for n, _ in middle.named_children()] == ["conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    # from the input node to the output node: the whole network again
    res = repo.query('slice m2 from m1 where m1.name = "lenet_max" and m1.version = 2 '
                     'mutate m2.input = m1["x"] and m2.output = m1["output"] as "lenet-whole"')
    assert torch.equal(repo.load_module(res.refs[0])(x), lenet(x))


def test_paper_construct_inserts_exactly_where_the_pattern_says(repo) -> None:
    q = ('construct m2 from m1 where m1.name like "alexnet_b%" and m1["conv*($1)"].next has POOL("AVG") '
         'mutate m1["conv*($1)"].insert = RELU("relu$1")')
    res = repo.query(q)
    assert res.refs == ["alexnet_b-construct@v1"]  # alexnet_a has max pools: not matched
    ref = res.refs[0]
    for k in (1, 3, 5):  # conv1/3/5 -> reluK -> poolK
        assert _next(repo, ref, f"conv{k}") == [f"relu{k}"]
        assert _next(repo, ref, f"relu{k}") == [f"pool{k}"]
    for k in (2, 4):  # convs not followed by an average pool are left alone
        assert _next(repo, ref, f"conv{k}") == _next(repo, "alexnet_b@v1", f"conv{k}")
    assert repo.query('select m where m.name like "alexnet%" and m["conv*"].next has RELU("relu[1,3,5]")').refs \
        == [ref]
    built = repo.load_module(ref)
    assert all(isinstance(getattr(built, f"relu{k}"), nn.ReLU) for k in (1, 3, 5))
    source_sd, new_sd = repo.load_state_dict("alexnet_b@v1"), repo.load_state_dict(ref)
    assert set(source_sd) == set(new_sd) and all(torch.equal(source_sd[k], new_sd[k]) for k in source_sd)
    v = repo.version(ref)
    assert v.parent == "alexnet_b@v1" and v.info["edits"] == [
        "insert ReLU relu1 after conv1", "insert ReLU relu3 after conv3", "insert ReLU relu5 after conv5"]
    assert v.stored_bytes < 0.05 * v.raw_bytes
    # the network computes what the source computes with a ReLU after conv1/3/5
    src = repo.load_module("alexnet_b@v1")
    x = torch.randn(2, 3, 32, 32)
    ref_out = src.fc8(torch.relu(src.fc7(torch.relu(src.fc6(torch.flatten(torch.relu(src.pool5(torch.relu(src.conv5(
        torch.relu(src.conv4(torch.relu(src.pool3(torch.relu(src.conv3(torch.relu(src.conv2(torch.relu(src.pool1(
        torch.relu(src.conv1(x)))))))))))))))), 1))))))
    assert torch.equal(built(x), ref_out)
    # the same statement again derives nothing new
    again = repo.query(q)
    assert again.refs == [ref] and again.to_dicts()[0]["status"] == "exists"
    assert [x.ref for x in repo.versions("alexnet_b-construct")] == [ref]


def test_construct_infers_shapes_deletes_and_replaces(repo) -> None:
    res = repo.query('construct m2 from m1 where m1.name = "lenet_max" and m1.version = 1 '
                     'mutate m1["conv[1,2]($1)"].insert = BN("bn$1") and m1["fc1"].insert = BN("bnfc") as "lenet-bn"')
    net = repo.load_module(res.refs[0])
    assert isinstance(net.bn1, nn.BatchNorm2d) and net.bn1.num_features == 6
    assert isinstance(net.bn2, nn.BatchNorm2d) and net.bn2.num_features == 16
    assert isinstance(net.bnfc, nn.BatchNorm1d) and net.bnfc.num_features == 120
    fresh = nn.BatchNorm2d(16).state_dict()  # new layers start as torch starts them
    assert all(torch.equal(net.bn2.state_dict()[k], fresh[k]) for k in fresh)
    assert sorted(res[0].info["initialised"]) == sorted(
        f"{m}.{k}" for m in ("bn1", "bn2", "bnfc") for k in fresh)
    assert net(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    # delete: both calls of the shared dropout go; in eval mode the forward is unchanged
    res = repo.query('construct m2 from m1 where m1.name = "alexnet_a" and m1.version = 1 '
                     'mutate m1["drop*"].delete as "alexnet-nodrop"')
    nodrop = repo.load_module(res.refs[0])
    assert not hasattr(nodrop, "drop")
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(nodrop(x), repo.load_module("alexnet_a@v1")(x))
    # replace: max pools become average pools with the same window
    res = repo.query('construct m2 from m1 where m1.name = "alexnet_a" and m1.version = 1 '
                     'mutate m1["pool*"].replace = POOL("AVG") as "alexnet-avg"')
    avg = repo.load_module(res.refs[0])
    assert all(isinstance(getattr(avg, f"pool{k}"), nn.AvgPool2d) and getattr(avg, f"pool{k}").kernel_size == 2
               for k in (1, 3, 5))
    assert repo.query('select m where m.name = "alexnet-avg" and m["conv1"].next has POOL("AVG")').refs \
        == ["alexnet-avg@v1"]
    # a functional call and the second call of a shared module are layers' places too
    res = repo.query('construct m2 from m1 where m1.name = "alexnet_a" and m1.version = 1 '
                     'mutate m1["relu_1"].replace = GELU and m1["drop#2"].replace = DROPOUT(p=0.1) as "alexnet-gelu"')
    assert res[0].info["edits"] == ["replace relu_1 with GELU relu_1", "replace drop#2 with Dropout drop_2"]
    gelu = repo.load_module(res.refs[0])
    assert isinstance(gelu.relu_1, nn.GELU) and gelu.drop.p == 0.5 and gelu.drop_2.p == 0.1
    with pytest.raises(DQLError, match="already has a layer named 'drop'"):  # drop#2 still calls it
        repo.query('construct m2 from m1 where m1.name = "alexnet_a" and m1.version = 1 '
                   'mutate m1["drop"].replace = DROPOUT(p=0.1)')


def test_nested_and_saved_statements(repo, tmp_path) -> None:
    res = repo.query('slice m2 from (select m1 where m1.name = "lenet_avg") '
                     'mutate m2.input = m1["conv1"] and m2.output = m1["pool2"] as "lenet-features"')
    assert res.refs == ["lenet-features@v1"] and res[0].parent == "lenet_avg@v1"
    # construct on a slice's results, nested
    res = repo.query('construct m3 from (slice m2 from (select m1 where m1.name = "lenet_avg") '
                     'mutate m2.input = m1["conv1"] and m2.output = m1["pool2"] as "lenet-features") '
                     'mutate m2["conv2"].insert = RELU("extra") as "lenet-features-relu"')
    assert res.refs == ["lenet-features-relu@v1"] and res[0].parent == "lenet-features@v1"
    repo.save_query("lenets", 'select m where m.name like "lenet_max" and m.version = 2')
    assert repo.saved_queries() == {"lenets": 'select m where m.name like "lenet_max" and m.version = 2'}
    res = repo.query('slice m2 from "lenets" mutate m2.input = m["fc1"] and m2.output = m["fc3"] as "head"')
    assert res.refs == ["head@v1"] and res[0].parent == "lenet_max@v2"
    # a where clause filters a nested source
    res = repo.query('slice m2 from (select m1 where m1.name like "lenet%") where m1.name = "lenet_avg" '
                     'mutate m2.input = m1["fc1"] and m2.output = m1["fc3"] as "head-avg"')
    assert [v.parent for v in res] == ["lenet_avg@v1"]
    repo.save_query("a", 'slice m2 from "b" mutate m2.input = m["x"] and m2.output = m["y"]')
    repo.save_query("b", 'select m where m.name = "lenet_avg"')
    repo.save_query("b", 'construct m from "a" mutate m["x"].delete')  # replaces b
    with pytest.raises(DQLError, match=r"circle \(a -> b -> a\)"):
        repo.query('slice n from "a" mutate n.input = m["x"] and n.output = m["y"]')
    with pytest.raises(DQLError, match=r"no statement is saved as 'nope'.*saved: a, b, lenets"):
        repo.query('slice n from "nope" mutate n.input = m["x"] and n.output = m["y"]')
    with pytest.raises(DQLError, match="unexpected"):
        repo.save_query("bad", "select m where")
    assert "bad" not in repo.saved_queries()


def test_errors_point_at_the_statement_and_store_nothing(repo, tmp_path) -> None:
    before = {m: len(repo.versions(m)) for m in repo.models()}
    q = 'slice m2 from m1 where m1.name = "alexnet_a" mutate m2.input = m1["conv*"] and m2.output = m1["fc7"]'
    with pytest.raises(DQLError) as exc:
        repo.query(q)
    assert "must name one node of alexnet_a@v1; it names 5 (conv1, conv2, conv3, conv4, conv5)" in str(exc.value)
    assert exc.value.args[0].splitlines()[-1].index("^") - 2 == q.index('m1["conv*"]')
    with pytest.raises(DQLError, match="unknown name 'm3': the source versions are 'm1' here"):
        repo.query('construct m2 from m1 mutate m3["x"].delete')
    with pytest.raises(DQLError, match=r"\$2 in 'relu\$2' is not captured"):
        repo.query('construct m2 from m1 where m1.name = "lenet_avg" mutate m1["conv*($1)"].insert = RELU("relu$2")')
    with pytest.raises(ModelHubError, match="'fc1' does not come after 'fc3'"):
        repo.query('slice m2 from m1 where m1.name = "lenet_avg" mutate m2.input = m1["fc3"] and m2.output = m1["fc1"]')
    with pytest.raises(ModelHubError, match="already has a layer named 'conv2'"):
        repo.query('construct m2 from m1 where m1.name = "lenet_avg" mutate m1["conv1"].insert = RELU("conv2")')
    with pytest.raises(ModelHubError, match="must keep the shape"):
        repo.query('construct m2 from m1 where m1.name = "lenet_avg" mutate m1["fc1"].insert = LINEAR(out_features=3)')
    repo.commit({"w": torch.ones(2)}, "weights-only")
    with pytest.raises(ModelHubError, match="weights-only@v1: this version records no rebuildable network"):
        repo.query('construct m2 from m1 where m1.name = "weights-only" mutate m1["x"].delete')
    assert {m: len(repo.versions(m)) for m in repo.models() if m != "weights-only"} == before


def test_derived_network_loads_in_a_fresh_process_without_user_code(repo, tmp_path) -> None:
    res = repo.query('construct m2 from m1 where m1.name = "lenet_max" and m1.version = 2 '
                     'mutate m1["conv1"].insert = BN("bn1") as "lenet-bn1"')
    x = torch.randn(2, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    expected = repo.load_module(res.refs[0])(x)
    code = ("import sys, torch; from modelhub_torch import Repository; "
            f"m = Repository({repo.url!r}).load_module('lenet-bn1@v1'); "
            f"y = m(torch.load({str(tmp_path / 'x.pt')!r})); torch.save(y, {str(tmp_path / 'y.pt')!r}); "
            "print(json.dumps(sorted(k for k in sys.modules if k.startswith(('dql_fixture', 'tests')))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == []
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)


def test_cli_runs_and_saves_statements(repo, capsys) -> None:
    assert main(["--repo", repo.url, "query", "--save", "avgnets", 'select m where m["conv*"].next has POOL("AVG")']) == 0
    assert "saved as 'avgnets'" in capsys.readouterr().out
    assert main(["--repo", repo.url, "query", "--list"]) == 0
    assert 'avgnets: select m where m["conv*"].next has POOL("AVG")' in capsys.readouterr().out
    code = main(["--repo", repo.url, "query", 'construct m2 from "avgnets" where m.name = "alexnet_b" '
                 'mutate m["conv1"].insert = RELU("r1")'])
    out = capsys.readouterr().out
    assert code == 0 and "alexnet_b-construct@v1" in out and "alexnet_b@v1" in out and "created" in out
    assert "1 version" in out


def test_booby_trapped_architectures_build_nothing(tmp_path) -> None:
    """A repository is untrusted: records no capture writes are refused by name."""
    from dql_fixture import LeNet

    from modelhub_torch.architecture import capture_architecture

    repo = Repository.init(tmp_path / "r")
    good = capture_architecture(LeNet())
    traps = {
        "evil-type": {**good, "modules": {**good["modules"], "conv1": {"type": "os.system", "args": {}}}},
        "dangling": {**good, "nodes": [n for n in good["nodes"] if n["name"] != "conv1"]},
        "no-module": {**good, "modules": {k: v for k, v in good["modules"].items() if k != "conv2"}},
        "bad-node": {**good, "nodes": [{**n, "args": {"tuple": [{"node": 5}]}} for n in good["nodes"]]},
    }
    for name, arch in traps.items():
        repo.commit(LeNet().state_dict(), name, architecture=arch, graph=LeNet())
    for name in traps:
        with pytest.raises(ModelHubError) as exc:
            repo.query(f'construct m2 from m1 where m1.name = "{name}" mutate m1["conv2"].insert = BN("bn")')
        assert name in str(exc.value)
    assert sorted(repo.models()) == sorted(traps)
