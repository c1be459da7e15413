"""Baseline ("anchor") measurements the checkpoint store is compared against.

Every function takes a list of checkpoints -- plain state dicts or nested checkpoint dicts
such as Lightning ``.ckpt`` contents -- and returns numbers; nothing is printed.

* :func:`torch_save_bytes` -- ``torch.save`` each checkpoint to its own file.
* :func:`zstd_per_file_bytes` -- the same files, each compressed whole with zstd.
* :func:`zipnn_per_version` -- ZipNN (byte grouping + entropy coding) on every tensor leaf.
* :func:`zipnn_xor_delta` -- ZipNN on the XOR of each version with the one before.
* :func:`torch_load_seconds` -- time to ``torch.load`` an uncompressed checkpoint file.

The ZipNN anchors cover tensor leaves only (see :func:`iter_tensors`); pickled non-tensor
content (hyperparameters, loop state, ...) is not counted there.

Note: ``zipnn.ZipNN.compress`` rewrites the buffer it is given in place (it reorders the
bits of float data), even for ``bytes`` objects, so it is always handed a private
``bytearray`` copy here.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

#: Dtypes ZipNN compresses with byte grouping, by the name ZipNN knows them under.
_ZIPNN_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
#: Unsigned integer of the same width, for XOR of bit patterns.
_BITS_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_ZSTD_LEVEL = 3


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor leaf of a nested checkpoint object.

    Dicts are walked in their insertion order, lists and tuples in index order, so the
    order is deterministic for a given checkpoint. Paths join keys and indices with ``/``
    (``"optimizer_states/0/state/3/exp_avg"``). Anything that is neither a tensor nor a
    dict, list or tuple (numbers, strings, hyperparameter objects, ...) is skipped: the
    ZipNN anchors count tensor bytes only.
    """
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from iter_tensors(value, f"{prefix}/{i}" if prefix else str(i))


def _tensor_map(obj: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, tensor in iter_tensors(obj):
        if path in out:
            raise ValueError(f"two tensor leaves share the path {path!r}")
        out[path] = tensor
    return out


def _raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements as bytes, row-major, native byte order."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def torch_save_bytes(objs: Sequence[Any]) -> int:
    """Total size in bytes of ``torch.save(obj, file)`` for each object, one file each."""
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, obj in enumerate(objs):
            path = Path(tmp) / f"{i}.pt"
            torch.save(obj, path)
            total += path.stat().st_size
            path.unlink()
    return total


def zstd_per_file_bytes(objs: Sequence[Any], level: int = 3) -> int:
    """Total size in bytes of each object ``torch.save``-d to bytes, then zstd-compressed
    whole at ``level`` (one independent frame per checkpoint, no cross-version sharing)."""
    cctx = zstandard.ZstdCompressor(level=level)
    total = 0
    for obj in objs:
        buf = io.BytesIO()
        torch.save(obj, buf)
        total += len(cctx.compress(buf.getvalue()))
    return total


@cache
def _zipnn_codec(dtype_name: str):
    import zipnn

    return zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype_name)


class _LeafCodec:
    """ZipNN for float32/float16/bfloat16 bit patterns, zstd for everything else."""

    def __init__(self) -> None:
        self.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
        self.dctx = zstandard.ZstdDecompressor()
        self.zipnn_leaves = 0
        self.zstd_leaves = 0
        for name in _ZIPNN_DTYPES.values():  # import zipnn and build codecs outside timings
            _zipnn_codec(name)

    def encode(self, dtype: torch.dtype, raw: bytes) -> bytes:
        name = _ZIPNN_DTYPES.get(dtype)
        if name is None or not raw:
            self.zstd_leaves += 1
            return self.cctx.compress(raw)
        self.zipnn_leaves += 1
        return bytes(_zipnn_codec(name).compress(bytearray(raw)))

    def decode(self, dtype: torch.dtype, payload: bytes, size: int) -> bytes:
        name = _ZIPNN_DTYPES.get(dtype)
        if name is None or size == 0:
            return self.dctx.decompress(payload, max_output_size=size)
        return bytes(_zipnn_codec(name).decompress(payload))


