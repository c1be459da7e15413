"""Golden-file tests: the byte format of FORMAT.md must keep decoding.

``tests/golden/repo-v1`` was written by ``tests/golden/make_golden.py``; whatever the
code becomes, that repository must load to exactly these values. The kernel stages
we own (plane split, exponent-first layout, rANS) are pinned byte for byte; zstd's
output is not (the library may change it), only its decoding.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch

from modelhub_torch import Repository
from modelhub_torch.kernels import encode_planes, rans, to_exp_first

GOLDEN = Path(__file__).parent / "golden"
# a rans8 frame of the data in test_rans8_frame_is_pinned (the twin in kernels/rans.py
# writes the same bytes: tests/test_rans.py)
PINNED_RANS8 = "c60b2783b176bddb954c8ab038f36190b7cd3f05d9356cfac136580dc5d7a858"
PINNED_RANS8_BYTES = 752
sys.path.insert(0, str(GOLDEN))
from make_golden import golden_versions  # noqa: E402


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
