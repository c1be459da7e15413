"""The tensor codec: chunked parallel coding, entropy stage, configs, corrupt payloads."""

from __future__ import annotations

import numpy as np
import pytest

from modelhub_torch.errors import CorruptObjectError, FormatError, ModelHubError
from modelhub_torch.kernels.ops import OP_NONE, OP_SUB, OP_XOR
from modelhub_torch.pas import entropy
from modelhub_torch.pas.codec import (
    CodecConfig,
    chunk_bounds,
    decode_tensor,
    encode_tensor,
)
from modelhub_torch.pas.registry import DELTA_OPS, PLANE_CODERS, DeltaOp, NewerFormatError


def _weights(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n).astype(np.float32).view(np.uint32)


def _round_trip(bits, base, cfg):
    chunks = list(encode_tensor(bits, base, cfg))
    out = np.empty_like(bits)
    out.fill(0xFF)
    decode_tensor(chunks, out, base, cfg, "test")
    return chunks, out


@pytest.mark.parametrize("op", ["none", "xor", "sub"])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_round_trip_many_chunks(op, with_base, dtype):
    n = 5_321
    rng = np.random.default_rng(1)
    bits = rng.integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
    base = None
    if with_base:
        base = (bits + rng.integers(0, 3, size=n, dtype=dtype)).astype(dtype)
    width = bits.itemsize
    for lane in [w for w in (1, 2, 4, 8) if w <= width]:
        for group_from in (0, 1, width):
            cfg = CodecConfig(op=op, lane=lane, group_from=group_from, chunk_elems=1000)
            chunks, out = _round_trip(bits, base, cfg)
            assert [c[0] for c in chunks] == [1000] * 5 + [321]
            assert all(len(frames) == width for _, frames in chunks)
            assert out.tobytes() == bits.tobytes(), (op, lane, group_from)


def test_float_weights_round_trip_and_compress():
    bits = _weights(20_000)
    cfg = CodecConfig(op="none", group_from=1, chunk_elems=1000)
    chunks, out = _round_trip(bits, None, cfg)
    assert out.tobytes() == bits.tobytes()
    stored = sum(len(p) for _, frames in chunks for _, p in frames)
    assert stored < bits.nbytes  # the exponent plane compresses

    # a nearby version coded against it: much smaller than the whole tensor
    new = (bits.view(np.float32) + np.float32(1e-4)).view(np.uint32)
    dcfg = CodecConfig(op="sub", lane=4, group_from=0, chunk_elems=1000)
    dchunks, dout = _round_trip(new, bits, dcfg)
    assert dout.tobytes() == new.tobytes()
    assert sum(len(p) for _, frames in dchunks for _, p in frames) < stored


def test_empty_tensor():
    bits = np.empty(0, np.uint32)
    chunks, out = _round_trip(bits, None, CodecConfig(chunk_elems=1000))
    assert len(chunks) == 1 and chunks[0][0] == 0
    assert out.shape == (0,)


