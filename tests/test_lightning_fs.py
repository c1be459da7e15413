"""modelhub:// URLs and ModelHubCheckpointIO, driven by real Lightning Trainer runs.

A 2-layer MLP on a slice of scikit-learn's digits: 256 samples in batches of 64, so
every epoch is 4 optimizer steps. Adam, so the optimizer state holds tensors that a
resume must bring back bit for bit.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_bit_equal, unique_memory_url
from pytorch_lightning.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from modelhub_torch.callbacks.fs import (
    ModelHubFileSystem,
    ModelHubURLError,
    ReadOnlyError,
    VersionNotFoundError,
    make_url,
    parse_url,
)
from modelhub_torch.callbacks.io import ModelHubCheckpointIO
from modelhub_torch.errors import ModelHubError, PickleRequiredError
from modelhub_torch.repository import Repository

pytestmark = [
    pytest.mark.filterwarnings("ignore:The '\\w+_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

STEPS_PER_EPOCH = 4


class MLP(pl.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.at_start: dict[str, Any] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_train_start(self) -> None:
        # what the trainer restored, before the first step of the resumed run changes it
        self.at_start = {
            "epoch": self.trainer.current_epoch,
            "global_step": self.trainer.global_step,
            "optimizer": copy.deepcopy(self.trainer.optimizers[0].state_dict()),
            "weights": copy.deepcopy(self.state_dict()),
        }


def digits_loader() -> DataLoader:
    d = load_digits()
    x = torch.tensor(d.data[:256], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:256], dtype=torch.int64)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)


def make_trainer(root: Path, max_epochs: int, **kwargs: Any) -> pl.Trainer:
    kwargs.setdefault("enable_checkpointing", bool(kwargs.get("callbacks")))
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


@pytest.fixture
def trained(tmp_path: Path) -> dict[str, Any]:
    """A 2-epoch Lightning checkpoint written by ``trainer.save_checkpoint`` and
    committed as ``m@v1`` of a local repository."""
    torch.manual_seed(0)
    module = MLP(hidden=24)
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, digits_loader())
    file = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(file)
    ckpt = torch.load(file, weights_only=True)
    repo = Repository.init(tmp_path / "hub")
    repo.commit(ckpt, "m")
    return {"repo": repo, "path": tmp_path / "hub", "file": file, "ckpt": ckpt}


# ------------------------------------------------------------------ URLs
def test_make_and_parse_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert make_url("hub", "m@v2") == f"modelhub://{tmp_path}/hub#m@v2"  # made absolute
    assert make_url(str(tmp_path / "hub"), "m@best") == f"modelhub://{tmp_path}/hub#m@best"
    assert make_url(f"file://{tmp_path}/hub", "m@v1") == f"modelhub://{tmp_path}/hub#m@v1"
    assert make_url("memory://hub", "m@latest") == "modelhub://memory://hub#m@latest"
    assert parse_url("modelhub:///abs/hub#m@v2") == ("/abs/hub", "m@v2")
    assert parse_url("modelhub://rel/hub#m@v2") == ("rel/hub", "m@v2")
    assert parse_url("modelhub://memory://hub#m@latest") == ("memory://hub", "m@latest")
    assert parse_url("/dir#with#hash/hub#m@v1") == ("/dir#with#hash/hub", "m@v1")  # fsspec-stripped
    for url in [make_url("hub", "m@v2"), make_url("memory://hub", "m@latest")]:
        assert make_url(*parse_url(url)) == url
    with pytest.raises(ModelHubURLError, match="names no version: append '#<ref>'"):
        parse_url("modelhub:///abs/hub")
    with pytest.raises(ModelHubURLError, match="names no repository"):
        parse_url("modelhub://#m@v1")
    with pytest.raises(ModelHubURLError, match="'::'"):
        make_url("/odd::dir", "m@v1")
    with pytest.raises(ModelHubURLError, match="bad ref"):
        make_url("hub", "")


def test_protocol_is_registered_by_entry_point_in_a_fresh_interpreter(tmp_path: Path) -> None:
    code = (
        "import fsspec, sys; cls = fsspec.get_filesystem_class('modelhub'); "
        "print(cls.__module__ + '.' + cls.__name__)"
    )
    # cwd elsewhere: `python -c` puts the cwd on sys.path, and a stale
    # modelhub_torch.egg-info in a checkout would shadow the installed entry points
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "modelhub_torch.callbacks.fs.ModelHubFileSystem"


# --------------------------------------------------- (a) trainer.fit resume
def test_fit_resumes_from_modelhub_url(trained: dict[str, Any], tmp_path: Path) -> None:
    saved = trained["ckpt"]
    assert saved["epoch"] == 2 and saved["global_step"] == 2 * STEPS_PER_EPOCH
    url = make_url(trained["path"], "m@v1")

    torch.manual_seed(1)  # different initial weights: only the restore can make them equal
    module = MLP(hidden=24)
    trainer = make_trainer(tmp_path / "resume", max_epochs=3)
    trainer.fit(module, digits_loader(), ckpt_path=url)

    assert trainer.ckpt_path == url
    start = module.at_start
    assert start["epoch"] == 2 and start["global_step"] == 2 * STEPS_PER_EPOCH
    assert_bit_equal(start["optimizer"], saved["optimizer_states"][0])
    assert len(start["optimizer"]["state"]) == 4  # Adam moments of 4 parameter tensors
    assert all(torch.count_nonzero(s["exp_avg"]) > 0 for s in start["optimizer"]["state"].values())
    for k, w in saved["state_dict"].items():
        assert torch.equal(start["weights"][k], w), k
    # training went on from there: one more epoch of steps
    assert trainer.current_epoch == 3
    assert trainer.global_step == 3 * STEPS_PER_EPOCH


def test_fit_from_latest_sees_a_new_commit(trained: dict[str, Any], tmp_path: Path) -> None:
    """Nothing is cached between opens: ``m@latest`` follows the newest commit."""
    url = make_url(trained["path"], "m@latest")
    fs = fsspec.filesystem("modelhub")
    before = torch.load(io.BytesIO(fs.cat_file(url)), weights_only=True)
    assert before["global_step"] == 8

    newer = copy.deepcopy(trained["ckpt"])
    newer["global_step"] = 99
    newer["state_dict"]["net.0.weight"] += 1.0
    trained["repo"].commit(newer, "m")

    assert fs.info(url)["ref"] == "m@v2"
    after = torch.load(io.BytesIO(fs.cat_file(url)), weights_only=True)
    assert after["global_step"] == 99
    assert torch.equal(after["state_dict"]["net.0.weight"], newer["state_dict"]["net.0.weight"])


# -------------------------------------------------- (b) load_from_checkpoint
def test_load_from_checkpoint_url(trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = trained["ckpt"]
    loaded = MLP.load_from_checkpoint(make_url(trained["path"], "m@v1"))
    assert loaded.hparams.hidden == 24  # rebuilt from the checkpoint's hyper_parameters
    sd = loaded.state_dict()
    assert list(sd) == list(saved["state_dict"])
    for k, w in saved["state_dict"].items():
        assert torch.equal(sd[k], w), k

    monkeypatch.chdir(tmp_path)  # modelhub://<relative path> is relative to the cwd
    rel = MLP.load_from_checkpoint("modelhub://hub#m@latest")
    assert torch.equal(rel.net[2].bias, saved["state_dict"]["net.2.bias"])


# ------------------------------------------------------- (c) fsspec itself
def test_fsspec_open_gives_the_saved_checkpoint(trained: dict[str, Any]) -> None:
    url = make_url(trained["path"], "m@v1")
    with fsspec.open(url, "rb") as f:
        data = f.read()
    assert data[:2] == b"PK"  # torch's zip format, as a .ckpt file
    assert_bit_equal(torch.load(io.BytesIO(data), weights_only=True), trained["ckpt"])
    assert_bit_equal(torch.load(io.BytesIO(data), weights_only=True), torch.load(trained["file"], weights_only=True))

    fs = fsspec.filesystem("modelhub")
    assert isinstance(fs, ModelHubFileSystem)
    info = fs.info(url)
    assert info["type"] == "file" and info["size"] == len(data) and info["ref"] == "m@v1"
    assert info["name"] == f"{trained['path']}#m@v1"
    assert fs.exists(url) and fs.isfile(url) and not fs.isdir(url)
    assert fs.size(url) == len(data)
    v = trained["repo"].version("m@v1")
    assert fs.info(make_url(trained["path"], v.id[:8]))["id"] == v.id  # id prefixes resolve too
    assert fs.modified(url).isoformat() == v.created_at


def test_exists_then_open_decodes_once(trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchCheckpointIO checks ``exists`` (which needs the size) and then opens: the
    bytes measured for the first are handed to the second instead of decoding twice."""
    calls: list[str] = []
    real = Repository.load

    def counting(self: Repository, ref: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(ref)
        return real(self, ref, *args, **kwargs)

    monkeypatch.setattr(Repository, "load", counting)
    ModelHubFileSystem.clear_instance_cache()
    ModelHubFileSystem._size_memo.clear()
    url = make_url(trained["path"], "m@v1")
    fs = fsspec.filesystem("modelhub")
    assert fs.exists(url)
    with fs.open(url, "rb") as f:
        first = f.read()
    assert len(calls) == 1
    assert fs.exists(url)  # the size is remembered: no decode for a second exists()
    assert len(calls) == 1
    assert fs.cat_file(url) == first  # nothing was kept back: this open decodes
    assert len(calls) == 2


def test_missing_versions_are_missing_files(trained: dict[str, Any]) -> None:
    fs = fsspec.filesystem("modelhub")
    bad = make_url(trained["path"], "m@v7")
    assert fs.exists(bad) is False
    with pytest.raises(FileNotFoundError, match=r"m@v7.*latest is m@v1") as err:
        fs.info(bad)
    assert isinstance(err.value, VersionNotFoundError) and isinstance(err.value, ModelHubError)
    with pytest.raises(FileNotFoundError, match="did you mean m"):
        fs.info(make_url(trained["path"], "mm@latest"))
    assert fs.exists(make_url(trained["path"].parent / "nowhere", "m@v1")) is False
    with pytest.raises(FileNotFoundError, match="no modelhub repository"):
        fs.info(make_url(trained["path"].parent / "nowhere", "m@v1"))
    # what Lightning reports for a bad ref: its own "not found", from exists()
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        make_trainer(trained["path"].parent / "t", max_epochs=3).fit(MLP(hidden=24), digits_loader(), ckpt_path=bad)
    # a URL without #ref
    with pytest.raises(ModelHubURLError, match="names no version"), fsspec.open(f"modelhub://{trained['path']}", "rb") as f:
        f.read()


def test_writes_are_refused(trained: dict[str, Any]) -> None:
    url = make_url(trained["path"], "m@v3")
    with pytest.raises(ReadOnlyError, match="read-only: commit through Repository"), fsspec.open(url, "wb") as f:
        f.write(b"x")
    fs = fsspec.filesystem("modelhub")
    with pytest.raises(ReadOnlyError):
        fs.pipe_file(url, b"x")
    with pytest.raises(ReadOnlyError):
        fs.rm(make_url(trained["path"], "m@v1"))
    assert isinstance(ReadOnlyError("x"), PermissionError)
    assert [v.ref for v in trained["repo"].versions()] == ["m@v1"]


def test_ls_lists_versions(trained: dict[str, Any]) -> None:
    trained["repo"].commit(trained["ckpt"]["state_dict"], "other")
    fs = fsspec.filesystem("modelhub")
    root = f"modelhub://{trained['path']}"
    assert fs.ls(root, detail=False) == [f"{trained['path']}#m@v1", f"{trained['path']}#other@v1"]
    assert fs.isdir(root)
    entries = fs.ls(root)
    assert [e["type"] for e in entries] == ["file", "file"]
    assert [e["model"] for e in entries] == ["m", "other"]


def test_memory_repository(memory_url: str) -> None:
    repo = Repository.init(memory_url)
    ckpt = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 4, "pytorch-lightning_version": pl.__version__}
    repo.commit(ckpt, "m")
    url = make_url(memory_url, "m@latest")
    assert url == f"modelhub://{memory_url}#m@latest"
    with fsspec.open(url, "rb") as f:
        assert_bit_equal(torch.load(f, weights_only=True), ckpt)
    assert fsspec.filesystem("modelhub").ls(f"modelhub://{memory_url}", detail=False) == [f"{memory_url}#m@v1"]


