"""The fused float32 kernels equal the generic path (their NumPy twins compose it)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhub_torch.kernels import (
    merge4_exp_first,
    merge4_exp_first_numpy,
    split4_exp_first,
    split4_exp_first_numpy,
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


def test_plane_zero_holds_the_exponent() -> None:
    x = np.array([0x3F800000, 0xBF800000, 0x40000000], dtype=np.uint32)  # 1.0, -1.0, 2.0
    planes = [np.empty(3, np.uint8) for _ in range(4)]
    split4_exp_first(x, 8, *planes)
    assert planes[0].tolist() == [127, 127, 128]  # the biased exponent, sign elsewhere
    assert planes[1].tolist() == [0, 0x80, 0]  # sign is the top bit of plane 1


def test_codec_fused_path_matches_generic_path() -> None:
    """Whole float32 chunks go through the fused kernels; forcing the generic path
    (grouping on) must give the same decoded bits."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(50_000) * 0.05).astype(np.float32).view(np.uint32)
    fused_cfg = CodecConfig(op="none", group_from=8, exp_bits=8).for_width(4)
    generic_cfg = CodecConfig(op="none", group_from=1, exp_bits=8).for_width(4)
    for cfg in (fused_cfg, generic_cfg):
        frames = encode_chunk(x, None, cfg)
        out = np.empty_like(x)
        decode_chunk(frames, x.size, out, None, cfg, "test")
        assert (out == x).all()
