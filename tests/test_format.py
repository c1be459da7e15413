"""Golden-file tests: the byte format of FORMAT.md must keep decoding.

``tests/golden/repo-v1`` was written by ``tests/golden/make_golden.py`` and
``tests/golden/features-v1`` (every frame coder and format feature) by
``tests/golden/make_features.py``; whatever the code becomes, they must load to
exactly the recorded values — so a kernel change that changes its NumPy twin too
cannot silently change the format. The kernel stages
we own (plane split, exponent-first layout, rANS) are pinned byte for byte; zstd's
output is not (the library may change it), only its decoding.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch
import zstandard

from modelhub_torch import Repository
from modelhub_torch.errors import FormatError
from modelhub_torch.kernels import encode_planes, rans, to_exp_first
from modelhub_torch.manifest import validate_manifest
from modelhub_torch.pas.entropy import PLANE_CODERS
from modelhub_torch.pas.registry import NewerFormatError
from modelhub_torch.store.config import (
    BASELINE_FEATURES,
    KNOWN_FEATURES,
    declared_features,
    features_to_record,
    manifest_features,
    validate_settings,
)

GOLDEN = Path(__file__).parent / "golden"
# a rans8 frame of the data in test_rans8_frame_is_pinned (the twin in kernels/rans.py
# writes the same bytes: tests/test_rans.py)
PINNED_RANS8 = "c60b2783b176bddb954c8ab038f36190b7cd3f05d9356cfac136580dc5d7a858"
PINNED_RANS8_BYTES = 752
sys.path.insert(0, str(GOLDEN))
from make_features import digest, tensors  # noqa: E402
from make_golden import golden_versions  # noqa: E402

FEATURES = GOLDEN / "features-v1"


@pytest.fixture
def golden_repo(tmp_path: Path) -> Repository:
    dst = tmp_path / "repo"
    shutil.copytree(GOLDEN / "repo-v1", dst)
    return Repository(dst)


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_golden_repository_loads_bit_exact(golden_repo: Repository) -> None:
    versions = golden_repo.versions("golden")
    assert [v.ref for v in versions] == ["golden@v1", "golden@v2", "golden@v3"]
    assert [v.message for v in versions] == ["v1", "v2", "v3"]
    assert versions[1].metrics == {"loss": 0.5}
    assert versions[1].parent == "golden@v1"
    for v, want in zip(versions, golden_versions(), strict=True):
        got = golden_repo.load(v.ref)
        assert got["epoch"] == want["epoch"]
        assert got["meta"][0] == want["meta"][0] and math.isnan(got["meta"][1])
        assert got["meta"][2] == "x" and isinstance(got["meta"], tuple)
        for k, t in want["state_dict"].items():
            assert got["state_dict"][k].dtype == t.dtype
            assert got["state_dict"][k].shape == t.shape
            assert _bits(got["state_dict"][k]) == _bits(t), (v.ref, k)
    assert golden_repo.resolve("golden@best") == versions[1].id
    assert golden_repo.verify() == []


def test_golden_repository_uses_every_stored_form(golden_repo: Repository) -> None:
    """The fixture exercises whole, delta and same records, so the test above covers them."""
    kinds = set()
    for v in golden_repo.versions("golden"):
        for rec in golden_repo.manifest(v.id).tensors:
            data = rec["data"]
            kinds.add("delta" if data.get("base") else data["kind"])
    assert kinds == {"planes", "delta", "same"}


@pytest.fixture
def features_repo(tmp_path: Path) -> Repository:
    """A copy of features-v1 whose cold tier setting points at the copied cold tier."""
    shutil.copytree(FEATURES, tmp_path / "f")
    config = tmp_path / "f" / "repo" / "modelhub.json"
    settings = json.loads(config.read_text())
    assert settings["cold"] == "../cold"
    config.write_text(json.dumps({**settings, "cold": str(tmp_path / "f" / "cold")}))
    return Repository(tmp_path / "f" / "repo")


def test_every_frame_kind_and_feature_loads_bit_exact(features_repo: Repository) -> None:
    """Each version of features-v1 loads to the bits recorded when it was written."""
    expected = json.loads((FEATURES / "expected.json").read_text())
    assert sorted(expected) == ["ft@v1", "net@v1", "net@v2", "old@v1", "traj@v1", "traj@v2", "traj@v3"]
    for ref, want in expected.items():
        got = tensors(features_repo.load(ref))
        assert sorted(got) == sorted(want), ref
        for path, t in got.items():
            assert [str(t.dtype).removeprefix("torch."), list(t.shape)] == [want[path]["dtype"], want[path]["shape"]]
            assert digest(t) == want[path]["blake3"], (ref, path)
    assert "optimizer" not in features_repo.load("ft@v1")  # pruned
    assert features_repo.verify() == []


def test_feature_fixture_holds_every_frame_kind(features_repo: Repository) -> None:
    """The fixture cannot silently lose a coder, record form or feature the test above
    is meant to pin."""
    coders, forms, features = set(), set(), set()
    for model in ("net", "traj", "old", "ft"):
        for v in features_repo.versions(model):
            m = features_repo.manifest(v.id)
            features |= manifest_features(m)
            for rec in m.tensors:
                data = rec["data"]
                forms.add(data["kind"])
                forms.update(k for k in ("base", "context", "exponent_context", "lossy", "cold_from")
                             if data.get(k) is not None)
                if data["kind"] == "planes":
                    coders.update(f[2] for c in data["chunks"] for f in c["frames"])
    assert coders == set(PLANE_CODERS.ids()) == {"raw", "zstd", "rans0", "rans8", "rans_ctx"}
    # views and partial came after this fixture (views: see below; partial: tests/test_sync.py)
    assert features == set(KNOWN_FEATURES) - {"views", "partial"}
    assert forms == {"planes", "same", "dropped", "base", "context", "exponent_context", "lossy", "cold_from"}
    assert features_repo.manifest(features_repo.resolve("net@v1")).extra["lossy"] == ["quant:4"]


def _doc(repo: Repository, ref: str) -> dict:
    """A version's manifest as its JSON document (to damage or extend in a test)."""
    return json.loads(zstandard.ZstdDecompressor().decompress(repo.manifest(repo.resolve(ref)).to_bytes()))


