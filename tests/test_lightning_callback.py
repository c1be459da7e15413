"""ModelHubCheckpoint with real Trainer runs (no mocks of Lightning)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_bit_equal
from lightning_module import TinyMLP, digits_loaders, trainer
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from modelhub_torch import ModelHubError, Repository
from modelhub_torch.callbacks import ModelHubCheckpoint, make_url

HERE = Path(__file__).resolve().parent


class CaptureOptimizer(Callback):
    """Optimizer and epoch as the Trainer has them right after a restore."""

    def on_train_start(self, trainer, pl_module):
        self.epoch = trainer.current_epoch
        self.step = trainer.global_step
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.scheduler = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())


def fit(root, callbacks, epochs=3, module=None, **kw):
    torch.manual_seed(0)
    module = module or TinyMLP()
    train, val = digits_loaders()
    t = trainer(root, callbacks, max_epochs=epochs)
    t.fit(module, train, val, **kw)
    return t, module


def test_three_epochs_make_three_versions_with_metadata(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    cb = ModelHubCheckpoint(repo, "mlp", monitor="val_loss")
    t, module = fit(tmp_path, [cb])
    vs = repo.versions("mlp")
    assert [v.number for v in vs] == [1, 2, 3]
    assert [v.info["epoch"] for v in vs] == [0, 1, 2]
    steps_per_epoch = 10  # 640 samples / 64
    assert [v.info["global_step"] for v in vs] == [10, 20, 30][: len(vs)] == [steps_per_epoch * (i + 1) for i in range(3)]
    assert [v.parent for v in vs] == [None, "mlp@v1", "mlp@v2"]
    for v in vs:
        assert set(v.metrics) >= {"val_loss", "val_acc", "train_loss"}
        assert v.hparams == {"hidden": 32, "lr": 5e-3, "fail_at_step": -1}
        assert v.info["module"] == "lightning_module.TinyMLP"
        assert v.info["lightning_version"] and v.info["torch_version"] == torch.__version__
        assert v.info["monitor"] == "val_loss" and v.info["monitor_value"] == v.metrics["val_loss"]
    # the last version's metrics are the trainer's final ones; its weights the module's
    assert vs[-1].metrics["val_loss"] == pytest.approx(float(t.callback_metrics["val_loss"]))
    latest = repo.load("mlp@latest")
    assert_bit_equal(dict(latest["state_dict"]), dict(module.state_dict()))
    best = min(vs, key=lambda v: v.metrics["val_loss"])
    assert repo.version("mlp@best").ref == best.ref == cb.best_model_ref
    assert cb.best_model_path == make_url(repo.url, best.ref)
    assert cb.last_model_ref == "mlp@v3"
    assert set(cb.best_k_models) == {make_url(repo.url, f"mlp@v{n}") for n in (1, 2, 3)}
    # the network is rebuilt from the repository alone, with the version's weights
    rebuilt = repo.load_module("mlp@best")
    original = TinyMLP()
    original.load_state_dict(repo.load_state_dict(best.ref))
    x = torch.randn(7, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), original.eval()(x))
    # Lightning opens the paths the callback exposes, and its "best"/"last" shortcuts
    loaded = TinyMLP.load_from_checkpoint(cb.best_model_path)
    assert_bit_equal(dict(loaded.state_dict()), dict(repo.load_state_dict(best.ref)))
    _, val = digits_loaders()
    (res,) = t.validate(module, val, ckpt_path="best", verbose=False)
    assert res["val_loss"] == pytest.approx(best.metrics["val_loss"], rel=1e-6)
    assert_bit_equal(dict(module.state_dict()), dict(repo.load_state_dict(best.ref)))
    (res,) = t.validate(module, val, ckpt_path="last", verbose=False)
    assert res["val_loss"] == pytest.approx(vs[-1].metrics["val_loss"], rel=1e-6)


def test_resume_from_version_two_restores_optimizer_bit_for_bit(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    fit(tmp_path, [ModelHubCheckpoint(repo, "mlp", trainer_state="all")])
    saved = repo.load("mlp@v2")
    capture = CaptureOptimizer()
    cb = ModelHubCheckpoint(repo, "mlp", trainer_state="all")
    fit(tmp_path, [cb, capture], epochs=4, ckpt_path=make_url(repo.url, "mlp@v2"))
    assert capture.epoch == 2 and capture.step == 20
    assert_bit_equal(capture.optimizer["state"], saved["optimizer_states"][0]["state"])
    assert capture.optimizer["param_groups"] == saved["optimizer_states"][0]["param_groups"]
    assert capture.scheduler == saved["lr_schedulers"][0]
    # the resumed run continues the history: v4, v5 descend from v2
    vs = {v.ref: v for v in repo.versions("mlp")}
    assert vs["mlp@v4"].parent == "mlp@v2" and vs["mlp@v5"].parent == "mlp@v4"
    assert vs["mlp@v4"].info["epoch"] == 2 and vs["mlp@v4"].info["resumed_from"].endswith("#mlp@v2")


def test_trainer_state_latest_keeps_state_only_where_promised(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    cb = ModelHubCheckpoint(repo, "mlp", monitor="val_acc", mode="max", save_top_k=1)
    fit(tmp_path, [cb], epochs=4)
    keep = {"mlp@v4", cb.best_model_ref}
    for v in repo.versions("mlp"):
        ckpt = repo.load(v.ref)
        assert ("optimizer_states" in ckpt) == (v.ref in keep), v.ref
        assert "state_dict" in ckpt and ckpt["epoch"] == v.info["epoch"]
    all_repo = Repository.init(tmp_path / "hub-all")
    fit(tmp_path, [ModelHubCheckpoint(all_repo, "mlp", monitor="val_acc", mode="max", save_top_k=1, trainer_state="all")], epochs=4)
    assert all(("optimizer_states" in all_repo.load(v.ref)) for v in all_repo.versions("mlp"))
    assert repo.stats()["stored_bytes"] < 0.75 * all_repo.stats()["stored_bytes"]
    assert repo.verify() == []


class RecordingCheckpoint(ModelCheckpoint):
    """The stock ModelCheckpoint, noting the epoch of every file it writes."""

    def _save_checkpoint(self, trainer, filepath):
        super()._save_checkpoint(trainer, filepath)
        self.saved_epochs = [*getattr(self, "saved_epochs", []), trainer.current_epoch]


@pytest.mark.parametrize("top_k,mode,monitor", [(2, "min", "val_loss"), (1, "max", "val_acc"), (3, "max", "val_acc")])
def test_top_k_picks_what_model_checkpoint_picks(tmp_path, top_k, mode, monitor) -> None:
    repo = Repository.init(tmp_path / "hub")
    stock = RecordingCheckpoint(dirpath=tmp_path / "ck", monitor=monitor, mode=mode, save_top_k=top_k,
                                filename="{epoch}")
    ours = ModelHubCheckpoint(repo, "mlp", monitor=monitor, mode=mode, save_top_k=top_k)
    fit(tmp_path, [stock, ours], epochs=5)

    def epoch_of_file(path: str) -> int:
        return int(re.search(r"epoch=(\d+)", path).group(1))

    def epoch_of_ref(url: str) -> int:
        return repo.version(ours.ref_of(url)).info["epoch"]

    assert epoch_of_ref(ours.best_model_path) == epoch_of_file(stock.best_model_path)
    assert float(ours.best_model_score) == float(stock.best_model_score)
    assert sorted(epoch_of_ref(p) for p in ours.best_k_models) == sorted(epoch_of_file(p) for p in stock.best_k_models)
    # a version wherever ModelCheckpoint wrote a file, and none deleted
    assert [v.info["epoch"] for v in repo.versions("mlp")] == stock.saved_epochs


def test_exception_mid_epoch_leaves_a_valid_version(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    cb = ModelHubCheckpoint(repo, "mlp", save_on_exception=True)
    with pytest.raises(RuntimeError, match="planned failure"):
        fit(tmp_path, [cb], module=TinyMLP(fail_at_step=14))
    vs = repo.versions("mlp")
    assert [v.info["global_step"] for v in vs] == [10, 14]
    crashed = repo.load("mlp@latest")
    assert crashed["global_step"] == 14 and "optimizer_states" in crashed
    assert repo.verify() == []
    # and it is a checkpoint Lightning resumes from
    capture = CaptureOptimizer()
    fit(tmp_path, [capture], epochs=2, ckpt_path=make_url(repo.url, "mlp@latest"))
    assert capture.step == 14
    assert_bit_equal(capture.optimizer["state"], crashed["optimizer_states"][0]["state"])


def test_async_save_stores_the_same_versions(tmp_path) -> None:
    sync_repo = Repository.init(tmp_path / "sync")
    async_repo = Repository.init(tmp_path / "async")
    fit(tmp_path, [ModelHubCheckpoint(sync_repo, "mlp", trainer_state="all")])
    cb = ModelHubCheckpoint(async_repo, "mlp", async_save=True, trainer_state="all")
    fit(tmp_path, [cb])
    assert cb._pending == []
    for n in (1, 2, 3):
        a, b = sync_repo.load(f"mlp@v{n}"), async_repo.load(f"mlp@v{n}")
        assert_bit_equal(a["state_dict"], b["state_dict"])
        assert_bit_equal(a["optimizer_states"], b["optimizer_states"])


def test_weights_only_and_model_name_default(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    fit(tmp_path, [ModelHubCheckpoint(repo, save_weights_only=True)], epochs=2)
    assert repo.models() == ["TinyMLP"]
    ckpt = repo.load("TinyMLP@v2")
    assert "optimizer_states" not in ckpt and "state_dict" in ckpt
    assert repo.version("TinyMLP@v2").info["trainer_state"] is False


def test_ddp_two_processes_write_each_version_once(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GLOBAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(HERE / "scripts" / "ddp_fit.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == {**ranks[1], "rank": 0}
    repo = Repository(tmp_path / "hub")
    vs = repo.versions("mlp")
    assert [v.number for v in vs] == [1, 2, 3]
    assert [v.info["world_size"] for v in vs] == [2, 2, 2]
    assert ranks[0]["last"].endswith("#mlp@v3") and ranks[0]["best"] == repo.version("mlp@best").ref
    assert repo.verify() == []


def test_step_trigger_and_resume_history_continue(tmp_path) -> None:
    """every_n_train_steps saves mid-epoch; the callback's own state (best_k_models,
    the versions holding trainer state) comes back with a resume."""
    repo = Repository.init(tmp_path / "hub")
    cb = ModelHubCheckpoint(repo, "mlp", every_n_train_steps=4, monitor="train_loss_step", save_top_k=2)
    module = TinyMLP()
    module.training_step = _logging_step(module)
    fit(tmp_path, [cb], epochs=2, module=module)
    vs = repo.versions("mlp")
    assert [v.info["global_step"] for v in vs] == [4, 8, 12, 16, 20]
    with_state = [v.ref for v in vs if "optimizer_states" in repo.load(v.ref)]
    assert set(with_state) == {"mlp@v5", *(cb.ref_of(p) for p in cb.best_k_models)}
    cb2 = ModelHubCheckpoint(repo, "mlp", every_n_train_steps=4, monitor="train_loss_step", save_top_k=2)
    module = TinyMLP()
    module.training_step = _logging_step(module)
    fit(tmp_path, [cb2], epochs=3, module=module, ckpt_path=make_url(repo.url, "mlp@v5"))
    assert set(cb2.best_k_models) <= {make_url(repo.url, f"mlp@v{n}") for n in range(1, 9)}
    assert [v.info["global_step"] for v in repo.versions("mlp")][5:] == [24, 28]
    with_state = {v.ref for v in repo.versions("mlp") if "optimizer_states" in repo.load(v.ref)}
    assert with_state == {"mlp@v7", *(cb2.ref_of(p) for p in cb2.best_k_models)}
    assert repo.verify() == []


def _logging_step(module):
    """A training step that logs its loss per step (the monitor of a step trigger)."""
    from torch.nn import functional as F

    def step(batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(module(x), y)
        module.log("train_loss_step", loss, on_step=True, on_epoch=False)
        return loss

    return step


@pytest.mark.parametrize("async_save", [False, True])
def test_a_failed_commit_stops_the_run_with_its_error(tmp_path, async_save: bool) -> None:
    repo = Repository.init(tmp_path / "hub")
    calls = {"n": 0}
    real_commit = repo.commit

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real_commit(*args, **kwargs)

    repo.commit = flaky  # type: ignore[method-assign]
    cb = ModelHubCheckpoint(repo, "mlp", async_save=async_save)
    with pytest.raises((OSError, ModelHubError), match="disk full"):  # async: wrapped
        fit(tmp_path, [cb], epochs=4)
    assert [v.number for v in repo.versions("mlp")] == [1]
    assert repo.verify() == []
