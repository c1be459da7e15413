"""DQL: every example of docs/DQL.md runs here with its asserted result, plus the
parser, the compiler's typing and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from dql_fixture import AlexNetLike, build

from modelhub_torch import Repository
from modelhub_torch.cli import main
from modelhub_torch.dql import DQLError, parse
from modelhub_torch.node_patterns import node_pattern

DOC = Path(__file__).resolve().parent.parent / "docs" / "DQL.md"


def doc_examples() -> list[tuple[str, str]]:
    """(query, expected) pairs: a ```dql block followed by a line starting with →."""
    text = DOC.read_text()
    found = re.findall(r"```dql\n(.*?)```\n→ ([^\n]*)", text, flags=re.S)
    return [(q.strip(), want.strip()) for q, want in found]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Repository:
    return build(tmp_path_factory.mktemp("dql") / "hub")


def test_the_doc_has_examples_for_every_construct() -> None:
    examples = doc_examples()
    assert len(examples) >= 25
    text = " ".join(q for q, _ in examples)
    for construct in ("like", "ilike", " in (", "is null", " not ", " or ", "(", "order by", "limit",
                      "has POOL", ".next", ".prev", "count(", "ancestors", "descendants", "m.parent",
                      "tags has", "m.version", "m.params", "CONV(kernel_size"):
        assert construct in text, construct


@pytest.mark.parametrize("query,want", doc_examples())
def test_doc_example(repo: Repository, query: str, want: str, tmp_path) -> None:
    if not query.lower().startswith("select"):  # statements that commit get a repository of their own
        repo = build(tmp_path / "hub")
    if want.startswith("error:"):
        with pytest.raises(DQLError) as exc:
            repo.query(query)
        assert want[len("error:"):].strip() in str(exc.value)
        return
    expected = [] if want == "(none)" else [r.strip() for r in want.split(",")]
    assert repo.query(query).refs == expected


def test_paper_query_and_result_objects(repo: Repository) -> None:
    res = repo.query('select m1 where m1.name like "alexnet_%" and m1.creation_time > "2015-11-22" '
                     'and m1["conv[1,3,5]"].next has POOL("MAX") order by m1.metrics.val_acc desc')
    assert res.refs == ["alexnet_ft@v2", "alexnet_a@v3", "alexnet_a@v2", "alexnet_a@v1", "alexnet_ft@v1"]
    versions = list(res)
    assert [v.ref for v in versions] == res.refs and versions[0].metrics["val_acc"] == 0.70
    assert res.columns == ["ref", "name", "version", "created", "params", "size", "metrics.val_acc"]
    rows = res.to_dicts()
    assert rows[0]["metrics.val_acc"] == 0.70 and rows[-1]["metrics.val_acc"] is None
    assert rows[0]["params"] == sum(p.numel() for p in AlexNetLike().parameters())
    assert len(res) == 5 and res[1].ref == "alexnet_a@v3"


def test_node_patterns() -> None:
    def matches(pattern: str, name: str) -> bool:
        return re.match(node_pattern(pattern), name) is not None

    assert matches("conv[1,3,5]", "conv3") and not matches("conv[1,3,5]", "conv2")
    assert not matches("conv[1,3,5]", "conv,")  # alternatives, not a character class
    assert matches("conv*", "conv") and matches("conv*", "conv12") and not matches("conv*", "xconv1")
    assert matches("fc[1-3]", "fc2") and not matches("fc[1-3]", "fc4")
    assert matches("features.?", "features.0") and not matches("features.?", "featuresx0x")
    assert matches("conv*($1)", "conv5") and matches("block[a,bb].relu", "blockbb.relu")


def test_parse_errors_point_at_the_column() -> None:
    with pytest.raises(DQLError) as exc:
        parse('select m where m.name lke "x"')
    msg = str(exc.value)
    assert "line 1, column 23" in msg and msg.splitlines()[-1] == "  " + " " * 22 + "^"
    with pytest.raises(DQLError, match=r"ends too early|end of the query"):
        parse("select m where m.metrics.acc >")
    with pytest.raises(DQLError, match="empty query"):
        parse("   ")
    with pytest.raises(DQLError, match="expected construct, evaluate, select, slice"):
        parse("selec m")


def test_semantic_errors(repo: Repository) -> None:
    with pytest.raises(DQLError, match="model variable is 'm'"):
        repo.query('select m where x.name = "a"')
    with pytest.raises(DQLError, match="POOL takes"):
        repo.query('select m where m["conv1"].next has POOL("MIN")')
    with pytest.raises(DQLError, match="has no version"):
        repo.query('select m where m.ancestors has "alexnet_a@v9"')
    with pytest.raises(DQLError, match="is a set"):
        repo.query('select m where m.tags = "best"')
    with pytest.raises(DQLError, match="like compares text"):
        repo.query('select m where m.version like "1%"')
    with pytest.raises(DQLError, match=r"needs one key"):
        repo.query("select m where m.metrics > 1")


def test_enumeration_statements_parse() -> None:
    s = parse('construct m2 from m1 where m1["conv*($1)"].next has POOL("AVG") '
              'mutate m1["conv*($1)"].insert = RELU("relu$1")')
    assert s.kind == "construct" and s.mutations[0].action == "insert"
    assert s.mutations[0].value.name == "RELU" and s.mutations[0].value.args == ("relu$1",)
    e = parse('evaluate m from "q" vary config.base_lr in [0.1, 0.01] and config.net["conv*"].lr auto '
              'keep top(5, m["loss"], 100)')
    assert e.vary[0].values == (0.1, 0.01) and e.vary[1].values is None
    assert e.vary[1].path == ("config", "net", "conv*", "lr") and e.keep[0].call == "top"
    assert e.keep[0].args[0] == 5 and e.keep[0].args[1].pattern == "loss" and e.keep[0].args[2] == 100
    assert e.source.saved == "q" and e.vary[0].pos == len('evaluate m from "q" vary ')
    t = parse('evaluate m from (select m1 where m1.name = "a") keep top(2, m["val_loss"], 5) and m["acc"] >= 0.9 as "x"')
    assert t.source.statement.var == "m1" and t.name == "x"
    assert (t.keep[1].metric.pattern, t.keep[1].op, t.keep[1].value) == ("acc", ">=", 0.9)


def test_versions_without_graph_and_new_commits(tmp_path) -> None:
    repo = Repository.init(tmp_path / "r")
    repo.commit({"w": torch.ones(3)}, "plain", metrics={"acc": 0.5})
    assert repo.query('select m where m["*"] has CONV').refs == []
    assert repo.query('select m where count(m["*"]) = 0').refs == ["plain@v1"]
    repo.commit(AlexNetLike(), "net")
    assert repo.query('select m where m["conv1"].next has POOL("MAX")').refs == ["net@v1"]
    repo.tag("net@v1", "prod")
    assert repo.query('select m where m.tags like "pr%"').refs == ["net@v1"]


def test_cli_query(repo: Repository, capsys) -> None:
    code = main(["--repo", repo.url, "query", 'select m where m.metrics.val_acc > 0.9 order by m.metrics.val_acc desc'])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["VERSION", "METRICS.VAL_ACC"]
    assert lines[1].split()[:2] == ["lenet_max@v2", "0.95"] and lines[2].split()[:2] == ["lenet_max@v1", "0.91"]
    assert lines[-1] == "2 versions"
    code = main(["--repo", repo.url, "--json", "query", 'select m where m.tags has "best"'])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["ref"] for r in doc["rows"]] == ["alexnet_a@v3"]
    code = main(["--repo", repo.url, "query", "select m where m.nmae = 1"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean m.name" in err and "Traceback" not in err


def test_desc_and_diff_show_the_network(repo: Repository, capsys) -> None:
    assert main(["--repo", repo.url, "desc", "alexnet_a@v1"]) == 0
    out = capsys.readouterr().out
    assert "network (23 nodes, captured by fx):" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("conv1 "))
    assert row[:4] == ["conv1", "Conv2d", "conv", "5x5"] and row[-2:] == ["608", "pool1"]
    assert main(["--repo", repo.url, "diff", "alexnet_a@v1", "alexnet_b@v1"]) == 0
    out = capsys.readouterr().out
    assert "  ~ pool1: type MaxPool2d -> AvgPool2d, kind max -> avg" in out.splitlines()
    assert main(["--repo", repo.url, "--json", "diff", "alexnet_a@v1", "alexnet_a@v2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["network"]["added"] == [] and doc["network"]["changed"] == []


def test_booleans_match_json_booleans(tmp_path) -> None:
    repo = Repository.init(tmp_path / "r")
    repo.commit({"w": torch.ones(3)}, "a", hparams={"use_bn": True, "lr": 0.1})
    repo.commit({"w": torch.zeros(3)}, "b", hparams={"use_bn": False, "lr": 1})
    assert repo.query("select m where m.hparams.use_bn = true").refs == ["a@v1"]
    assert repo.query("select m where m.hparams.use_bn != true").refs == ["b@v1"]
    assert repo.query("select m where m.hparams.use_bn in (false)").refs == ["b@v1"]
    assert repo.query("select m where m.hparams.lr = 1").refs == ["b@v1"]  # 1, not true
    assert repo.query("select m where m.hparams.use_bn = 1").refs == []  # true is not a number
