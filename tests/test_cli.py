"""The ``modelhub`` command, run in-process through ``main`` (plus one real subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modelhub_torch.checkpoint_files import natural_key
from modelhub_torch.cli import main
from modelhub_torch.cli.output import human_ratio, human_size, readable_path, table


# ------------------------------------------------------------------ helpers
def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, repo: Path, *args):
    code, out, err = run(capsys, "--repo", repo, "--json", *args)
    assert code == 0, err
    assert err == ""
    return json.loads(out)


def linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def lightning_ckpt(model: nn.Module, epoch: int) -> dict:
    return {
        "epoch": epoch,
        "global_step": epoch * 10,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "hyper_parameters": {"lr": 0.01, "layers": [4, 3]},
    }


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture
def repo(tmp_path, capsys) -> Path:
    path = tmp_path / "hub"
    code, out, _ = run(capsys, "--repo", path, "init")
    assert code == 0
    assert str(path.resolve()) in out
    return path


def commit(capsys, repo: Path, file: Path, model: str, *extra) -> dict:
    return run_json(capsys, repo, "commit", file, "--model", model, *extra)


# ------------------------------------------------------------- formatting
def test_human_formats():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 1024**2) == "3.0 MiB"
    assert human_ratio(3.1234) == "3.12x"
    assert human_ratio(None) == "-"
    assert table(["A", "NUM"], [["long-name", "1"], ["x", "100"]], right={1}).splitlines() == [
        "A          NUM",
        "long-name    1",
        "x          100",
    ]


def test_readable_path_keeps_words_whole_and_shortens_locations():
    key = ("callbacks/ModelHubCheckpoint{'monitor': 'val_acc', 'mode': 'max', 'every_n_train_steps': 0, "
           "'every_n_epochs': 1, 'train_time_interval': None}")
    assert readable_path(key + "/best_model_score") == (
        "callbacks/ModelHubCheckpoint{'monitor': 'val_acc', …}/best_model_score")
    assert readable_path(key + "/best_k_models/modelhub:///home/me/runs/hub#m@v1") == (
        "callbacks/ModelHubCheckpoint{…}/best_k_models/modelhub://…/hub#m@v1")
    assert readable_path("state_dict/conv1.weight") == "state_dict/conv1.weight"
    assert readable_path("a/" + "b" * 100 + "/c") == "a/…/c"
    deep = readable_path("opt/" + "/".join(f"seg{i}" for i in range(30)))
    assert len(deep) <= 80 and deep.startswith("opt/seg0/") and deep.endswith("/seg29")
    assert all(p in ("opt", "…") or re.fullmatch(r"seg\d+", p) for p in deep.split("/"))


def test_natural_key_orders_numbers_then_mtime():
    names = ["epoch=10.ckpt", "last.ckpt", "epoch=2.ckpt", "epoch=1-step=5.ckpt", "epoch=1-step=50.ckpt"]
    ordered = sorted(names, key=lambda n: natural_key(n, 0.0))
    assert ordered == ["epoch=1-step=5.ckpt", "epoch=1-step=50.ckpt", "epoch=2.ckpt", "epoch=10.ckpt", "last.ckpt"]
    # equal numbers: the older file first
    assert natural_key("b-1.pt", 1.0) < natural_key("a-1.pt", 2.0)


# ------------------------------------------------------------------ basics
def test_help_and_errors_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [sys.executable, "-m", "modelhub_torch.cli", "--help"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0
    for name in ("init", "commit", "import", "list", "desc", "diff", "export", "verify", "gc"):
        assert name in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "modelhub_torch.cli", "--repo", str(tmp_path / "nowhere"), "list"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("modelhub: error: no modelhub repository at ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_init_twice_and_missing_repo(tmp_path, capsys, repo):
    code, _, err = run(capsys, "init", repo)
    assert code == 2
    assert err.startswith("modelhub: error: a modelhub repository already exists")
    code, out, err = run(capsys, "--repo", tmp_path / "nothing", "stats")
    assert (code, out) == (2, "")
    assert "no modelhub repository" in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys, repo, tmp_path):
    assert run(capsys, "commit")[0] == 2
    code, _, err = run(capsys, "--repo", repo, "commit", "x.pt", "--model", "m", "--metric", "novalue")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = run(capsys, "--repo", repo, "commit", tmp_path / "missing.pt", "--model", "m")
    assert code == 2
    assert err.strip() == f"modelhub: error: no such file: {tmp_path / 'missing.pt'}"
    (tmp_path / "w.bin").write_bytes(b"x")
    code, _, err = run(capsys, "--repo", repo, "commit", tmp_path / "w.bin", "--model", "m")
    assert code == 2 and "unknown checkpoint type '.bin'" in err
    (tmp_path / "bad.pt").write_bytes(b"not a zip file")
    code, _, err = run(capsys, "--repo", repo, "commit", tmp_path / "bad.pt", "--model", "m")
    assert code == 2 and "cannot read" in err and "Traceback" not in err
    code, _, err = run(capsys, "--repo", repo, "commit", tmp_path / "bad.pt", "--model", "m", "--allow-pickle")
    assert code == 2 and "cannot read" in err and "invalid load key" in err


def test_repo_from_env_and_options_after_command(tmp_path, capsys, repo, monkeypatch):
    torch.save(linear().state_dict(), tmp_path / "a.pt")
    monkeypatch.setenv("MODELHUB_REPO", str(repo))
    code, out, err = run(capsys, "commit", tmp_path / "a.pt", "--model", "net", "--json")
    assert code == 0, err
    assert json.loads(out)["ref"] == "net@v1"
    code, out, _ = run(capsys, "list")
    assert code == 0 and "net@v1" in out


# ---------------------------------------------------------- commit / list
def test_commit_three_versions_lineage_and_fine_tune(tmp_path, capsys, repo):
    m = linear()
    refs = []
    for i in range(3):
        with torch.no_grad():
            m.weight[0, 0] += 1.0
        f = tmp_path / f"v{i}.pt"
        torch.save(m.state_dict(), f)
        v = commit(capsys, repo, f, "net", "--metric", f"loss={1.0 / (i + 1)}", "--metric", "split=val", "-m", f"step {i}")
        refs.append(v["ref"])
        assert v["metrics"] == {"loss": 1.0 / (i + 1), "split": "val"}
        assert v["message"] == f"step {i}"
    assert refs == ["net@v1", "net@v2", "net@v3"]
    ft = commit(capsys, repo, tmp_path / "v1.pt", "ft", "--parent", "net@v2", "--hparam", "lr=0.001")
    assert (ft["ref"], ft["parent"], ft["hparams"]) == ("ft@v1", "net@v2", {"lr": 0.001})
    net2_id = run_json(capsys, repo, "desc", "net@v2")["id"]
    assert run_json(capsys, repo, "tag", "net@v2", "best") == {"alias": "net@best", "ref": "net@v2", "id": net2_id,
                                                               "previous": None}
    # moving an alias says where it was
    code, out, _ = run(capsys, "--repo", repo, "tag", "net@v3", "best")
    assert code == 0 and out.strip() == "moved best: net@v2 -> net@v3"
    code, out, _ = run(capsys, "--repo", repo, "tag", "net@v2", "best")
    assert out.strip() == "moved best: net@v3 -> net@v2"
    assert run(capsys, "--repo", repo, "tag", "net@v2", "best")[1].strip() == "net@best -> net@v2 (already there)"

    doc = run_json(capsys, repo, "list", "net")
    assert [v["ref"] for v in doc["versions"]] == ["net@v1", "net@v2", "net@v3"]
    assert [v["parent"] for v in doc["versions"]] == [None, "net@v1", "net@v2"]
    assert [v["aliases"] for v in doc["versions"]] == [[], ["best"], []]
    assert doc["models"] == [{"name": "net", "versions": 3, "latest": "net@v3", "aliases": {"best": "net@v2"}}]

    doc = run_json(capsys, repo, "list")
    by_ref = {v["ref"]: v for v in doc["versions"]}
    assert set(by_ref) == {"net@v1", "net@v2", "net@v3", "ft@v1"}
    assert by_ref["net@v2"]["children"] == ["ft@v1", "net@v3"]
    assert all(v["stored_bytes"] > 0 and v["raw_bytes"] == 60 for v in doc["versions"])

    code, out, _ = run(capsys, "--repo", repo, "list")
    assert code == 0
    rows = [line.split()[0:2] for line in out.splitlines()[1:5]]
    # the fine-tune sits indented under its base, the chain continues after it
    assert rows == [["net@v1", rows[0][1]], ["net@v2", "(best)"], ["└─", "ft@v1"], ["net@v3", rows[3][1]]]
    assert "loss=0.5" in out.splitlines()[2]
    assert re.search(r"2 models, 4 versions: 240 B raw, .* stored \(\d+\.\d\dx\)", out)

    code, _, err = run(capsys, "--repo", repo, "list", "nett")
    assert code == 2 and "did you mean net?" in err


def test_commit_pickled_file_needs_allow_pickle(tmp_path, capsys, repo):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "full.pt")
    code, _, err = run(capsys, "--repo", repo, "commit", tmp_path / "full.pt", "--model", "m")
    assert code == 2
    assert "--allow-pickle" in err and "torch.nn.modules.container.Sequential" in err
    # the opt-in says what it trusts: the classes the file's pickle imports
    code, out, err = run(capsys, "--repo", repo, "--json", "commit", tmp_path / "full.pt", "--model", "m",
                         "--allow-pickle")
    assert code == 0, err
    assert err.startswith("modelhub: warning: --allow-pickle: unpickling") and len(err.splitlines()) == 1
    assert "torch.nn.modules.container.Sequential" in err and "torch._utils" not in err
    assert json.loads(out)["ref"] == "m@v1"
    doc = run_json(capsys, repo, "desc", "m@v1")
    assert [t["path"] for t in doc["tensors"]] == ["0.weight", "0.bias"]


# ------------------------------------------------------------------- desc
def test_desc_lists_tensors_params_and_storage(tmp_path, capsys, repo):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(lightning_ckpt(model, 1), tmp_path / "a.ckpt")
    commit(capsys, repo, tmp_path / "a.ckpt", "net")
    commit(capsys, repo, tmp_path / "a.ckpt", "net", "-m", "same weights")  # identical: v1 -> "same"
    doc = run_json(capsys, repo, "desc", "net@v2")
    assert doc["ref"] == "net@v2" and doc["parent"] == "net@v1" and doc["message"] == "same weights"
    assert doc["metrics"] == {"epoch": 1, "global_step": 10}  # picked from the Lightning checkpoint
    assert doc["hparams"] == {"lr": 0.01}  # only scalar hyper_parameters
    got = [(t["path"], t["shape"], t["params"], t["dtype"]) for t in doc["tensors"]]
    assert got == [
        ("state_dict/0.weight", [3, 4], 12, "float32"),
        ("state_dict/0.bias", [3], 3, "float32"),
        ("state_dict/2.weight", [2, 3], 6, "float32"),
        ("state_dict/2.bias", [2], 2, "float32"),
    ]
    assert doc["total_params"] == 23
    assert {t["stored"] for t in doc["tensors"]} == {"whole"}
    assert sum(t["stored_bytes"] for t in doc["tensors"]) == sum(doc["plane_bytes"])
    assert len(doc["plane_bytes"]) == 4  # float32: four byte planes

    old = run_json(capsys, repo, "desc", "net@v1")
    assert [(t["stored"], t["base"], t["stored_bytes"]) for t in old["tensors"]] == [("same", "net@v2", 0)] * 4

    code, out, _ = run(capsys, "--repo", repo, "desc", "net@latest")
    assert code == 0
    assert re.search(r"^state_dict/0\.weight\s+float32\s+3x4\s+12\s+\d+ B\s+whole$", out, re.M)
    assert "23 parameters in the state_dict" in out
    assert "plane 0 (high):" in out


def test_bad_ref_names_closest_match(tmp_path, capsys, repo):
    torch.save(linear().state_dict(), tmp_path / "a.pt")
    commit(capsys, repo, tmp_path / "a.pt", "classifier")
    commit(capsys, repo, tmp_path / "a.pt", "classifier")
    code, out, err = run(capsys, "--repo", repo, "desc", "classifier@v9")
    assert (code, out) == (2, "")
    assert err.startswith("modelhub: error: ") and err.count("\n") == 1
    assert "did you mean classifier@v2" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "--repo", repo, "diff", "clasifier@v1", "classifier@v2")
    assert code == 2 and "did you mean classifier" in err


# ------------------------------------------------------------------- diff
def test_diff_metrics_and_tensors(tmp_path, capsys, repo):
    a = {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "b": torch.arange(3.0), "steps": torch.tensor([1, 2, 3])}
    a["w"][0, 0] = 0.25
    b = {k: v.clone() for k, v in a.items()}
    b["w"][0, 0] = 1.0  # +0.75 exactly
    b["steps"][2] = 7
    b["extra"] = torch.zeros(2)
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    commit(capsys, repo, tmp_path / "a.pt", "m", "--metric", "acc=0.5", "--metric", "epoch=1", "--hparam", "lr=0.1")
    commit(capsys, repo, tmp_path / "b.pt", "m", "--metric", "acc=0.75", "--metric", "epoch=1", "--hparam", "lr=0.1")
    doc = run_json(capsys, repo, "diff", "m@v1", "m@v2")
    assert (doc["a"], doc["b"]) == ("m@v1", "m@v2")
    assert doc["metrics"] == {
        "acc": {"a": 0.5, "b": 0.75, "differs": True},
        "epoch": {"a": 1, "b": 1, "differs": False},
    }
    assert doc["hparams"] == {"lr": {"a": 0.1, "b": 0.1, "differs": False}}
    t = {x["path"]: x for x in doc["tensors"]}
    assert set(t) == {"w", "b", "steps"}
    assert t["b"]["changed"] is False and t["b"]["max_abs_diff"] == 0.0 and t["b"]["rel_l2"] == 0.0
    assert t["w"]["changed"] is True
    assert t["w"]["max_abs_diff"] == 0.75
    assert t["w"]["rel_l2"] == pytest.approx(0.75 / a["w"].double().norm().item(), rel=1e-12)
    assert t["steps"]["changed"] is True and t["steps"]["max_abs_diff"] == 4.0
    assert doc["only_in_a"] == [] and doc["only_in_b"] == ["extra"]
    assert (doc["changed"], doc["unchanged"]) == (2, 1)

    code, out, _ = run(capsys, "--repo", repo, "diff", "m@v1", "m@v2")
    assert code == 0
    assert re.search(r"^acc\s+0\.5\s+0\.75\s+\*$", out, re.M)
    assert re.search(r"^epoch\s+1\s+1$", out, re.M)  # equal keys are not marked
    assert re.search(r"^w\s+yes\s+0\.75\s", out, re.M)
    assert re.search(r"^b\s+no\s+0\s+0$", out, re.M)
    assert "only in m@v2: extra" in out


def test_diff_shape_change_and_identical(tmp_path, capsys, repo):
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "a.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "b.pt")
    commit(capsys, repo, tmp_path / "a.pt", "m")
    commit(capsys, repo, tmp_path / "b.pt", "m")
    doc = run_json(capsys, repo, "diff", "m@v1", "m@v2")
    (w,) = doc["tensors"]
    assert w["changed"] is True and w["max_abs_diff"] is None and w["shape"] == [[2, 2], [3]]
    doc = run_json(capsys, repo, "diff", "m@v1", "m@v1")
    assert [x["changed"] for x in doc["tensors"]] == [False]


# ----------------------------------------------------------------- export
def test_export_pt_is_bit_identical(tmp_path, capsys, repo):
    special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), 1e-45, -3.5])
    special[2] = torch.tensor(0x7FC00123, dtype=torch.int32).view(torch.float32)  # NaN payload
    ckpt = {
        "epoch": 4,
        "state_dict": {"w": torch.randn(5, 3, dtype=torch.bfloat16), "x": special},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}}],
        "name": "run-7",
    }
    torch.save(ckpt, tmp_path / "in.ckpt")
    commit(capsys, repo, tmp_path / "in.ckpt", "m")
    out_file = tmp_path / "out.pt"
    doc = run_json(capsys, repo, "export", "m@v1", out_file)
    assert doc["ref"] == "m@v1" and doc["bytes"] == out_file.stat().st_size
    back = torch.load(out_file, weights_only=True)
    assert back.keys() == ckpt.keys()
    assert back["epoch"] == 4 and back["name"] == "run-7"
    for k in ("w", "x"):
        assert back["state_dict"][k].dtype == ckpt["state_dict"][k].dtype
        assert bits(back["state_dict"][k]) == bits(ckpt["state_dict"][k])
    assert bits(back["optimizer_states"][0]["state"][0]["step"]) == bits(torch.tensor(3.0))

    code, _, err = run(capsys, "--repo", repo, "export", "m@v1", out_file)
    assert code == 2 and "--force" in err
    assert run(capsys, "--repo", repo, "export", "m@v1", out_file, "--force")[0] == 0
    code, _, err = run(capsys, "--repo", repo, "export", "m@v1", tmp_path / "out.onnx")
    assert code == 2 and ".safetensors" in err


def test_export_safetensors_with_tied_weights(tmp_path, capsys, repo):
    from safetensors import safe_open
    from safetensors.torch import load_file

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 4)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.emb.weight

    torch.manual_seed(1)
    model = Tied()
    sd = model.state_dict()
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    torch.save(lightning_ckpt(model, 2), tmp_path / "t.ckpt")
    commit(capsys, repo, tmp_path / "t.ckpt", "tied")
    out_file = tmp_path / "t.safetensors"
    doc = run_json(capsys, repo, "export", "tied@latest", out_file)
    assert doc["tensors"] == 2
    back = load_file(out_file)
    assert set(back) == {"emb.weight", "head.weight"}
    for k in back:
        assert bits(back[k]) == bits(sd[k])
    with safe_open(str(out_file), "pt") as f:
        assert f.metadata()["modelhub_ref"] == "tied@v1"
    # what safetensors cannot hold is named, not dropped silently
    assert doc["left_out"] == ["epoch", "global_step", "pytorch-lightning_version", "hyper_parameters"]
    code, out, _ = run(capsys, "--repo", repo, "export", "tied@latest", out_file, "--force")
    assert code == 0 and "left out (a safetensors file holds the state_dict only): epoch, global_step" in out
    assert "export to .ckpt for the whole checkpoint" in out


# ----------------------------------------------------------------- import
def test_import_commits_in_natural_order(tmp_path, capsys, repo):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    m = linear()
    weights = {}
    for i, epoch in enumerate([10, 2, 1]):  # written newest-number first: mtime order is wrong
        with torch.no_grad():
            m.weight.fill_(float(epoch))
        path = ckdir / f"epoch={epoch}.ckpt"
        torch.save(lightning_ckpt(m, epoch), path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        weights[epoch] = m.weight.detach().clone()
    (ckdir / "notes.txt").write_text("not a checkpoint")
    doc = run_json(capsys, repo, "import", ckdir, "--model", "run")
    assert [d["file"] for d in doc] == ["epoch=1.ckpt", "epoch=2.ckpt", "epoch=10.ckpt"]
    assert [d["ref"] for d in doc] == ["run@v1", "run@v2", "run@v3"]
    versions = run_json(capsys, repo, "list", "run")["versions"]
    assert [v["metrics"] for v in versions] == [
        {"epoch": 1, "global_step": 10},
        {"epoch": 2, "global_step": 20},
        {"epoch": 10, "global_step": 100},
    ]
    assert [v["parent"] for v in versions] == [None, "run@v1", "run@v2"]
    assert versions[0]["message"] == "imported epoch=1.ckpt"
    from modelhub_torch import Repository

    r = Repository(repo)
    for n, epoch in ((1, 1), (2, 2), (3, 10)):
        assert torch.equal(r.load_state_dict(f"run@v{n}")["weight"], weights[epoch])

    code, _, err = run(capsys, "--repo", repo, "import", ckdir, "--model", "run", "--pattern", "*.pt")
    assert code == 2 and "no checkpoint files" in err
    code, _, err = run(capsys, "--repo", repo, "import", tmp_path / "nope", "--model", "run")
    assert code == 2 and "no such directory" in err

    # a file that needs pickle stops the import and says what was already committed
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    torch.save(m.state_dict(), mixed / "a-1.pt")
    torch.save(nn.Linear(2, 2), mixed / "a-2.pt")
    torch.save(m.state_dict(), mixed / "a-3.pt")
    code, _, err = run(capsys, "--repo", repo, "import", mixed, "--model", "mixed")
    assert code == 2
    assert "import stopped at a-2.pt" in err and "--allow-pickle" in err and "mixed@v1 is the last" in err
    assert [v["ref"] for v in run_json(capsys, repo, "list", "mixed")["versions"]] == ["mixed@v1"]


# ---------------------------------------------------- verify / stats / gc
def test_verify_finds_a_flipped_byte(tmp_path, capsys, repo):
    torch.save(linear().state_dict(), tmp_path / "a.pt")
    commit(capsys, repo, tmp_path / "a.pt", "net")
    code, out, _ = run(capsys, "--repo", repo, "verify")
    assert code == 0 and out.startswith("ok: 1 version verified")

    victim = max((p for p in (repo / "objects").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    oid = victim.parent.name + victim.name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes(data))

    code, out, err = run(capsys, "--repo", repo, "verify")
    assert code == 1, err
    assert f"problem: corrupt-object: {oid}" in out
    assert "Traceback" not in out + err
    code, out, _ = run(capsys, "--repo", repo, "--json", "verify")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert {"kind": "corrupt-object", "subject": oid, "damage": True} in [
        {k: p[k] for k in ("kind", "subject", "damage")} for p in doc["problems"]
    ]
    assert any(p["subject"] == oid and "do not hash to the name" in p["detail"] for p in doc["problems"])


def test_verify_rebuild_index_restores_a_lost_catalog(tmp_path, capsys, repo):
    torch.save(linear().state_dict(), tmp_path / "a.pt")
    commit(capsys, repo, tmp_path / "a.pt", "net")
    commit(capsys, repo, tmp_path / "a.pt", "net")
    doc = run_json(capsys, repo, "verify", "--rebuild-index")
    assert doc == {"ok": True, "versions": 2, "index_rebuilt": True, "repaired": False, "problems": []}
    assert [v["ref"] for v in run_json(capsys, repo, "list")["versions"]] == ["net@v1", "net@v2"]


def test_stats_and_gc(tmp_path, capsys, repo):
    for seed in range(2):
        torch.save(linear(seed).state_dict(), tmp_path / f"{seed}.pt")
        commit(capsys, repo, tmp_path / f"{seed}.pt", "net")
    s = run_json(capsys, repo, "stats")
    assert (s["versions"], s["models"], s["raw_bytes"]) == (2, 1, 120)
    assert s["per_model"]["net"]["versions"] == 2
    assert set(s["planes"]) == {"0", "1", "2", "3"}
    assert s["ratio"] == pytest.approx(s["raw_bytes"] / s["stored_bytes"])
    code, out, _ = run(capsys, "--repo", repo, "stats")
    assert code == 0
    assert re.search(r"^total\s+2\s+120 B\s+\S+ \S+\s+\d+\.\d\dx$", out, re.M)
    assert re.search(r"^0 \(high\)\s+\d+ B\s+\d+\.\d%$", out, re.M)

    stray = repo / "objects" / "ab" / ("c" * 62)
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"orphan bytes")
    doc = run_json(capsys, repo, "gc", "--dry-run")
    assert doc["objects_removed"] == 1 and doc["bytes_freed"] == 12 and doc["dry_run"] is True
    assert stray.exists()
    code, out, _ = run(capsys, "--repo", repo, "gc")
    assert code == 0 and out.startswith("removed 1 objects (12 B)")
    assert not stray.exists()
    assert run_json(capsys, repo, "verify")["ok"] is True


def test_copy_starts_a_new_model_from_a_version(tmp_path, capsys, repo) -> None:
    f = tmp_path / "e1.ckpt"
    torch.manual_seed(3)
    m = nn.Linear(256, 128)
    torch.save(lightning_ckpt(m, 1), f)
    commit(capsys, repo, f, "base")
    code, out, _ = run(capsys, "--repo", str(repo), "copy", "base@v1", "tuned", "-m", "start of the fine-tune")
    assert code == 0 and "tuned@v1" in out and "base@v1" in out
    # says what is true: the unchanged tensors are links to base@v1's data, not stored again
    assert re.search(r"stored anew, 2 of 2 tensors \(128\.5 KiB\) shared with base@v1$", out.strip()), out
    from modelhub_torch import Repository

    r = Repository(repo)
    v = r.version("tuned@v1")
    assert v.parent == "base@v1" and v.message == "start of the fine-tune"
    assert v.info["copied_from"] == "base@v1"
    got = r.load("tuned@v1")
    assert list(got) == ["weight", "bias"]
    assert bits(got["weight"]) == bits(m.weight.detach()) and bits(got["bias"]) == bits(m.bias.detach())
    assert v.stored_bytes < v.raw_bytes / 4  # shares the weights' bytes with base@v1
    code, _, err = run(capsys, "--repo", str(repo), "copy", "base@v1", "tuned")
    assert code == 2 and "already exists" in err


def test_lossy_versions_are_marked_in_list_desc_and_diff(tmp_path, capsys, repo):
    torch.manual_seed(0)
    for i in range(2):
        torch.save({"w": torch.randn(64, 64)}, tmp_path / f"{i}.pt")
        commit(capsys, repo, tmp_path / f"{i}.pt", "m")
    code, _, err = run(capsys, "--repo", repo, "archive", "--lossy", "fp16", "--versions", "m@v2")
    assert code == 0, err
    code, out, _ = run(capsys, "--repo", repo, "list")
    lines = {line.split()[0]: line for line in out.splitlines()[1:3]}
    assert "[lossy]" in lines["m@v2"] and "[lossy]" not in lines["m@v1"]
    assert [v["lossy"] for v in run_json(capsys, repo, "list")["versions"]] == [None, ["fp16"]]
    assert run_json(capsys, repo, "desc", "m@v2")["lossy"] == ["fp16"]
    code, out, _ = run(capsys, "--repo", repo, "diff", "m@v1", "m@v2")
    assert "+++ m@v2" in out and "[lossy fp16]" in out.splitlines()[1]
    assert "lossy: m@v2 (fp16) archived lossily" in out
    assert run_json(capsys, repo, "diff", "m@v1", "m@v2")["lossy"] == {"a": None, "b": ["fp16"]}


def test_a_reader_that_leaves_early_is_no_error(tmp_path) -> None:
    """`modelhub desc REF | head -1`: the pipe closes while desc still writes; like git,
    modelhub stops quietly (status 141) instead of printing a Broken pipe error."""
    import subprocess
    import sys

    from modelhub_torch import Repository

    repo = Repository.init(tmp_path / "r")
    repo.commit({f"layer{i}.weight": torch.full((1,), float(i)) for i in range(3000)}, "m")
    repo.catalog.close()
    cmd = f"{sys.executable} -m modelhub_torch.cli --repo {tmp_path / 'r'} desc m@v1 | head -1; exit ${{PIPESTATUS[0]}}"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.stdout.startswith("ref:") and r.stderr == "" and r.returncode == 141, (r.returncode, r.stderr)
