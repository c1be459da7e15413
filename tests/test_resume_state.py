"""Which versions can resume training, and what happens when one cannot.

``trainer_state="latest"`` prunes the optimizer, scheduler and callback state of older
versions: those are weights-only. Pruning records that (``info["trainer_state"]``
turns false), ``modelhub_torch.resumable`` reads it off the skeleton, and
``trainer.fit(ckpt_path=<a weights-only version>)`` with ModelHubCheckpoint stops
with an error naming the nearest version that can resume, instead of Lightning's
KeyError. Loading such a version (load_from_checkpoint, validate/test) still works.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_bit_equal
from lightning_module import TinyMLP, digits_loaders, trainer
from torch.nn import functional as F

from modelhub_torch import ModelHubError, Repository
from modelhub_torch.callbacks import ModelHubCheckpoint, make_url
from modelhub_torch.callbacks.resume import nearest_resumable, resume_refusal
from modelhub_torch.resumable import trainer_state

README = Path(__file__).resolve().parent.parent / "README.md"
STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks")


def _checkpoint(epoch: int, with_state: bool = True) -> dict:
    """A small checkpoint shaped like Lightning's, with real Adam state."""
    torch.manual_seed(epoch)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    ckpt = {"epoch": epoch, "global_step": 10 * (epoch + 1), "pytorch-lightning_version": "2.6.6",
            "state_dict": model.state_dict(), "loops": {"fit_loop": {}}}
    if with_state:
        ckpt.update(callbacks={"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
                    optimizer_states=[opt.state_dict()], lr_schedulers=[])
    return copy.deepcopy(ckpt)


def _skeleton(repo: Repository, ref: str):
    return repo.manifest(repo.resolve(ref)).skeleton


# ------------------------------------------------------------------ the helper
def test_trainer_state_reads_the_skeleton(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    repo.commit(_checkpoint(0), "run")
    repo.commit(_checkpoint(1, with_state=False), "run")
    repo.commit({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, "epoch_only")
    repo.commit(torch.nn.Linear(2, 2), "module")
    repo.commit({"w": torch.ones(2)}, "plain")
    repo.commit([torch.ones(2)], "listy")
    assert trainer_state(_skeleton(repo, "run@v1")) is True
    assert trainer_state(_skeleton(repo, "run@v2")) is False
    assert trainer_state(_skeleton(repo, "epoch_only@v1")) is False  # a trainer checkpoint, no optimizer
    assert trainer_state(_skeleton(repo, "module@v1")) is None
    assert trainer_state(_skeleton(repo, "plain@v1")) is None
    assert trainer_state(_skeleton(repo, "listy@v1")) is None
    assert trainer_state({"$dict": 5}) is None and trainer_state(None) is None  # damaged: no answer


# --------------------------------------------------------------------- prune
def test_prune_records_that_the_version_lost_its_trainer_state(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    for epoch in range(3):
        repo.commit(_checkpoint(epoch), "run", info={"trainer_state": True, "epoch": epoch})
    repo.commit(_checkpoint(5), "noinfo")
    repo.commit({"w": torch.ones(2), "extra": torch.zeros(2)}, "plain", info={"note": "x"})

    v = repo.prune("run@v1", STATE_KEYS)
    assert v.info == {"trainer_state": False, "epoch": 0}
    assert repo.version("run@v1").info["trainer_state"] is False
    assert trainer_state(_skeleton(repo, "run@v1")) is False
    # only the callbacks' state: Lightning can still resume, so the record stays true
    assert repo.prune("run@v2", ("callbacks",)).info["trainer_state"] is True
    # a version committed without the key keeps its metadata as committed; whether it
    # resumes is read from what it stores (the skeleton)
    pruned = repo.prune("noinfo@v1", STATE_KEYS)
    assert "trainer_state" not in pruned.info and pruned.resumable is False
    # pruning what is no trainer state leaves info alone
    assert repo.prune("plain@v1", ("extra",)).info == {"note": "x"}
    assert repo.version("plain@v1").resumable is None
    assert repo.version("run@v3").info["trainer_state"] is True
    assert repo.query("select m where m.info.trainer_state = false").refs == ["run@v1"]
    assert repo.query("select m where m.resumable = false").refs == ["noinfo@v1", "run@v1"]
    assert repo.verify() == []


# ------------------------------------------------------------ the refusal text
def test_the_refusal_names_the_nearest_resumable_version(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    for epoch in range(6):
        repo.commit(_checkpoint(epoch), "run")
    for n in (1, 3, 4, 5):
        repo.prune(f"run@v{n}", STATE_KEYS)
    repo.tag("run@v2", "best")
    assert resume_refusal(repo, "run@v2") is None and resume_refusal(repo, "run@latest") is None
    assert nearest_resumable(repo, repo.version("run@v3")).ref == "run@v2"
    assert nearest_resumable(repo, repo.version("run@v4")).ref == "run@v6"  # a tie: the newer
    assert resume_refusal(repo, "run@v4") == (
        "cannot resume training from run@v4: its trainer state (optimizer, scheduler, callbacks) "
        "was pruned (ModelHubCheckpoint's trainer_state=\"latest\" keeps it only for the newest "
        "and the best versions); resume from run@v6 (the latest), or load weights only with "
        "load_from_checkpoint (trainer.validate/test(ckpt_path=...) work too). "
        "ModelHubCheckpoint(trainer_state=\"all\") keeps every version resumable."
    )
    assert "; resume from run@v2 (run@best), or load weights only" in resume_refusal(repo, "run@v1")
    # saved weights-only from the start, and no version of the model can resume
    repo.commit(_checkpoint(0, with_state=False), "lean", info={"trainer_state": False})
    msg = resume_refusal(repo, "lean@v1")
    assert msg.startswith("cannot resume training from lean@v1: it holds no trainer state "
                          "(saved with save_weights_only=True, or pruned); no version of lean can "
                          "resume: start a new fit from its weights, or load weights only")
    repo.commit({"w": torch.ones(2)}, "plain")
    assert resume_refusal(repo, "plain@v1") is None  # no trainer checkpoint: Lightning says why


# ------------------------------------------------------------------ Lightning
def _fit(root, callbacks, epochs, **kw):
    torch.manual_seed(0)
    module = TinyMLP()
    train, val = digits_loaders(n=128)
    t = trainer(root, callbacks, max_epochs=epochs)
    t.fit(module, train, val, **kw)
    return t, module


def test_fit_from_a_pruned_version_stops_with_the_nearest_resumable_one(tmp_path) -> None:
    repo = Repository.init(tmp_path / "hub")
    cb = ModelHubCheckpoint(repo, "mlp", monitor="val_acc", mode="max", save_top_k=1)
    _fit(tmp_path, [cb], epochs=4)
    versions = repo.versions("mlp")
    resumable = {v.ref for v in versions if trainer_state(_skeleton(repo, v.ref))}
    assert resumable == {"mlp@v4", cb.best_model_ref}
    pruned = next(v for v in versions if v.ref not in resumable)
    assert pruned.info["trainer_state"] is False
    nearest = min(resumable, key=lambda r: (abs(int(r.rpartition("@v")[2]) - pruned.number), -int(r.rpartition("@v")[2])))
    url = make_url(repo.url, pruned.ref)

    again = ModelHubCheckpoint(repo, "mlp", monitor="val_acc", mode="max", save_top_k=1, save_on_exception=True)
    with pytest.raises(ModelHubError) as exc:
        _fit(tmp_path, [again], epochs=6, ckpt_path=url)
    msg = str(exc.value)
    assert not isinstance(exc.value, KeyError)
    assert msg.startswith(f"cannot resume training from {pruned.ref}: its trainer state (optimizer, "
                          "scheduler, callbacks) was pruned (ModelHubCheckpoint's trainer_state=\"latest\"")
    assert re.search(rf"; resume from {re.escape(nearest)} \([^)]*\), or load weights only with load_from_checkpoint", msg)
    assert [v.ref for v in repo.versions("mlp")] == [v.ref for v in versions]  # nothing saved on the refusal

    # weights-only versions still load, and evaluate through ckpt_path
    loaded = TinyMLP.load_from_checkpoint(url)
    assert_bit_equal(dict(loaded.state_dict()), dict(repo.load_state_dict(pruned.ref)))
    _, val = digits_loaders(n=128)
    t = trainer(tmp_path, [ModelHubCheckpoint(repo, "mlp")], max_epochs=1)
    (res,) = t.validate(TinyMLP(), val, ckpt_path=url, verbose=False)
    assert res["val_acc"] == pytest.approx(pruned.metrics["val_acc"], rel=1e-6)
    # and the version the message names resumes
    t, _ = _fit(tmp_path, [ModelHubCheckpoint(repo, "mlp")], epochs=6, ckpt_path=make_url(repo.url, nearest))
    first = repo.version("mlp@v5")  # the refused fit and validate saved nothing
    assert first.info["resumed_from"].endswith(f"#{nearest}") and first.parent == nearest
    assert first.info["global_step"] == repo.version(nearest).info["global_step"] + 2  # one more epoch
    assert t.global_step == 12  # 6 epochs of 2 steps


class DigitsCNN(TinyMLP):
    """TinyMLP with its own loaders and a test step, as the README's module has."""

    def train_dataloader(self):
        return digits_loaders(n=128)[0]

    def val_dataloader(self):
        return digits_loaders(n=128)[1]

    def test_dataloader(self):
        return digits_loaders(n=128)[1]

    def test_step(self, batch, _):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))


def test_the_readme_lightning_example_runs_as_written(tmp_path, monkeypatch) -> None:
    block = re.search(r"## Lightning\n```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    assert 'ckpt_path="modelhub:///abs/hub#digits-cnn@latest"' in block  # resumes what keeps its state
    hub_dir = tmp_path / "hub"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    train_dl, val_dl = digits_loaders(n=128)

    class pl:
        @staticmethod
        def Trainer(max_epochs, callbacks):
            return trainer(tmp_path, callbacks, max_epochs=max_epochs)

    scope = {"pl": pl, "module": DigitsCNN(), "train_dl": train_dl, "val_dl": val_dl, "DigitsCNN": DigitsCNN}
    exec(block.replace("/abs/hub", str(hub_dir)), scope)

    hub, t = scope["hub"], scope["trainer"]
    repo = Repository(hub_dir)
    assert [v.number for v in repo.versions("digits-cnn")][:12] == list(range(1, 13))
    assert hub.best_model_path == make_url(repo.url, hub.best_model_ref)
    assert repo.version("digits-cnn@best").ref == hub.best_model_ref
    latest_of_first_fit = repo.version("digits-cnn@v12")
    assert trainer_state(_skeleton(repo, latest_of_first_fit.ref)) is True
    assert t.global_step == latest_of_first_fit.info["global_step"]  # the resume restored the step
    assert trainer_state(_skeleton(repo, "digits-cnn@v7")) is (hub.best_model_ref == "digits-cnn@v7")