def _mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def zipnn_per_version(objs: Sequence[Any]) -> dict[str, Any]:
    """ZipNN on every tensor leaf of every version, each leaf compressed on its own.

    float32 / float16 / bfloat16 leaves go through ZipNN's byte-format codec with the
    matching ``bytearray_dtype`` (byte grouping, then Huffman/zstd); other dtypes and empty
    tensors fall back to zstd level 3. Every leaf is decompressed again and checked to be
    bit-identical. Non-tensor checkpoint content is not counted (see :func:`iter_tensors`).

    Returns ``bytes`` (total compressed), ``raw_bytes`` (total tensor bytes), ``ratio``
    (bytes / raw_bytes), ``per_version_bytes``, ``encode_mb_s`` and ``decode_mb_s`` (raw
    megabytes, 1e6 bytes, per second of compression / decompression calls),
    ``zipnn_leaves`` and ``zstd_leaves``.
    """
    codec = _LeafCodec()
    raw_total = comp_total = 0
    enc_s = dec_s = 0.0
    per_version: list[int] = []
    for obj in objs:
        version_bytes = 0
        for path, tensor in iter_tensors(obj):
            raw = _raw_bytes(tensor)
            t0 = time.perf_counter()
            payload = codec.encode(tensor.dtype, raw)
            t1 = time.perf_counter()
            back = codec.decode(tensor.dtype, payload, len(raw))
            t2 = time.perf_counter()
            if back != raw:
                raise AssertionError(f"zipnn round trip changed {path!r}")
            enc_s += t1 - t0
            dec_s += t2 - t1
            raw_total += len(raw)
            version_bytes += len(payload)
        per_version.append(version_bytes)
        comp_total += version_bytes
    return {
        "bytes": comp_total,
        "raw_bytes": raw_total,
        "ratio": comp_total / raw_total if raw_total else 1.0,
        "per_version_bytes": per_version,
        "encode_mb_s": _mb_per_s(raw_total, enc_s),
        "decode_mb_s": _mb_per_s(raw_total, dec_s),
        "zipnn_leaves": codec.zipnn_leaves,
        "zstd_leaves": codec.zstd_leaves,
    }


def _xor(a: bytes, b: bytes, itemsize: int) -> bytes:
    width = _BITS_DTYPES.get(itemsize, np.uint8)
    if len(a) % np.dtype(width).itemsize:
        width = np.uint8
    return np.bitwise_xor(np.frombuffer(a, dtype=width), np.frombuffer(b, dtype=width)).tobytes()


def zipnn_xor_delta(objs: Sequence[Any]) -> dict[str, Any]:
    """ZipNN on a chain of XOR deltas: version 0 whole, version i as XOR with version i-1.

    Tensor leaves are matched across versions by their :func:`iter_tensors` path. A leaf of
    version i > 0 whose path exists in version i-1 with the same dtype and shape is stored
    as the XOR of the two leaves' bit patterns (uint32 for float32, uint16 for 16-bit
    floats), compressed with ZipNN as the leaf's dtype; other leaves are stored whole, as in
    :func:`zipnn_per_version` (non-float dtypes via zstd). Decoding rebuilds every version
    from the decoded previous one and checks it is bit-identical. Non-tensor checkpoint
    content is not counted.

    Returns ``bytes``, ``raw_bytes``, ``ratio``, ``per_version_bytes``, ``encode_mb_s``,
    ``decode_mb_s`` (XOR time included), ``delta_leaves`` and ``whole_leaves``.
    """
    codec = _LeafCodec()
    raw_total = comp_total = 0
    enc_s = dec_s = 0.0
    per_version: list[int] = []
    delta_leaves = whole_leaves = 0
    prev: dict[str, tuple[torch.dtype, tuple[int, ...], bytes]] = {}
    prev_decoded: dict[str, bytes] = {}
    for obj in objs:
        version_bytes = 0
        current: dict[str, tuple[torch.dtype, tuple[int, ...], bytes]] = {}
        decoded: dict[str, bytes] = {}
        for path, tensor in _tensor_map(obj).items():
            raw = _raw_bytes(tensor)
            meta = (tensor.dtype, tuple(tensor.shape))
            base = prev.get(path)
            use_delta = base is not None and base[:2] == meta and len(raw) > 0
            itemsize = tensor.element_size()
            t0 = time.perf_counter()
            if use_delta:
                payload = codec.encode(tensor.dtype, _xor(raw, base[2], itemsize))
            else:
                payload = codec.encode(tensor.dtype, raw)
            t1 = time.perf_counter()
            back = codec.decode(tensor.dtype, payload, len(raw))
            if use_delta:
                back = _xor(back, prev_decoded[path], itemsize)
            t2 = time.perf_counter()
            if back != raw:
                raise AssertionError(f"zipnn xor-delta round trip changed {path!r}")
            enc_s += t1 - t0
            dec_s += t2 - t1
            delta_leaves += use_delta
            whole_leaves += not use_delta
            raw_total += len(raw)
            version_bytes += len(payload)
            current[path] = (*meta, raw)
            decoded[path] = back
        per_version.append(version_bytes)
        comp_total += version_bytes
        prev, prev_decoded = current, decoded
    return {
        "bytes": comp_total,
        "raw_bytes": raw_total,
        "ratio": comp_total / raw_total if raw_total else 1.0,
        "per_version_bytes": per_version,
        "encode_mb_s": _mb_per_s(raw_total, enc_s),
        "decode_mb_s": _mb_per_s(raw_total, dec_s),
        "delta_leaves": delta_leaves,
        "whole_leaves": whole_leaves,
    }


def torch_load_seconds(path: str | os.PathLike[str], repeats: int = 5) -> float:
    """Median wall-clock seconds of ``torch.load(path, weights_only=False)`` over
    ``repeats`` loads of an uncompressed checkpoint file, after one untimed warm-up load
    (so the page cache is warm)."""
    torch.load(path, map_location="cpu", weights_only=False)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
