"""Library functions the CLI's export/import stand on: files written and read back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from modelhub_torch import Repository
from modelhub_torch.checkpoint_files import CheckpointFileError, find_checkpoints, read_checkpoint
from modelhub_torch.exchange import ExportError, ImportStoppedError, export_version, import_files


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def lightning_ckpt(seed: int, epoch: int) -> dict:
    torch.manual_seed(seed)
    m = nn.Linear(4, 3)
    return {"epoch": epoch, "global_step": 10 * epoch, "state_dict": m.state_dict(),
            "optimizer_states": [{"state": {0: {"step": torch.tensor(float(epoch))}}}],
            "hyper_parameters": {"lr": 0.01}}


def new_file_mode(directory: Path) -> int:
    probe = directory / "probe"
    probe.touch()
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


@pytest.fixture
def repo(tmp_path) -> Repository:
    return Repository.init(tmp_path / "hub")


def test_export_torch_round_trips_bit_exact_with_the_usual_mode(repo, tmp_path):
    ckpt = lightning_ckpt(0, 3)
    v = repo.commit(ckpt, "m")
    r = export_version(repo, "m@v1", tmp_path / "out.ckpt")
    assert (r.ref, r.id, r.format, r.left_out) == ("m@v1", v.id, "ckpt", [])
    assert r.tensors == 3 and r.bytes == (tmp_path / "out.ckpt").stat().st_size
    back = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert back.keys() == ckpt.keys() and back["epoch"] == 3
    for k, t in ckpt["state_dict"].items():
        assert bits(back["state_dict"][k]) == bits(t)
    assert stat.S_IMODE((tmp_path / "out.ckpt").stat().st_mode) == new_file_mode(tmp_path)
    with pytest.raises(ExportError, match="--force"):
        export_version(repo, "m@v1", tmp_path / "out.ckpt")
    with pytest.raises(ExportError, match=r"\.safetensors"):
        export_version(repo, "m@v1", tmp_path / "out.onnx")
    assert not [p for p in os.listdir(tmp_path) if "modelhub-tmp" in p]


def test_export_safetensors_says_what_it_leaves_out_and_keeps_the_mode(repo, tmp_path):
    from safetensors.torch import load_file

    ckpt = lightning_ckpt(1, 2)
    repo.commit(ckpt, "m")
    r = export_version(repo, "m@v1", tmp_path / "w.safetensors")
    assert r.format == "safetensors" and r.tensors == 2
    assert r.left_out == ["epoch", "global_step", "optimizer_states", "hyper_parameters"]
    back = load_file(tmp_path / "w.safetensors")
    assert {k: bits(t) for k, t in back.items()} == {k: bits(t) for k, t in ckpt["state_dict"].items()}
    # safetensors writes 0600 on its own; the export gives it a new file's mode
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == new_file_mode(tmp_path)
    # a plain state_dict loses nothing
    repo.commit(ckpt["state_dict"], "plain")
    assert export_version(repo, "plain@v1", tmp_path / "p.safetensors").left_out == []


def test_import_files_commits_in_order_and_stops_at_a_bad_file(repo, tmp_path):
    src = tmp_path / "ck"
    src.mkdir()
    for epoch in (10, 2, 1):
        torch.save(lightning_ckpt(epoch, epoch), src / f"epoch={epoch}.ckpt")
    files = find_checkpoints(src)
    done = import_files(repo, files, "run", base=src)
    assert [d.file for d in done] == ["epoch=1.ckpt", "epoch=2.ckpt", "epoch=10.ckpt"]
    assert [d.version.ref for d in done] == ["run@v1", "run@v2", "run@v3"]
    assert [d.version.metrics for d in done] == [{"epoch": e, "global_step": 10 * e} for e in (1, 2, 10)]
    assert done[2].version.hparams == {"lr": 0.01}
    assert bits(repo.load_state_dict("run@v3")["weight"]) == bits(lightning_ckpt(10, 10)["state_dict"]["weight"])

    torch.save(nn.Linear(2, 2), src / "epoch=11.pt")  # only pickle can read it
    with pytest.raises(ImportStoppedError, match=r"import stopped at .*epoch=11.pt: .*--allow-pickle"):
        import_files(repo, [src / "epoch=1.ckpt", src / "epoch=11.pt"], "again")
    assert [v.ref for v in repo.versions("again")] == ["again@v1"]


def test_read_checkpoint_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\0")
    with pytest.raises(CheckpointFileError, match="unknown checkpoint type"):
        read_checkpoint(tmp_path / "x.onnx")
    with pytest.raises(CheckpointFileError, match="is a directory"):
        read_checkpoint(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointFileError, match="as safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")
    torch.save({"w": torch.arange(3.0)}, tmp_path / "ok.pt")
    assert torch.equal(read_checkpoint(tmp_path / "ok.pt")["w"], torch.arange(3.0))


def test_the_facade_methods_call_the_library(tmp_path) -> None:
    """repo.export / import_files / diff / describe: what the CLI prints, for Python users."""
    from modelhub_torch import Repository

    repo = Repository.init(tmp_path / "r")
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    torch.save(sd, tmp_path / "a.pt")
    sd2 = {"w": sd["w"] + 1, "b": sd["b"]}
    torch.save(sd2, tmp_path / "b.pt")
    done = repo.import_files([tmp_path / "a.pt", tmp_path / "b.pt"], "m", base=tmp_path)
    assert [d.version.ref for d in done] == ["m@v1", "m@v2"]
    out = repo.export("m@v2", tmp_path / "out.pt")
    assert out.ref == "m@v2" and torch.equal(torch.load(tmp_path / "out.pt")["w"], sd2["w"])
    d = repo.diff("m@v1", "m@v2")
    assert [t.path for t in d.changed] == ["w"] and [t.path for t in d.unchanged] == ["b"]
    assert {t.path for t in repo.describe("m@v2").tensors} == {"w", "b"}
