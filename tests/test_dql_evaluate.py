"""DQL evaluate, end to end: the paper's query 3 (construct) saved and evaluated over a
grid with successive halving, on AlexNet- and LeNet-like digits networks; the dry run,
errors at their column, and the Ray Tune executor giving the embedded rows."""

from __future__ import annotations

import pytest
import torch
from dql_fixture import LeNetDigits
from torch import nn
from torch.nn import functional as F

from modelhub_torch import Repository
from modelhub_torch.cli import main
from modelhub_torch.errors import DQLError

CONFIG = """
seed_everything: 0
trainer: {max_steps: 8}
data: {class_path: modelhub_torch.trials.digits.DigitsDataModule, init_args: {batch_size: 32}}
optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05, momentum: 0.9}}
"""
QUERY3 = ('construct m2 from m1 where m1.name like "alexnet-avgv1%" and m1["conv*($1)"].next has POOL("AVG") '
          'mutate m1["conv*($1)"].insert = RELU("relu$1")')


class AlexNetDigits(nn.Module):
    """AlexNet-like for 8x8 digits; conv1 and conv3 go straight into an average pool
    (the paper's "alexnet-avgv1"), conv2 has its ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.pool1 = nn.Conv2d(1, 8, 3, padding=1), nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3, self.pool3 = nn.Conv2d(16, 16, 3, padding=1), nn.AvgPool2d(2)
        self.fc6, self.fc7, self.fc8 = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool3(self.conv3(F.relu(self.conv2(x))))
        x = F.relu(self.fc6(torch.flatten(x, 1)))
        return self.fc8(F.relu(self.fc7(x)))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    repo = Repository.init(root / "hub")
    repo.commit(AlexNetDigits(), "alexnet-avgv1")
    repo.commit(LeNetDigits(), "lenet")
    repo.save_query("query3", QUERY3)
    cfg = root / "cfg.yaml"
    cfg.write_text(CONFIG)
    return repo, str(cfg)


def test_paper_slice_and_construct_on_the_digits_networks(lab) -> None:
    """The paper's slice and query 3 on the digits-sized AlexNet and LeNet, on real digits."""
    from modelhub_torch.trials.digits import DigitsDataModule

    repo, _ = lab
    data = DigitsDataModule(batch_size=64)
    data.setup()
    x, _ = next(iter(data.val_dataloader()))
    for model, start, end in (("alexnet-avgv1", "conv1", "fc7"), ("lenet", "conv2", "fc1")):
        res = repo.query(f'slice m2 from m1 where m1.name = "{model}" '
                         f'mutate m2.input = m1["{start}"] and m2.output = m1["{end}"] as "sliced-{model}"')
        source, sliced = repo.load_module(f"{model}@v1"), repo.load_module(res.refs[0])
        seen = {}
        getattr(source, start).register_forward_pre_hook(lambda _m, args, seen=seen: seen.setdefault("in", args[0]))
        getattr(source, end).register_forward_hook(lambda _m, _a, out, seen=seen: seen.setdefault("out", out))
        source(x)
        assert torch.equal(sliced(seen["in"]), seen["out"])  # bit for bit
    built = repo.query(QUERY3)  # the construct evaluate's tests run on, asserted edge by edge
    graph = repo.manifest(built[0].id).extra["graph"]
    after = {src: dst for src, dst in graph["edges"]}
    assert (after["conv1"], after["relu1"], after["conv3"], after["relu3"]) == ("relu1", "pool1", "relu3", "pool3")
    assert after["conv2"] == "relu"  # conv2 had its ReLU, and no pool after it: untouched


def test_paper_evaluate_keeps_the_best_at_the_rung(lab) -> None:
    repo, cfg = lab
    q = (f'evaluate m from "query3" with config = "{cfg}" '
         'vary config.optimizer.lr in [0.1, 0.01, 0.001] and config.net["conv*"].lr auto '
         'and config.data.batch_size in [32, 64] keep top(5, m["val_loss"], 4)')
    res = repo.query(q)
    assert res.statement == "evaluate" and len(res) == 18  # 3 lr x 3 auto x 2 batch sizes
    rows = res.to_dicts()
    assert [r["trial"] for r in rows] == list(range(1, 19))
    assert {r["source"] for r in rows} == {"alexnet-avgv1-construct@v1"}
    # auto: the configured lr (0.05, the optimizer's) over 10, itself, times 10 (docs/DQL.md)
    assert [r['config.net["conv*"].lr'] for r in rows[0:6:2]] == pytest.approx([0.005, 0.05, 0.5])
    kept = [r for r in rows if r["status"] == "kept"]
    stopped = [r for r in rows if r["status"] == "stopped at step 4"]
    assert len(kept) == 5 and len(stopped) == 13
    assert all(r["steps"] == 8 for r in kept) and all(r["steps"] == 4 for r in stopped)
    at_rung = {r["trial"]: repo.version(f"alexnet-avgv1-construct-eval-trial{r['trial']}@v1").metrics["val_loss"]
               for r in rows}
    assert sorted(r["trial"] for r in kept) == sorted(sorted(at_rung, key=lambda n: (at_rung[n], n))[:5])
    for r in stopped:  # a stopped trial's last version is its rung version
        assert repo.version(r["ref"]).info["step"] == 4 and r["val_loss"] == at_rung[r["trial"]]
    best = repo.version(kept[0]["ref"])
    first = repo.version(best.parent)
    assert best.info["step"] == 8 and first.info["step"] == 4 and first.parent == "alexnet-avgv1-construct@v1"
    assert repo.version(first.parent).parent == "alexnet-avgv1@v1"  # construct's lineage, then the source
    assert first.info["dql"] == q and first.hparams["config.data.batch_size"] == kept[0]["config.data.batch_size"]
    # iterating gives each trial's last version; a select finds them by their metrics
    assert [v.ref for v in res] == [r["ref"] for r in rows]
    found = repo.query('select m where m.name like "alexnet-avgv1-construct-eval-%" and m.info.step = 8')
    assert sorted(found.refs) == sorted(r["ref"] for r in kept)
    # running it again starts new models (as a tuner's next run gets its own directory)
    again = repo.query(q, dry_run=True).to_dicts()
    assert len(again) == 18 and again[0]["model"] == "alexnet-avgv1-construct-eval2-trial1"


