"""Property tests: the Numba plane kernels against their NumPy twins, and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import float32_specials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhub_torch.kernels import (
    OP_NONE,
    OP_SUB,
    OP_XOR,
    decode_planes,
    decode_planes_numpy,
    encode_planes,
    encode_planes_numpy,
    from_exp_first,
    from_exp_first_numpy,
    group_permutation,
    group_permutation_numpy,
    rans,
    to_exp_first,
    to_exp_first_numpy,
)

DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64]
OPS = [OP_NONE, OP_XOR, OP_SUB]

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw, ops=tuple(OPS)):
    """(target, base, op, lane, group_from): a base near the target or unrelated to it."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    width = dtype.itemsize
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["random", "near", "float_like", "extremes"]))
    info = np.iinfo(dtype)
    base = rng.integers(0, info.max, size=n, dtype=dtype, endpoint=True)
    if style == "random":
        target = rng.integers(0, info.max, size=n, dtype=dtype, endpoint=True)
    elif style == "near":  # a slowly changing weight: small wrapping differences
        step = rng.integers(-3, 4, size=n).astype(np.int64).astype(dtype)
        target = base + step
    elif style == "float_like":  # few distinct top bytes, so grouping matters
        top = rng.choice(np.array([0x3C, 0xBC, 0x3F, 0x00, 0x80, 0x7F, 0xFF], np.uint64), size=n)
        low = rng.integers(0, 1 << (8 * width - 8), size=n, dtype=np.uint64) if width > 1 else 0
        target = ((top << np.uint64(8 * width - 8)) | low).astype(dtype)
        base = target ^ rng.integers(0, 4, size=n, dtype=dtype)
    else:
        choices = np.array([0, 1, info.max, info.max - 1, info.max // 2, info.max // 2 + 1], np.uint64)
        target = rng.choice(choices, size=n).astype(dtype)
        base = rng.choice(choices, size=n).astype(dtype)
    op = draw(st.sampled_from(list(ops)))
    lane = draw(st.sampled_from([w for w in (1, 2, 4, 8) if w <= width and width % w == 0]))
    group_from = draw(st.sampled_from(sorted({0, 1, width})))
    return np.ascontiguousarray(target), np.ascontiguousarray(base), op, lane, group_from


def _encode(fn, target, base, op, lane, group_from):
    out = np.full((target.itemsize, target.shape[0]), 0xAA, np.uint8)  # poison: all must be written
    fn(target, base if op != OP_NONE else target[:0], op, lane, group_from, out)
    return out


def _decode(fn, planes, base, op, lane, group_from, dtype, n):
    out = np.full(n, 0x5A, dtype)
    fn(np.ascontiguousarray(planes), base if op != OP_NONE else base[:0], op, lane, group_from, out)
    return out


@SETTINGS
@given(cases())
def test_encode_matches_numpy_twin_and_round_trips(case):
    target, base, op, lane, group_from = case
    fast = _encode(encode_planes, target, base, op, lane, group_from)
    slow = _encode(encode_planes_numpy, target, base, op, lane, group_from)
    assert fast.tobytes() == slow.tobytes()

    back = _decode(decode_planes, fast, base, op, lane, group_from, target.dtype, target.shape[0])
    back_np = _decode(decode_planes_numpy, fast, base, op, lane, group_from, target.dtype, target.shape[0])
    assert back.tobytes() == back_np.tobytes()
    assert back.tobytes() == target.tobytes()


@SETTINGS
@given(cases())
def test_planes_are_a_permutation_of_the_delta_bytes(case):
    """Without grouping, plane p is byte p (most significant first) of the delta."""
    target, base, op, lane, _ = case
    width = target.itemsize
    planes = _encode(encode_planes, target, base, op, lane, width)
    if op == OP_NONE:
        d = target
    elif op == OP_XOR:
        d = target ^ base
    else:
        d = None
    if d is not None:
        big_endian = d.astype(d.dtype.newbyteorder(">")).view(np.uint8).reshape(-1, width)
        assert planes.tobytes() == np.ascontiguousarray(big_endian.T).tobytes()
    # grouping only reorders bytes within each grouped plane
    grouped = _encode(encode_planes, target, base, op, lane, 0)
    for p in range(width):
        assert sorted(grouped[p].tolist()) == sorted(planes[p].tolist())


def test_sub_full_lane_is_zigzag_of_wrapping_difference():
    t = np.array([5, 3, 0, 0xFFFFFFFF, 7], np.uint32)
    b = np.array([3, 5, 0xFFFFFFFF, 0, 7], np.uint32)
    planes = _encode(encode_planes, t, b, OP_SUB, 4, 4)
    d = planes.T.copy().view(">u4").reshape(-1).astype(np.uint32)
    # differences +2, -2, +1 (wraps), -1 (wraps), 0 -> zigzag 4, 3, 2, 1, 0
    assert d.tolist() == [4, 3, 2, 1, 0]


def test_sub_lanes_do_not_carry():
    """lane=1: each byte is a separate zigzag(t_byte - b_byte); no borrow crosses bytes."""
    t = np.array([0x0100], np.uint16)
    b = np.array([0x00FF], np.uint16)
    planes = _encode(encode_planes, t, b, OP_SUB, 1, 2)
    # high byte 0x01-0x00 = +1 -> 2; low byte 0x00-0xFF = +1 (mod 256) -> 2
    assert planes[:, 0].tolist() == [2, 2]
    whole = _encode(encode_planes, t, b, OP_SUB, 2, 2)
    # wrapping 16-bit difference is +1 -> zigzag 2 = 0x0002
    assert whole[:, 0].tolist() == [0, 2]


@SETTINGS
@given(cases(ops=(OP_NONE, OP_XOR, OP_SUB)), st.data())
def test_leading_planes_rebuild_high_bytes(case, data):
    """decode_planes with only planes[:P]: the missing low planes are taken as zero."""
    target, base, op, lane, group_from = case
    width = target.itemsize
    if op == OP_SUB:
        lane = 1  # the plane-separable form
    planes = _encode(encode_planes, target, base, op, lane, group_from)
    p = data.draw(st.integers(0, width), label="P")
    n = target.shape[0]
    partial = _decode(decode_planes, planes[:p], base, op, lane, group_from, target.dtype, n)
    partial_np = _decode(decode_planes_numpy, planes[:p], base, op, lane, group_from, target.dtype, n)
    assert partial.tobytes() == partial_np.tobytes()

    zero_filled = planes.copy()
    zero_filled[p:] = 0
    expected = _decode(decode_planes, zero_filled, base, op, lane, group_from, target.dtype, n)
    assert partial.tobytes() == expected.tobytes()

    # the first P bytes are the target's; the rest come from the zero delta
    low_mask = np.uint64((1 << (8 * (width - p))) - 1)
    high_mask = ~low_mask
    assert np.array_equal(partial.astype(np.uint64) & high_mask, target.astype(np.uint64) & high_mask)
    low = partial.astype(np.uint64) & low_mask
    if op == OP_NONE:
        assert not low.any()  # target with its low bytes zeroed
    else:
        # a zero delta byte means "same as the base" for XOR and lane-1 SUB
        assert np.array_equal(low, base.astype(np.uint64) & low_mask)


@SETTINGS
@given(cases(ops=(OP_SUB,)), st.data())
def test_wider_lanes_separable_at_lane_boundaries(case, data):
    target, base, op, lane, group_from = case
    width = target.itemsize
    if lane == width:
        lane = max(1, width // 2)
    planes = _encode(encode_planes, target, base, op, lane, group_from)
    p = lane * data.draw(st.integers(0, width // lane), label="lanes")
    n = target.shape[0]
    partial = _decode(decode_planes, planes[:p], base, op, lane, group_from, target.dtype, n)
    if 0 < p < width:
        shift = np.uint64(8 * (width - p))
        assert np.array_equal(partial.astype(np.uint64) >> shift, target.astype(np.uint64) >> shift)
    elif p == width:
        assert partial.tobytes() == target.tobytes()


@SETTINGS
@given(st.integers(0, 300), st.integers(0, 2**32 - 1), st.integers(1, 256))
def test_group_permutation_matches_numpy(n, seed, nkeys):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, nkeys, size=n, dtype=np.uint16).astype(np.uint8)
    pos = group_permutation(keys)
    assert pos.dtype == np.int64
    assert np.array_equal(pos, group_permutation_numpy(keys))
    # a permutation that sorts keys & 0x7F stably
    assert sorted(pos.tolist()) == list(range(n))
    ordered = np.empty_like(keys)
    ordered[pos] = keys & 0x7F
    assert np.all(np.diff(ordered.astype(np.int16)) >= 0)
    for k in np.unique(keys & 0x7F):
        idx = np.flatnonzero((keys & 0x7F) == k)
        assert np.all(np.diff(pos[idx]) == 1)


def test_group_permutation_ignores_the_sign_bit():
    keys = np.array([0x81, 0x01, 0x00, 0x80, 0x7F], np.uint8)
    assert group_permutation(keys).tolist() == [2, 3, 0, 1, 4]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("group_from", [0, 1, 4])
def test_float32_special_bit_patterns_survive(op, group_from):
    vals = float32_specials().numpy()
    bits = np.ascontiguousarray(vals.view(np.uint32))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=bits.shape[0], dtype=np.uint32)
    for lane in (1, 2, 4):
        planes = _encode(encode_planes, bits, base, op, lane, group_from)
        back = _decode(decode_planes, planes, base, op, lane, group_from, np.uint32, bits.shape[0])
        assert back.tobytes() == bits.tobytes()
        f = back.view(np.float32)
        assert np.isnan(f[:5]).all()
        assert np.signbit(f[5]) and f[5] == 0.0
        assert np.isinf(f[7]) and np.isinf(f[8]) and f[8] < 0
        assert f[9] > 0 and f[9] < np.finfo(np.float32).tiny


def test_op_none_with_group_from_zero_round_trips():
    """Regression: without a base the keys come from plane 0, so it must stay ungrouped."""
    x = np.array([1, 0x8000, 0x7000, 3, 0xFF00], np.uint16)
    planes = _encode(encode_planes, x, x, OP_NONE, 2, 0)
    assert planes[0].tolist() == [0x00, 0x80, 0x70, 0x00, 0xFF]  # ungrouped
    back = _decode(decode_planes, planes, x, OP_NONE, 2, 0, np.uint16, 5)
    assert back.tolist() == x.tolist()


# ------------------------------------------------------------ exponent-first layout

EXP_BITS_BY_WIDTH = {1: (4, 5), 2: (5, 8), 4: (8,), 8: (11,)}


@SETTINGS
@given(cases(), st.data())
def test_exp_first_layout_matches_numpy_and_round_trips(case, data):
    bits = case[0]
    exp_bits = data.draw(st.sampled_from(EXP_BITS_BY_WIDTH[bits.itemsize]), label="exp_bits")
    fast = np.empty_like(bits)
    slow = np.empty_like(bits)
    to_exp_first(bits, exp_bits, fast)
    to_exp_first_numpy(bits, exp_bits, slow)
    assert fast.tobytes() == slow.tobytes()
    back = np.empty_like(bits)
    from_exp_first(fast, exp_bits, back)
    assert back.tobytes() == bits.tobytes()
    back_np = np.empty_like(bits)
    from_exp_first_numpy(fast, exp_bits, back_np)
    assert back_np.tobytes() == bits.tobytes()
    inplace = fast.copy()
    from_exp_first(inplace, exp_bits, inplace)  # the codec decodes in place
    assert inplace.tobytes() == bits.tobytes()


def test_exp_first_moves_the_exponent_to_the_top():
    x = np.array([-1.5, 2.0, -0.0], np.float32).view(np.uint32)
    out = np.empty_like(x)
    to_exp_first(x, 8, out)
    # -1.5: s=1 e=127 m=0x400000 -> [e][s][m]
    assert out[0] == (127 << 24) | (1 << 23) | 0x400000
    assert out[1] == (128 << 24)
    assert out[2] == (1 << 23)


# ----------------------------------------------------------------------- rANS


@st.composite
def skewed_bytes(draw):
    n = draw(st.integers(0, 3000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["geometric", "uniform", "constant", "two"]))
    if kind == "geometric":
        data = np.minimum(rng.geometric(draw(st.floats(0.05, 0.95)), size=n), 255)
    elif kind == "uniform":
        data = rng.integers(0, 256, size=n)
    elif kind == "constant":
        data = np.full(n, draw(st.integers(0, 255)))
    else:
        data = rng.choice(np.array([0, 255]), size=n, p=[0.99, 0.01])
    return np.ascontiguousarray(data.astype(np.uint8))


def _rans_out(n: int) -> np.ndarray:
    return np.empty(rans.HEADER_BYTES + 2 * n + 1024, np.uint8)


@SETTINGS
@given(skewed_bytes())
def test_rans_matches_numpy_twin_and_round_trips(data):
    n = data.shape[0]
    counts = rans.histogram(data)
    assert counts.tolist() == np.bincount(data, minlength=256).tolist()
    if n == 0:
        return
    freqs = rans.normalize_freqs(counts)
    assert int(freqs.sum()) == rans.M
    assert np.all((freqs > 0) == (counts > 0))
    out = _rans_out(n)
    used = rans.rans_encode(data, freqs, out)
    frame = out[:used].copy()
    assert frame.tobytes() == rans.rans_encode_numpy(data, freqs)
    back = np.empty(n, np.uint8)
    assert rans.rans_decode(frame, back) == used
    assert back.tobytes() == data.tobytes()
    assert rans.rans_decode_numpy(frame.tobytes(), n).tobytes() == data.tobytes()


def test_rans_rejects_malformed_frames():
    rng = np.random.default_rng(3)
    data = np.minimum(rng.geometric(0.3, size=5000), 255).astype(np.uint8)
    freqs = rans.normalize_freqs(rans.histogram(data))
    out = _rans_out(data.shape[0])
    frame = out[: rans.rans_encode(data, freqs, out)].copy()
    back = np.empty(data.shape[0], np.uint8)
    assert rans.rans_decode(frame[: rans.HEADER_BYTES // 2], back) == -1  # truncated header
    assert rans.rans_decode(frame[: len(frame) // 2], back) == -1  # truncated stream
    bad_table = frame.copy()
    bad_table[0] ^= 0x01  # frequencies no longer sum to M
    assert rans.rans_decode(bad_table, back) == -1


def test_numba_loads_with_the_first_coded_tensor_not_at_import() -> None:
    """numba costs ~0.3 s to import: the package, its public names, manifests and
    settings must not pull it in; the first kernel call does."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from modelhub_torch import Repository, load, ModelHubCheckpoint, ModelHubError\n"
        "import modelhub_torch.manifest, modelhub_torch.store.config, modelhub_torch.writer, modelhub_torch.kernels\n"
        "assert 'numba' not in sys.modules, 'numba imported at import time'\n"
        "from modelhub_torch.kernels import encode_planes\n"
        "assert 'numba' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
