"""diff_versions, describe_version and storage_split: values, not just no exceptions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelhub_torch import Repository
from modelhub_torch.diffing import FieldDiff, diff_versions
from modelhub_torch.inspection import describe_version, lossy_schemes, storage_split


@pytest.fixture
def repo(tmp_path) -> Repository:
    return Repository.init(tmp_path / "hub")


def test_diff_reports_changed_tensors_and_distances(repo):
    a = {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "b": torch.arange(3.0)}
    b = {k: v.clone() for k, v in a.items()}
    b["w"][1, 2] += 0.5
    b["new"] = torch.zeros(2)
    repo.commit(a, "m", metrics={"acc": 0.5})
    repo.commit(b, "m", metrics={"acc": 0.75})
    d = diff_versions(repo, "m@v1", "m@v2")
    assert (d.a, d.b, d.aligned_by) == ("m@v1", "m@v2", "path")
    assert d.metrics == {"acc": FieldDiff(0.5, 0.75, True)}
    assert [t.path for t in d.changed] == ["w"] and [t.path for t in d.unchanged] == ["b"]
    (w,) = d.changed
    assert w.max_abs_diff == pytest.approx(0.5, abs=1e-6)
    assert w.rel_l2 == pytest.approx(0.5 / a["w"].double().norm().item(), rel=1e-5)
    assert d.only_in_a == [] and d.only_in_b == ["new"]
    doc = d.to_json()
    assert (doc["changed"], doc["unchanged"]) == (1, 1) and doc["lossy"] == {"a": None, "b": None}


def test_diff_of_a_copy_matches_weights_by_state_dict_name(repo):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    ckpt = {"epoch": 1, "state_dict": net.state_dict(), "optimizer_states": [{"state": {0: {"step": torch.tensor(1.0)}}}]}
    repo.commit(ckpt, "base")
    repo.copy("base@v1", "tuned")
    d = diff_versions(repo, "base@v1", "tuned@v1")
    assert d.aligned_by == "state_dict"
    assert sorted(t.name for t in d.tensors) == sorted(net.state_dict())
    assert {(t.path, t.path_b) for t in d.tensors} == {(f"state_dict/{k}", k) for k in net.state_dict()}
    assert d.changed == [] and d.only_in_b == []
    assert d.only_in_a == ["optimizer_states/0/state/0/step"]


def test_lossy_versions_are_marked_in_diff_and_describe(repo):
    torch.manual_seed(1)
    repo.commit({"w": torch.randn(64, 64)}, "m")
    repo.commit({"w": torch.randn(64, 64)}, "m")
    repo.archive(2.0, lossy={"m@v2": "fp16"})
    assert lossy_schemes(repo.version("m@v2")) == ["fp16"] and lossy_schemes(repo.version("m@v1")) == []
    d = diff_versions(repo, "m@v1", "m@v2")
    assert (d.lossy_a, d.lossy_b) == ([], ["fp16"])
    assert d.to_json()["lossy"] == {"a": None, "b": ["fp16"]}
    c = describe_version(repo, "m@v2")
    assert c.lossy == ["fp16"] and c.tensors[0].stored == "lossy fp16"


def test_describe_and_storage_split_of_a_copy(repo):
    torch.manual_seed(2)
    m = nn.Linear(64, 32)
    repo.commit({"state_dict": m.state_dict(), "epoch": 1}, "base")
    c = describe_version(repo, "base@v1")
    assert [(t.path, t.shape, t.params, t.in_state_dict) for t in c.tensors] == [
        ("state_dict/weight", [32, 64], 2048, True), ("state_dict/bias", [32], 32, True)]
    assert c.total_params == 2080 and c.has_state_dict and sum(c.plane_bytes) > 0
    v = repo.copy("base@v1", "tuned")
    s = storage_split(repo, v)
    assert s.tensors == 2
    assert s.shared_tensors + (s.stored_anew > 0) >= 1
    assert s.shared_raw_bytes == sum(t.raw_bytes for t in describe_version(repo, v).tensors if t.stored == "same")