def _planes_record(doc: dict) -> dict:
    return next(r for r in doc["tensors"] if r["data"]["kind"] == "planes")


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda d: _planes_record(d)["data"].update(kind="sparse"), "record kind 'sparse'"),
        (lambda d: _planes_record(d)["data"]["chunks"][0]["frames"][0].__setitem__(2, "lz4"), "frame coder 'lz4'"),
        (lambda d: _planes_record(d)["data"]["codec"].update(op="mul"), "delta op 'mul'"),
    ],
)
def test_ids_of_a_newer_version_ask_for_an_upgrade(golden_repo: Repository, edit, what: str) -> None:
    """An id this version does not know was written by a newer one: upgrade, not verify."""
    doc = _doc(golden_repo, "golden@v3")
    edit(doc)
    with pytest.raises(NewerFormatError, match=f"{what} is unknown .*written by a newer modelhub_torch: upgrade"):
        validate_manifest(doc, "m")


def test_unknown_lossy_scheme_asks_for_an_upgrade(golden_repo: Repository) -> None:
    doc = _doc(golden_repo, "golden@v3")
    rec = next(r for r in doc["tensors"] if r["data"]["kind"] == "planes" and not r["data"]["base"]
               and r["dtype"] == "float32")
    rec["data"]["lossy"] = {"scheme": "nf4", "code_dtype": "uint8"}
    with pytest.raises(NewerFormatError, match=r"lossy scheme 'nf4' is unknown .* upgrade"):
        validate_manifest(doc, "m")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: _planes_record(d)["data"].update(kind=7),
        lambda d: _planes_record(d)["data"]["chunks"][0]["frames"][0].__setitem__(2, ""),
        lambda d: _planes_record(d)["data"]["chunks"][0]["frames"][0].__setitem__(2, None),
        lambda d: _planes_record(d)["data"]["codec"].update(op=["sub"]),
        lambda d: _planes_record(d)["data"]["codec"].update(lane=3),
    ],
)
def test_damaged_values_of_known_kinds_ask_for_verify(golden_repo: Repository, edit) -> None:
    doc = _doc(golden_repo, "golden@v3")
    edit(doc)
    with pytest.raises(FormatError, match=r"damaged .*run 'modelhub verify'") as info:
        validate_manifest(doc, "m")
    assert not isinstance(info.value, NewerFormatError)