def test_pickled_version_says_how_to_load_it(local_repo: Repository) -> None:
    import argparse

    obj = {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": argparse.Namespace(lr=0.1)}
    local_repo.commit(obj, "p", allow_pickle=True)
    url = make_url(local_repo.url, "p@v1")
    fs = fsspec.filesystem("modelhub")
    assert fs.exists(url)  # it is there; only reading it needs pickle
    with pytest.raises(PickleRequiredError, match=r"Repository\(.*\)\.load\('p@v1', weights_only=False\)"):
        fs.cat_file(url)


# ------------------------------------------------------ (d) the CheckpointIO
def test_checkpoint_io_routes_model_checkpoint_through_the_repository(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "hub")
    ckpt_dir = tmp_path / "ck"
    plugin = ModelHubCheckpointIO(tmp_path / "hub", "m")
    torch.manual_seed(0)
    trainer = make_trainer(
        tmp_path, max_epochs=2, plugins=[plugin], callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1)]
    )
    trainer.fit(MLP(), digits_loader())

    versions = repo.versions("m")
    paths = [str(ckpt_dir / "epoch=0-step=4.ckpt"), str(ckpt_dir / "epoch=1-step=8.ckpt")]
    assert [v.info["path"] for v in versions] == paths
    assert [(v.info["epoch"], v.info["global_step"]) for v in versions] == [(0, 4), (1, 8)]
    assert {v.info["lightning_version"] for v in versions} == {pl.__version__}
    assert versions[0].hparams == {"hidden": 32, "lr": 0.01}
    assert trainer.checkpoint_callback.best_model_path == paths[1]
    assert not list(tmp_path.rglob("*.ckpt")) and not ckpt_dir.exists()  # nothing on disk
    last = repo.load("m@v2")
    for k, w in trainer.lightning_module.state_dict().items():
        assert torch.equal(last["state_dict"][k], w), k

    plugin.remove_checkpoint(paths[0])  # keeps every version
    assert len(repo.versions("m")) == 2
    assert plugin.saved_version(paths[0]).ref == "m@v1"
    assert plugin.saved_version(tmp_path / "never.ckpt") is None

    # resume from the epoch-0 checkpoint by its (never written) path
    first = repo.load("m@v1")
    torch.manual_seed(1)
    module = MLP()
    trainer2 = make_trainer(
        tmp_path,
        max_epochs=3,
        plugins=[ModelHubCheckpointIO(repo, "m")],
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1)],
    )
    trainer2.fit(module, digits_loader(), ckpt_path=paths[0])
    start = module.at_start
    assert start["epoch"] == 1 and start["global_step"] == STEPS_PER_EPOCH
    assert_bit_equal(start["optimizer"], first["optimizer_states"][0])
    for k, w in first["state_dict"].items():
        assert torch.equal(start["weights"][k], w), k
    assert trainer2.global_step == 3 * STEPS_PER_EPOCH
    assert [v.info["path"] for v in repo.versions("m")] == [*paths, *paths[1:], str(ckpt_dir / "epoch=2-step=12.ckpt")]
    # the same path saved twice: the newer version wins
    assert plugin.saved_version(paths[1]).ref == "m@v3"
    assert not list(tmp_path.rglob("*.ckpt"))