def test_nested_construct_threshold_and_dry_run(lab, capsys) -> None:
    repo, cfg = lab
    q = (f'evaluate m from (construct m2 from m1 where m1.name = "lenet" mutate m1["conv1"].insert = BN("bn1")) '
         f'with config = "{cfg}" vary config.optimizer.lr in [0.2, 0.05] '
         'keep top(1, m["val_loss"], 4) and m["val_acc"] >= 0 as "lenet-bn-tune"')
    models = set(repo.models())
    assert main(["--repo", repo.url, "query", "--dry-run", q]) == 0
    out = capsys.readouterr().out
    assert "lenet-bn-tune-trial1" in out and "lenet-bn-tune-trial2" in out and "2 trials (dry run" in out
    assert not any(m.startswith("lenet-bn-tune") for m in repo.models())
    assert set(repo.models()) - models <= {"lenet-construct"}  # the nested construct, idempotent
    rows = repo.query(q).to_dicts()
    assert sorted(r["status"] for r in rows) == ["kept", "stopped at step 4"]
    kept = next(r for r in rows if r["status"] == "kept")
    assert isinstance(repo.load_module(kept["ref"]).bn1, nn.BatchNorm2d)


def test_statement_errors_point_at_their_item(lab) -> None:
    repo, cfg = lab
    q = f'evaluate m from "query3" with config = "{cfg}" vary config.optimizer.lr in [0.1] and config.optimizer.lrr in [1]'
    with pytest.raises(DQLError) as exc:
        repo.query(q)
    caret = exc.value.args[0].splitlines()[-1].index("^") - 2
    assert caret == q.index("config.optimizer.lrr") and "has no argument 'lrr'" in str(exc.value)
    for bad, message in (("top(0, m[\"val_loss\"], 2)", "k must be a whole number, 1 or more; not 0"),
                         ("top(1, m[\"val_loss\"], 50)", "past the configured end")):
        q = f'evaluate m from "query3" with config = "{cfg}" keep top(1, m["val_loss"], 4) and {bad}'
        with pytest.raises(DQLError, match=message) as exc:
            repo.query(q)
        assert exc.value.args[0].splitlines()[-1].index("^") - 2 == q.index(bad)
    with pytest.raises(DQLError, match="unknown keep rule 'best'"):
        repo.query(f'evaluate m from "query3" with config = "{cfg}" keep best(1, m["val_loss"], 4)')
    with pytest.raises(DQLError, match="nothing to evaluate"):
        repo.query(f'evaluate m from (select m where m.name = "none") with config = "{cfg}"')
    with pytest.raises(DQLError, match="needs a config"):
        repo.query('evaluate m from "query3"')


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_embedded_rows(lab, ray_session, tmp_path) -> None:
    """One rung at the configured end, so one Tune run (each new actor imports torch:
    ~8 s); the rung loop is the embedded executor's (tests/test_trials.py checks two
    rungs, and worker processes, against it)."""
    repo, _ = lab
    cfg = tmp_path / "cfg4.yaml"
    cfg.write_text(CONFIG.replace("max_steps: 8", "max_steps: 4"))
    q = (f'evaluate m from (select m1 where m1.name = "lenet") with config = "{cfg}" '
         'vary config.optimizer.lr in [0.01, 0.2, 0.05] keep top(1, m["val_loss"], 4) as "{}"')
    embedded = repo.query(q.replace("{}", "lenet-emb")).to_dicts()
    remote = repo.query(q.replace("{}", "lenet-ray"), executor="ray", workers=2).to_dicts()
    assert sorted(r["status"] for r in remote) == ["kept", "stopped at step 4", "stopped at step 4"]

    def comparable(rows):
        return [{k: v for k, v in r.items() if k not in ("ref", "name", "created", "size")} for r in rows]

    assert comparable(remote) == comparable(embedded)
    kept = next(r for r in remote if r["status"] == "kept")
    assert repo.version(kept["ref"]).info["step"] == 4 and repo.version(kept["ref"]).parent == "lenet@v1"


def test_configs_a_saved_statement_could_name_are_read_safely(lab, tmp_path) -> None:
    """A saved statement comes with the repository and may name any path: devices,
    FIFOs, huge or binary files are refused before anything reads them whole."""
    import os

    repo, cfg = lab
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00trainer")
    for path, message in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"),
                          (big, "larger than"), (binary, "does not parse")):
        repo.save_query("trap", f'evaluate m from "query3" with config = "{path}"')
        with pytest.raises(DQLError, match=message):  # the user's statement runs the saved one first
            repo.query(f'evaluate m from "trap" with config = "{cfg}"')
