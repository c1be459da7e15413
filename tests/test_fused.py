"""The fused float32 kernels equal the generic path (their NumPy twins compose it)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhub_torch.kernels import (
    merge4_exp_first,
    merge4_exp_first_numpy,
    merge4_sub,
    merge4_sub_numpy,
    split4_exp_first,
    split4_exp_first_numpy,
    split4_sub,
    split4_sub_numpy,
)
from modelhub_torch.pas.codec import CodecConfig, decode_chunk, encode_chunk

SPECIALS = np.array(
    [0x7FC00001, 0xFFC12345, 0x80000000, 0x00000000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF],
    dtype=np.uint32,
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=400), st.sampled_from([8, 5, 11, 1]))
def test_split_and_merge_match_twins_and_invert(values: list[int], exp_bits: int) -> None:
    x = np.concatenate([np.array(values, dtype=np.uint32), SPECIALS])
    planes = [np.empty(x.size, np.uint8) for _ in range(4)]
    twins = [np.empty(x.size, np.uint8) for _ in range(4)]
    split4_exp_first(x, exp_bits, *planes)
    split4_exp_first_numpy(x, exp_bits, *twins)
    assert all((a == b).all() for a, b in zip(planes, twins, strict=True))
    out, out_twin = np.empty_like(x), np.empty_like(x)
    merge4_exp_first(*planes, exp_bits, out)
    merge4_exp_first_numpy(*planes, exp_bits, out_twin)
    assert (out == x).all() and (out_twin == x).all()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=400))
def test_sub_split_and_merge_match_twins_and_invert(pairs: list[tuple[int, int]]) -> None:
    t = np.array([a for a, _ in pairs] + SPECIALS.tolist(), dtype=np.uint32)
    b = np.array([b for _, b in pairs] + SPECIALS[::-1].tolist(), dtype=np.uint32)
    planes = [np.empty(t.size, np.uint8) for _ in range(4)]
    twins = [np.empty(t.size, np.uint8) for _ in range(4)]
    split4_sub(t, b, *planes)
    split4_sub_numpy(t, b, *twins)
    assert all((x == y).all() for x, y in zip(planes, twins, strict=True))
    out, out_twin = np.empty_like(t), np.empty_like(t)
    merge4_sub(*planes, b, out)
    merge4_sub_numpy(*planes, b, out_twin)
    assert (out == t).all() and (out_twin == t).all()


def test_small_deltas_leave_high_planes_zero() -> None:
    b = np.array([0x3F800000, 0x3F800000], dtype=np.uint32)
    t = b + np.array([3, 0], dtype=np.uint32) - np.array([0, 2], dtype=np.uint32)
    planes = [np.empty(2, np.uint8) for _ in range(4)]
    split4_sub(t, b, *planes)
    assert planes[3].tolist() == [6, 3]  # zigzag(+3) = 6, zigzag(-2) = 3
    assert planes[0].tolist() == planes[1].tolist() == planes[2].tolist() == [0, 0]


def test_plane_zero_holds_the_exponent() -> None:
    x = np.array([0x3F800000, 0xBF800000, 0x40000000], dtype=np.uint32)  # 1.0, -1.0, 2.0
    planes = [np.empty(3, np.uint8) for _ in range(4)]
    split4_exp_first(x, 8, *planes)
    assert planes[0].tolist() == [127, 127, 128]  # the biased exponent, sign elsewhere
    assert planes[1].tolist() == [0, 0x80, 0]  # sign is the top bit of plane 1


def test_codec_fused_path_matches_generic_path() -> None:
    """Whole and delta float32 chunks go through the fused kernels; the generic path
    (forced by grouping) must give the same decoded bits and, ungrouped, the same planes."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(50_000) * 0.05).astype(np.float32).view(np.uint32)
    b = (x.view(np.float32) + 1e-4).astype(np.float32).view(np.uint32)
    for op, base in (("none", None), ("sub", b)):
        fused_cfg = CodecConfig(op=op, lane=4, group_from=8, exp_bits=8 if base is None else 0).for_width(4)
        generic_cfg = CodecConfig(op=op, lane=4, group_from=1, exp_bits=8 if base is None else 0).for_width(4)
        for cfg in (fused_cfg, generic_cfg):
            frames = encode_chunk(x, base, cfg)
            out = np.empty_like(x)
            decode_chunk(frames, x.size, out, base, cfg, "test")
            assert (out == x).all()