def test_checkpoint_io_loads(trained: dict[str, Any], tmp_path: Path) -> None:
    plugin = ModelHubCheckpointIO(trained["repo"], "m")
    url = make_url(trained["path"], "m@v1")
    assert_bit_equal(plugin.load_checkpoint(url), trained["ckpt"])
    on_meta = plugin.load_checkpoint(url, map_location="meta")
    assert on_meta["state_dict"]["net.0.weight"].device.type == "meta"
    # an ordinary file the repository never saw goes to TorchCheckpointIO
    assert_bit_equal(plugin.load_checkpoint(trained["file"]), torch.load(trained["file"], weights_only=True))
    with pytest.raises(FileNotFoundError):
        plugin.load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(TypeError, match="storage_options"):
        plugin.save_checkpoint(trained["ckpt"], tmp_path / "x.ckpt", storage_options={"a": 1})
    assert len(trained["repo"].versions("m")) == 1
    with pytest.raises(ModelHubError, match="no modelhub repository"):
        ModelHubCheckpointIO(tmp_path / "nowhere", "m")


def test_checkpoint_io_pickled_checkpoints(tmp_path: Path) -> None:
    import argparse

    repo = Repository.init(tmp_path / "hub")
    ckpt = {"state_dict": {"w": torch.ones(3)}, "epoch": 0, "hyper_parameters": argparse.Namespace(lr=0.1)}
    with pytest.raises(PickleRequiredError, match="allow_pickle=True to ModelHubCheckpointIO"):
        ModelHubCheckpointIO(repo, "m").save_checkpoint(ckpt, tmp_path / "a.ckpt")
    plugin = ModelHubCheckpointIO(repo, "m", allow_pickle=True)
    plugin.save_checkpoint(ckpt, tmp_path / "a.ckpt")
    assert repo.version("m@v1").hparams == {}  # a Namespace is no JSON metadata
    with pytest.raises(PickleRequiredError, match="weights_only=False"):
        plugin.load_checkpoint(tmp_path / "a.ckpt")
    assert plugin.load_checkpoint(tmp_path / "a.ckpt", weights_only=False)["hyper_parameters"].lr == 0.1


def test_checkpoint_io_on_a_memory_repository(tmp_path: Path) -> None:
    url = unique_memory_url()
    repo = Repository.init(url)
    plugin = ModelHubCheckpointIO(url, "m")
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path, max_epochs=1, plugins=[plugin])
    trainer.fit(MLP(), digits_loader())
    trainer.save_checkpoint("final.ckpt")
    (v,) = repo.versions("m")
    assert v.info["path"] == "final.ckpt" and v.info["global_step"] == STEPS_PER_EPOCH
    assert not (tmp_path / "final.ckpt").exists() and not Path("final.ckpt").exists()
    back = MLP.load_from_checkpoint(make_url(url, "m@v1"))
    assert torch.equal(back.net[0].weight, trainer.lightning_module.net[0].weight)
