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
    """The raw bytes of a tensor's values in row-major order (whatever its strides and
    lazy conj/neg bits)."""
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
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


def torch_round_trip(obj: Any, tmp_path: Any, weights_only: bool = True) -> Any:
    """What ``torch.load`` gives back for ``obj`` saved with ``torch.save``: the oracle
    a load from a repository is compared with (:func:`assert_like_torch_load`)."""
    path = tmp_path / f"oracle-{uuid.uuid4().hex}.pt"
    torch.save(obj, path)
    return torch.load(path, weights_only=weights_only)


def _tensor_leaves(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return [(path or "<root>", obj)]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _tensor_leaves(v, f"{path}/{k}")]
    if isinstance(obj, (list, tuple)):
        return [x for i, v in enumerate(obj) for x in _tensor_leaves(v, f"{path}/{i}")]
    return []


def _sharing(leaves: list[tuple[str, Any]]) -> dict[str, str]:
    """Each tensor's path -> the first path whose tensor shares its memory."""
    out: dict[str, str] = {}
    for i, (p, x) in enumerate(leaves):
        out[p] = next(q for q, y in leaves[: i + 1] if _shares(x, y))
    return out


def _shares(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and (x is y or np.shares_memory(x, y))
    if x.numel() == 0 or y.numel() == 0:
        return x is y
    return x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


def assert_like_torch_load(got: Any, want: Any) -> None:
    """``got`` is what torch.load gave (``want``): the same object bit for bit
    (:func:`assert_bit_equal`), and every tensor with the same strides, storage offset,
    storage size, lazy conj/neg bits, requires_grad and leafness; non-empty numpy
    arrays with the same strides; and the same tensors sharing memory (views write through)."""
    assert_bit_equal(got, want)
    leaves_got, leaves_want = _tensor_leaves(got), _tensor_leaves(want)
    assert [p for p, _ in leaves_got] == [p for p, _ in leaves_want]
    for (p, a), (_, b) in zip(leaves_got, leaves_want):
        if isinstance(a, np.ndarray):  # (an empty array's strides mean nothing)
            assert a.strides == b.strides or a.size == 0, f"{p}: strides {a.strides} != {b.strides}"
            continue
        facts = ("stride", "storage_offset", "requires_grad", "is_leaf", "is_conj", "is_neg")
        for fact in facts:
            va, vb = getattr(a, fact), getattr(b, fact)
            va, vb = (va(), vb()) if callable(va) else (va, vb)
            assert va == vb, f"{p}: {fact} {va} != {vb}"
        assert a.untyped_storage().nbytes() == b.untyped_storage().nbytes(), f"{p}: storage size differs"
    assert _sharing(leaves_got) == _sharing(leaves_want)


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


# ------------------------------------------------------------------ S3 (moto)
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _serial_moto_server() -> Any:
    """moto's S3 server on 127.0.0.1 (a free port), answering one request at a time.

    moto checks a conditional PUT's precondition (``If-None-Match``/``If-Match``) and
    stores the object in two steps its request threads can interleave — two racing
    ``If-None-Match: *`` PUTs of one key both succeeded in a trial — where S3 makes
    each conditional write atomic. Serialising the requests gives back S3's guarantee,
    which the concurrent-writer tests rely on; nothing on the client side is patched.
    """
    import threading

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    class SerialMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            lock = threading.Lock()

            def serial(environ: dict, start_response: Any) -> Any:
                with lock:
                    self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
                    return list(app(environ, start_response))

            self._server = make_server(self._ip_address, self._port, serial, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    server = SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.requests = []  # (method, path) of every request, in order
    return server


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """A moto S3 server for the whole session (dummy credentials in the environment,
    inherited by subprocesses); ``.endpoint`` is its URL, ``.requests`` what it served."""
    import logging
    import os

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    saved = {k: os.environ.get(k) for k in S3_KEYS}
    os.environ.update(S3_KEYS)
    server = _serial_moto_server()
    server.start()
    host, port = server.get_host_and_port()
    server.endpoint = f"http://{host}:{port}"
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_endpoint(s3_server: Any) -> str:
    return s3_server.endpoint


def s3_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "key": S3_KEYS["AWS_ACCESS_KEY_ID"], "secret": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"region_name": S3_KEYS["AWS_DEFAULT_REGION"]}}


@pytest.fixture
def s3_repo_url(s3_endpoint: str) -> tuple[str, dict[str, Any]]:
    """``(s3://<fresh bucket>/hub, storage options)``: a repository URL nothing exists at
    yet, on the session's S3 server."""
    import fsspec

    options = s3_options(s3_endpoint)
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    # created without the region option, which s3fs would send as a location
    # constraint (invalid for us-east-1)
    plain = {k: v for k, v in options.items() if k != "client_kwargs"}
    fsspec.filesystem("s3", **plain).mkdir(bucket)
    return f"s3://{bucket}/hub", options