def test_features_setting_refuses_what_a_newer_version_wrote() -> None:
    base = {"format": 1}
    assert "features" not in validate_settings(base)  # absent: the format-1 baseline
    # the baseline: what format 1 had when the setting came; features added since are named
    assert declared_features(validate_settings(base)) == BASELINE_FEATURES == frozenset(KNOWN_FEATURES) - {"views", "partial"}
    assert declared_features(validate_settings({**base, "features": ["rans8"]})) == {"rans8"}
    with pytest.raises(NewerFormatError, match=r"features \['sparse_v2'\] .*newer modelhub_torch: upgrade"):
        validate_settings({**base, "features": ["rans8", "sparse_v2"]})
    for bad in ("rans8", [1], [""], {"rans8": True}):
        with pytest.raises(FormatError, match="must be a list of feature names") as info:
            validate_settings({**base, "features": bad})
        assert not isinstance(info.value, NewerFormatError)


def test_features_to_record_names_what_a_version_adds(golden_repo: Repository) -> None:
    doc = _doc(golden_repo, "golden@v3")
    used = manifest_features(doc)
    assert used == manifest_features(golden_repo.manifest(golden_repo.resolve("golden@v3")))
    assert features_to_record({"format": 1}, doc) is None  # the baseline covers it
    assert features_to_record({"features": sorted(used)}, doc) is None
    rec = _planes_record(doc)
    rec["data"]["chunks"][0]["frames"][0][2] = "rans_ctx"
    rec["data"]["exponent_context"] = {"from": 100, "bits": 8}
    assert features_to_record({"features": []}, doc) == [
        f for f in KNOWN_FEATURES if f in used | {"rans_ctx", "exponent_context"}
    ]


def test_views_skeleton_nodes_are_pinned() -> None:
    """The JSON of view nodes (FORMAT.md, SKELETON): a change here changes the format."""
    from modelhub_torch.skeleton import flatten

    conv = torch.arange(16.0).reshape(2, 2, 2, 2).to(memory_format=torch.channels_last)
    qkv = torch.arange(12.0).reshape(6, 2)
    x = torch.arange(8.0).view(torch.complex64)
    grad = torch.ones(2, requires_grad=True)
    flat = flatten({"conv": conv, "row": conv[1, :, 0], "q": qkv[:2], "k": qkv[2:4], "x": x, "xc": x.conj()[1:],
                    "g": grad})
    assert flat.skeleton == {"$dict": [
        ["conv", {"$t": 0, "layout": [8, 1, 4, 2]}],
        ["row", {"$t": 0, "layout": [8, 1, 4, 2], "size": [2, 2], "stride": [1, 2], "offset": 8}],
        ["q", {"$t": 1, "size": [2, 2], "stride": [2, 1], "offset": 0}],
        ["k", {"$t": 1, "size": [2, 2], "stride": [2, 1], "offset": 4}],
        ["x", {"$t": 2}],
        ["xc", {"$t": 2, "size": [3], "stride": [1], "offset": 1, "conj": True}],
        ["g", {"$t": 3, "grad": True}],
    ]}
    assert flat.paths == ["conv", "q/<storage>", "x", "g"]
    assert [list(t.shape) for t in flat.tensors] == [[2, 2, 2, 2], [12], [4], [2]]


