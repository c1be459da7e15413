"""evaluate's training engine (modelhub_torch.trials): grid expansion, auto values,
successive halving with committed rungs, per-layer learning rates, config safety,
failures, and the same rows from worker processes (the Ray executor: tests/test_dql_evaluate.py)."""

from __future__ import annotations

import pytest
import torch
from dql_fixture import LeNetDigits as LeNet

from modelhub_torch import Repository
from modelhub_torch.node_patterns import node_pattern
from modelhub_torch.trials import (
    EvaluationError,
    Threshold,
    TopRule,
    Vary,
    auto_values,
    plan_evaluation,
    run_evaluation,
)

CONFIG = """
seed_everything: 3
trainer: {max_steps: 12}
data: {class_path: modelhub_torch.trials.digits.DigitsDataModule, init_args: {batch_size: 32}}
optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05}}
"""
LR = ("config", "optimizer", "lr")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("trials")
    torch.manual_seed(0)
    repo = Repository.init(root / "hub")
    source = repo.commit(LeNet(), "lenet")
    cfg = root / "cfg.yaml"
    cfg.write_text(CONFIG)
    return repo, source, str(cfg), root


def _plan(hub, vary, keep=(), name=None, config=None, **kw):
    repo, source, cfg, _ = hub
    return plan_evaluation(repo.store, [source], config or cfg, list(vary), list(keep), name=name,
                           statement="evaluate m ...", **kw)


def _chain(repo, ref):
    out = []
    while ref is not None:
        v = repo.version(ref)
        out.append(v.ref)
        ref = v.parent
    return out


def test_patterns_and_auto_values() -> None:
    import re

    assert re.match(node_pattern("conv*"), "conv12") and not re.match(node_pattern("conv*"), "fc1")
    assert re.match(node_pattern("conv[1,3]"), "conv3") and not re.match(node_pattern("conv[1,3]"), "conv2")
    assert re.match(node_pattern("conv($1)?"), "conv1") and not re.match(node_pattern("c?"), "conv1")
    assert auto_values("lr", 0.01) == pytest.approx((0.001, 0.01, 0.1))
    assert auto_values("batch_size", 32) == (16, 32, 64)
    assert auto_values("max_steps", 1) == (1, 2)
    assert auto_values("momentum", 0.5) == (0.25, 0.5, 1.0)
    assert auto_values("weight_decay", 0.0) == (0.0, 1e-4, 1e-3)
    with pytest.raises(ValueError, match=r"in \[\.\.\.\]"):
        auto_values("loss", "mse")


def test_grid_expansion_and_describe(hub) -> None:
    plan = _plan(hub, [Vary(LR, (0.1, 0.01), 0), Vary(("config", "data", "batch_size"), None, 1),
                       Vary(("config", "net", "conv*", "lr"), None, 2)],
                 [TopRule(2, "val_loss", 10), TopRule(4, "val_loss", 5)], name="grid")
    assert len(plan.trials) == 2 * 3 * 3 and plan.end_steps == 12
    assert [r.steps for r in plan.rungs] == [5, 10]
    rows = plan.describe()
    assert rows[0] == {"trial": 1, "source": "lenet@v1", "model": "grid-trial1", "config.optimizer.lr": 0.1,
                       "config.data.batch_size": 16, 'config.net["conv*"].lr': pytest.approx(0.005)}
    assert [r['config.net["conv*"].lr'] for r in rows[:3]] == pytest.approx([0.005, 0.05, 0.5])  # the optimizer's
    assert rows[-1]["config.optimizer.lr"] == 0.01 and rows[-1]["config.data.batch_size"] == 64
    t = plan.trials[4]
    assert t.config["optimizer"]["init_args"]["lr"] == 0.1 and t.config["data"]["init_args"]["batch_size"] == 32
    assert t.layers == (("conv*", {"lr": pytest.approx(0.05)}),) and t.seed == 3 + 5
    assert plan.metrics == ["val_loss"]


def test_successive_halving_keeps_the_best_and_commits_every_rung(hub) -> None:
    repo = hub[0]
    plan = _plan(hub, [Vary(LR, (0.01, 0.2, 0.05))], [TopRule(1, "val_loss", 5)], name="halving")
    rows = run_evaluation(repo.store, plan)
    assert [r["trial"] for r in rows] == [1, 2, 3]
    kept = [r for r in rows if r["status"] == "kept"]
    assert len(kept) == 1 and kept[0]["steps"] == 12
    at_5 = {}
    for r in rows:
        first = repo.version(f"halving-trial{r['trial']}@v1")
        assert first.info["step"] == 5 and first.metrics["step"] == 5 and first.parent == "lenet@v1"
        assert first.info["source"] == "lenet@v1" and first.info["trial"] == r["trial"]
        assert first.hparams["config.optimizer.lr"] == r["config.optimizer.lr"]
        at_5[r["trial"]] = first.metrics["val_loss"]
        if r["status"] != "kept":
            assert r["status"] == "stopped at step 5" and r["steps"] == 5
            assert r["ref"] == first.ref and repo.version(r["ref"]).info["step"] == 5
    best = min(at_5, key=lambda n: (at_5[n], n))
    assert kept[0]["trial"] == best
    last = repo.version(kept[0]["ref"])
    assert last.info["step"] == 12 and last.metrics["val_loss"] == kept[0]["val_loss"]
    assert _chain(repo, last.ref) == [last.ref, f"halving-trial{best}@v1", "lenet@v1"]
    assert last.resumable is True
    net = repo.load_module(last.ref)  # the trial's network rebuilds like any committed module
    state = repo.load_state_dict(last.ref)
    assert set(state) == set(LeNet().state_dict())
    assert torch.equal(net.state_dict()["fc2.weight"], state["fc2.weight"])