def test_chunk_bounds():
    assert chunk_bounds(0, 10) == [(0, 0)]
    assert chunk_bounds(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert chunk_bounds(20, 10) == [(0, 10), (10, 20)]


def test_wrong_element_count_is_a_format_error():
    bits = _weights(3000)
    cfg = CodecConfig(chunk_elems=1000)
    chunks = list(encode_tensor(bits, None, cfg))
    with pytest.raises(FormatError, match="2000 elements, expected 3000"):
        decode_tensor(chunks[:2], np.empty_like(bits), None, cfg, "t")


def test_incompressible_plane_is_raw():
    rng = np.random.default_rng(7)
    plane = rng.integers(0, 256, size=100_000, dtype=np.uint8).tobytes()
    codec, payload = entropy.encode_plane(plane, 1)
    assert codec == "raw"
    assert payload == plane
    assert entropy.decode_plane(codec, payload, len(plane), "p") == plane


def test_constant_plane_is_zstd_and_tiny():
    plane = bytes([0x3F]) * 100_000
    codec, payload = entropy.encode_plane(plane, 1)
    assert codec == "zstd"
    assert len(payload) < 0.01 * len(plane)
    assert bytes(entropy.decode_plane(codec, payload, len(plane), "p")) == plane


def test_low_mantissa_planes_of_weights_are_raw_exponent_plane_coded():
    bits = _weights(50_000)
    (_, frames), = list(encode_tensor(bits, None, CodecConfig(group_from=1, chunk_elems=1 << 20)))
    kinds = [k for k, _ in frames]
    assert kinds[0] in ("zstd", "rans8")  # sign + high exponent bits: low entropy
    assert len(frames[0][1]) < 0.6 * 50_000
    assert kinds[3] == "raw" and len(frames[3][1]) == 50_000  # lowest mantissa byte is noise


def test_skewed_plane_without_repeats_round_trips_through_its_coder():
    rng = np.random.default_rng(11)
    plane = np.minimum(rng.geometric(0.35, size=200_000), 255).astype(np.uint8).tobytes()
    codec, payload = entropy.encode_plane(plane, 1)
    assert codec in ("zstd", "rans8")
    assert len(payload) < 0.5 * len(plane)
    assert bytes(entropy.decode_plane(codec, payload, len(plane), "p")) == plane
    with pytest.raises(CorruptObjectError):
        entropy.decode_plane(codec, payload[: len(payload) // 2], len(plane), "p")


@pytest.mark.parametrize(
    "kwargs",
    [{"op": "add"}, {"op": "XOR"}, {"op": ""}, {"lane": 3}, {"lane": 0}, {"lane": 16}],
)
def test_config_rejects_bad_op_or_lane(kwargs):
    with pytest.raises(ModelHubError):
        CodecConfig(**kwargs)
    with pytest.raises(FormatError):
        CodecConfig.from_json({**CodecConfig().to_json(), **kwargs})


def test_config_json_round_trip_and_unknown_field():
    cfg = CodecConfig(op="sub", lane=2, group_from=0, level=3, chunk_elems=1234)
    assert CodecConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(FormatError, match="bad codec config"):
        CodecConfig.from_json({"op": "none", "bogus": 1})


def test_for_width_clips_lane_and_group():
    cfg = CodecConfig(op="sub", lane=4, group_from=8)
    assert cfg.for_width(2) == CodecConfig(op="sub", lane=2, group_from=2)
    assert cfg.for_width(8) is cfg


def _payloads(bits, cfg):
    return list(encode_tensor(bits, None, cfg))


def test_corrupt_zstd_payload_raises():
    bits = np.zeros(10_000, np.uint32)  # every plane compresses: all frames zstd
    cfg = CodecConfig(chunk_elems=10_000)
    (n, frames), = _payloads(bits, cfg)
    assert all(k == "zstd" for k, _ in frames)
    codec, payload = frames[0]
    garbage = bytes(b ^ 0x5A for b in payload)
    with pytest.raises(CorruptObjectError, match="plane 0"):
        decode_tensor([(n, [(codec, garbage), *frames[1:]])], np.empty_like(bits), None, cfg, "t")
    truncated = payload[: len(payload) // 2]
    with pytest.raises(CorruptObjectError):
        decode_tensor([(n, [(codec, truncated), *frames[1:]])], np.empty_like(bits), None, cfg, "t")


def test_raw_payload_of_wrong_size_raises():
    bits = _weights(4000)
    cfg = CodecConfig(chunk_elems=4000)
    (n, frames), = _payloads(bits, cfg)
    assert frames[3][0] == "raw"
    short = [*frames[:3], ("raw", frames[3][1][:-1])]
    with pytest.raises(CorruptObjectError, match="3999 bytes, expected 4000"):
        decode_tensor([(n, short)], np.empty_like(bits), None, cfg, "t")


def test_unknown_plane_coder_asks_for_an_upgrade_not_a_verify():
    bits = _weights(100)
    cfg = CodecConfig(chunk_elems=1000)
    (n, frames), = _payloads(bits, cfg)
    bad = [("lz4", frames[0][1]), *frames[1:]]
    with pytest.raises(NewerFormatError, match=r"frame coder 'lz4' is unknown .* newer modelhub_torch: upgrade"):
        decode_tensor([(n, bad)], np.empty_like(bits), None, cfg, "t")
    damaged = [("\x00zstd", frames[0][1]), *frames[1:]]
    with pytest.raises(FormatError, match="damaged") as info:
        decode_tensor([(n, damaged)], np.empty_like(bits), None, cfg, "t")
    assert not isinstance(info.value, NewerFormatError)


def test_unknown_delta_op_asks_for_an_upgrade():
    with pytest.raises(NewerFormatError, match=r"delta op 'add' is unknown .* upgrade"):
        CodecConfig.from_json({**CodecConfig().to_json(), "op": "add"})
    with pytest.raises(FormatError, match="damaged") as info:
        CodecConfig.from_json({**CodecConfig().to_json(), "op": 2})
    assert not isinstance(info.value, NewerFormatError)


def test_registries_name_every_coder_and_op_of_the_format():
    """FORMAT.md's coders and ops, each with its feature: the ids are the stored format."""
    assert {c.id: c.feature for c in PLANE_CODERS} == {
        "raw": None, "zstd": None, "rans0": "rans0", "rans8": "rans8", "rans_ctx": "rans_ctx",
    }
    assert [c.id for c in PLANE_CODERS if c.needs_context] == ["rans_ctx"]
    assert {op.id: op.kernel_op for op in DELTA_OPS} == {"none": OP_NONE, "xor": OP_XOR, "sub": OP_SUB}
    with pytest.raises(ValueError, match="registered twice"):
        DELTA_OPS.register(DeltaOp("sub", OP_SUB))


def test_zstd_frame_decoding_to_wrong_size_raises():
    big = entropy.encode_plane(bytes(2000), 1)
    assert big[0] == "zstd"
    with pytest.raises(CorruptObjectError):
        entropy.decode_plane("zstd", big[1], 1000, "p")
    with pytest.raises(CorruptObjectError, match="expected 3000"):
        entropy.decode_plane("zstd", big[1], 3000, "p")