def test_a_version_with_views_names_the_feature(tmp_path, monkeypatch) -> None:
    """Views are not in the baseline: the first version using them writes "views" into
    modelhub.json, so a reader that does not know them refuses the repository (upgrade)
    instead of meeting node fields it would take for damage."""
    from modelhub_torch.store import config

    repo = Repository.init(tmp_path / "r")
    repo.commit({"w": torch.randn(4, 4)}, "m")
    assert "views" not in declared_features(repo.store.settings)
    w = torch.randn(4, 4)
    v = repo.commit({"w": w, "t": w.t()}, "m")
    assert manifest_features(repo.manifest(v.id)) == {"views"} | manifest_features(repo.manifest(repo.resolve("m@v1")))
    assert "views" in json.loads((tmp_path / "r" / "modelhub.json").read_text())["features"]
    monkeypatch.setattr(config, "KNOWN_FEATURES", tuple(f for f in KNOWN_FEATURES if f != "views"))
    with pytest.raises(NewerFormatError, match=r"features \['views'\].*upgrade"):
        Repository(tmp_path / "r")


def _signal() -> tuple[np.ndarray, np.ndarray]:
    x = (np.sin(np.arange(4096, dtype=np.float64)) * 0.05).astype(np.float32).view(np.uint32)
    b = (np.sin(np.arange(4096, dtype=np.float64)) * 0.05 + 1e-4).astype(np.float32).view(np.uint32)
    return x, b


def test_whole_tensor_planes_are_pinned() -> None:
    x, _ = _signal()
    swapped = np.empty_like(x)
    to_exp_first(x, 8, swapped)
    planes = np.empty((4, x.size), np.uint8)
    encode_planes(swapped, x[:0], 0, 4, 8, planes)
    assert blake3.blake3(planes.tobytes()).hexdigest() == (
        "4c7cf19e28372aedbe4b7cc8eb1cb5930f322edd1d69078dfff12cc409321f5e"
    )


def test_delta_planes_are_pinned() -> None:
    x, b = _signal()
    planes = np.empty((4, x.size), np.uint8)
    encode_planes(x, b, 2, 4, 0, planes)
    assert blake3.blake3(planes.tobytes()).hexdigest() == (
        "3dc871fdc8ba2bc6560e42576fc318fe85afee13e71be32b92cf59efb1624bcb"
    )


def test_rans_frame_is_pinned() -> None:
    data = (np.arange(3000) % 7 == 0).astype(np.uint8) * 3
    freqs = rans.normalize_freqs(rans.histogram(data))
    out = np.empty(rans.HEADER_BYTES + 2 * data.size + 64, np.uint8)
    used = rans.rans_encode(data, freqs, out)
    assert used == 744
    assert blake3.blake3(out[:used].tobytes()).hexdigest() == (
        "85bbf113ccaaa508cd1db3c4ab81e04dd31100632d92980ae496264dbbcc052b"
    )


def test_rans8_frame_is_pinned() -> None:
    data = (np.arange(3000) % 7 == 0).astype(np.uint8) * 3
    freqs = rans.normalize_freqs(rans.histogram(data))
    out = np.empty(rans.HEADER_BYTES + 2 * data.size + 64, np.uint8)
    used = rans.rans_encode8(data, freqs, out)
    assert blake3.blake3(out[:used].tobytes()).hexdigest() == PINNED_RANS8
    assert used == PINNED_RANS8_BYTES


def test_versions_with_four_state_rans_frames_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Versions written before rans8 hold rans0 frames; they must decode bit for bit."""
    from modelhub_torch.pas import entropy

    def four_state(arr: np.ndarray, counts: np.ndarray) -> bytes:
        out = np.empty(rans.HEADER_BYTES + 2 * arr.shape[0] + 64, np.uint8)
        return out[: rans.rans_encode(arr, rans.normalize_freqs(counts), out, rans.STATES)].tobytes()

    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(300_000, generator=g) * 0.02, "b": torch.randn(64, generator=g)}
    monkeypatch.setattr(entropy, "_rans_encode", four_state)
    monkeypatch.setattr(entropy, "RANS8", entropy.RANS)
    repo = Repository.init(tmp_path / "repo")
    v = repo.commit(sd, "old")
    monkeypatch.undo()
    codecs = {f[2] for rec in repo.manifest(v.id).tensors for c in rec["data"]["chunks"] for f in c["frames"]}
    assert "rans0" in codecs and "rans8" not in codecs
    got = Repository(tmp_path / "repo").load(v.ref)
    for k, t in sd.items():
        assert _bits(got[k]) == _bits(t)