def test_per_layer_learning_rate_groups(hub) -> None:
    repo, source = hub[0], hub[1]
    plan = _plan(hub, [Vary(("config", "net", "conv*", "lr"), (0.0,))], name="perlayer")
    (row,) = run_evaluation(repo.store, plan)
    assert row["status"] == "kept" and row["steps"] == 12
    before, after = repo.load_state_dict(source.ref), repo.load_state_dict(row["ref"])
    for key in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    groups = repo.version(row["ref"]).hparams["layers"]
    assert groups == {"conv*": {"lr": 0.0}}


def test_thresholds_stop_trials(hub) -> None:
    repo = hub[0]
    plan = _plan(hub, [Vary(LR, (0.05,))], [TopRule(1, "val_loss", 4), Threshold("val_acc", ">", 2.0)],
                 name="thresh")
    (row,) = run_evaluation(repo.store, plan)
    assert row["status"].startswith("below threshold (val_acc ") and row["status"].endswith("<= 2)")
    assert row["steps"] == 4 and repo.version(row["ref"]).info["status"] == row["status"]


def test_class_paths_outside_the_allow_list_are_refused(hub, tmp_path) -> None:
    import sys

    for path in ("os.system", "subprocess.Popen", "never_imported_evil_mod.Data"):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(CONFIG.replace("modelhub_torch.trials.digits.DigitsDataModule", path))
        with pytest.raises(EvaluationError, match=f"{path}.*not allowed.*--import") as exc:
            _plan(hub, [Vary(LR, (0.1,))], config=str(cfg))
        assert exc.value.index is None
    assert "never_imported_evil_mod" not in sys.modules
    with pytest.raises(EvaluationError, match="cannot be imported"):
        _plan(hub, [], config=str(cfg), imports=("never_imported_evil_mod",))
    cfg.write_text(CONFIG.replace("torch.optim.SGD", "torch.optim.lr_scheduler.StepLR"))
    with pytest.raises(EvaluationError, match=r"not a torch\.optim\.optimizer\.Optimizer subclass"):
        _plan(hub, [], config=str(cfg))
    with pytest.raises(EvaluationError, match="does not exist"):
        _plan(hub, [], config=str(tmp_path / "missing.yaml"))


def test_bad_vary_paths_and_rules_name_their_item(hub) -> None:
    cases = [
        ([Vary(LR, (0.1,), 0), Vary(("config", "optimizer", "lrr"), (1,), 2)], [], 2, "vary", "has no argument 'lrr'"),
        ([Vary(("config", "nope", "x"), (1,), 1)], [], 1, "vary", "unknown config path"),
        ([Vary(("config", "net", "bn*", "lr"), (0.1,), 3)], [], 3, "vary", "matches no layer.*conv1"),
        ([Vary(LR, None, 0)], [TopRule(1, "val_loss", 5), TopRule(1, "val_loss", 50)], 1, "keep", "past the configured end"),
        ([], [TopRule(0, "val_loss", 5)], 0, "keep", "k must be at least 1"),
        ([], [Threshold("val_f1", ">", 0.5)], 0, "keep", "trials report"),
    ]
    for vary, keep, index, part, message in cases:
        with pytest.raises(EvaluationError, match=message) as exc:
            _plan(hub, vary, keep)
        assert (exc.value.index, exc.value.part) == (index, part)


def test_a_failing_trial_does_not_stop_the_others(hub) -> None:
    repo = hub[0]
    plan = _plan(hub, [Vary(LR, (0.05, -1.0))], name="failing")
    rows = run_evaluation(repo.store, plan)
    assert rows[0]["status"] == "kept" and rows[0]["steps"] == 12
    assert rows[1]["status"].startswith("failed: ") and "learning rate" in rows[1]["status"]
    assert rows[1]["ref"] is None and rows[1]["steps"] == 0


def _comparable(rows):
    return [{k: v for k, v in r.items() if k != "ref"} for r in rows]


def test_worker_processes_give_the_same_rows(hub) -> None:
    repo = hub[0]
    keep = [TopRule(1, "val_loss", 4)]
    vary = [Vary(LR, (0.01, 0.2))]
    one = run_evaluation(repo.store, _plan(hub, vary, keep, name="w1"))
    two = run_evaluation(repo.store, _plan(hub, vary, keep, name="w2"), workers=2)
    assert _comparable(one) == _comparable(two)
    assert [r["ref"].split("@")[1] for r in one] == [r["ref"].split("@")[1] for r in two]
