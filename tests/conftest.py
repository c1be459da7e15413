"""Shared fixtures and helpers: repositories on disk and in memory, bit-exact comparison."""

from __future__ import annotations

import math
import struct
import uuid
from typing import Any

import numpy as np
import pytest
import torch

from modelhub_torch.repository import Repository


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor in row-major order (whatever its strides)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def assert_bit_equal(a: Any, b: Any, path: str = "") -> None:
    """Assert two nested checkpoint objects are equal bit for bit.

    Types must match exactly (tuple vs list, OrderedDict vs dict, int vs float, ...),
    dict key order must match, tensors must have the same dtype, shape, Parameter-ness
    and bytes; floats are compared through their IEEE bit pattern (NaN, -0.0).
    """
    where = path or "<root>"
    assert type(a) is type(b), f"{where}: type {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        assert a.shape == b.shape, f"{where}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        if isinstance(a, torch.nn.Parameter):
            assert a.requires_grad == b.requires_grad, f"{where}: requires_grad differs"
        assert tensor_bytes(a) == tensor_bytes(b), f"{where}: tensor bytes differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), f"{where}: bytes differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{where}: {a!r} != {b!r} (bits)"
    elif isinstance(a, dict):
        assert _keys_bit_equal(a, b), f"{where}: keys {list(a)!r} != {list(b)!r}"
        for (ka, va), (_kb, vb) in zip(a.items(), b.items()):
            assert_bit_equal(va, vb, f"{path}/{ka}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (va, vb) in enumerate(zip(a, b)):
            assert_bit_equal(va, vb, f"{path}/{i}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _keys_bit_equal(a: dict, b: dict) -> bool:
    if len(a) != len(b):
        return False
    for ka, kb in zip(a, b):
        if type(ka) is not type(kb):
            return False
        if isinstance(ka, float):
            if struct.pack("<d", ka) != struct.pack("<d", kb):
                return False
        elif ka != kb:
            return False
    return True


def is_neg_zero(x: float) -> bool:
    return x == 0.0 and math.copysign(1.0, x) < 0


def float32_specials() -> torch.Tensor:
    """float32 values by bit pattern: NaN payloads, signed zeros, infinities, denormals."""
    patterns = [
        0x7FC00000,  # quiet NaN
        0x7FC00001,  # quiet NaN with payload
        0x7F800001,  # signalling NaN
        0xFFFFFFFF,  # negative NaN, all payload bits
        0xFFC12345,  # negative quiet NaN with payload
        0x80000000,  # -0.0
        0x00000000,  # +0.0
        0x7F800000,  # +inf
        0xFF800000,  # -inf
        0x00000001,  # smallest denormal
        0x807FFFFF,  # largest negative denormal
        0x00400000,  # mid denormal
        0x7F7FFFFF,  # max finite
        0x3F800000,  # 1.0
    ]
    return torch.tensor(np.array(patterns, dtype=np.uint32).view(np.int32)).view(torch.float32)


def unique_memory_url() -> str:
    return f"memory://t{uuid.uuid4().hex}"


@pytest.fixture
def memory_url() -> str:
    return unique_memory_url()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catalogs of remote (memory://) repositories go to a per-test cache directory."""
    monkeypatch.setenv("MODELHUB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(params=["local", "memory"])
def repo(request: pytest.FixtureRequest, tmp_path) -> Repository:
    """A fresh repository, once on a local directory and once on ``memory://``."""
    if request.param == "local":
        return Repository.init(tmp_path / "repo")
    return Repository.init(unique_memory_url())


@pytest.fixture
def local_repo(tmp_path) -> Repository:
    return Repository.init(tmp_path / "repo")
