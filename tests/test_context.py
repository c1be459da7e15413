"""Context coding of deltas (the neighbouring delta, or the base's exponent): kernels
vs twins, frames, and repository histories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhub_torch import Repository
from modelhub_torch.errors import CorruptObjectError, FormatError, ModelHubError
from modelhub_torch.kernels import rans_ctx
from modelhub_torch.pas import entropy
from modelhub_torch.pas.codec import CodecConfig, ExponentContext, decode_tensor, encode_tensor


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(-(2**20), 2**20)), max_size=300))
def test_context_buckets_match_twin(pairs: list[tuple[int, int]]) -> None:
    a = np.array([x for x, _ in pairs] + [0, 2**31, 2**32 - 1], dtype=np.uint32)
    b = np.array([(x + d) % 2**32 for x, d in pairs] + [1, 0, 0], dtype=np.uint32)
    got, want = np.empty(a.size, np.uint8), np.empty(a.size, np.uint8)
    rans_ctx.context_buckets(a, b, got)
    rans_ctx.context_buckets_numpy(a, b, want)
    assert (got == want).all()
    assert got.max(initial=0) < rans_ctx.K


def test_buckets_follow_the_size_of_the_neighbouring_delta() -> None:
    a = np.array([100, 100, 100, 100], dtype=np.uint32)
    b = np.array([100, 99, (100 - 2**10) % 2**32, 100 + 2**25], dtype=np.uint32)
    got = np.empty(4, np.uint8)
    rans_ctx.context_buckets(a, b, got)
    # zigzag(0)=0 -> 0; zigzag(1)=2 (2 bits) -> 0; zigzag(2^10)=2^11 (12 bits) -> 8; 27 bits -> 15
    assert got.tolist() == [0, 0, 8, 15]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_rans_ctx_matches_twin_and_roundtrips(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, rans_ctx.K, n).astype(np.uint8)
    data = (rng.integers(0, 6, n) * (ctx.astype(np.int64) + 1) % 256).astype(np.uint8)
    freqs = rans_ctx.normalize_freqs2d(rans_ctx.histogram2d(data, ctx))
    out = np.empty(2 * n + 32, np.uint8)
    used = rans_ctx.rans_ctx_encode(data, ctx, freqs, out)
    assert out[:used].tobytes() == rans_ctx.rans_ctx_encode_numpy(data, ctx, freqs)
    dec = np.empty(n, np.uint8)
    assert rans_ctx.rans_ctx_decode(out[:used], ctx, freqs, dec) == used
    assert (dec == data).all()
    if n <= 400:
        assert (rans_ctx.rans_ctx_decode_numpy(out[:used].tobytes(), ctx, freqs, n) == data).all()


def _trajectory(n: int = 200_000, versions: int = 4) -> list[np.ndarray]:
    """Adam-like: each weight has its own step size, stable over time."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(n) * 0.05).astype(np.float32)
    step = np.exp(rng.uniform(np.log(1e-6), np.log(1e-3), n)).astype(np.float32)
    out = [w]
    for _ in range(versions - 1):
        out.append((out[-1] + step * rng.choice([-1.0, 1.0], n).astype(np.float32)).astype(np.float32))
    return [x.view(np.uint32) for x in out]


def _context_frames_pay_and_decode(g: np.ndarray, p: np.ndarray, context, max_share: float) -> None:
    """Coding the delta g - p with ``context`` uses context frames, is smaller than
    plain coding by the given share, decodes back, and refuses to decode without it."""
    cfg = CodecConfig(op="sub", lane=4, group_from=8, chunk_elems=50_000).for_width(4)
    plain = list(encode_tensor(g, p, cfg))
    with_ctx = list(encode_tensor(g, p, cfg, context=context))
    assert entropy.RANS_CTX in {c for _, frames in with_ctx for c, _ in frames}
    size = lambda chunks: sum(len(x) for _, fr in chunks for _, x in fr)  # noqa: E731
    assert size(with_ctx) < max_share * size(plain)
    out = np.empty_like(g)
    decode_tensor(with_ctx, out, p, cfg, "test", context=context)
    assert (out == g).all()
    with pytest.raises(ModelHubError, match="context"):
        decode_tensor(with_ctx, np.empty_like(g), p, cfg, "test")  # context missing


def test_context_frames_are_chosen_and_decode() -> None:
    g, p, n = _trajectory(versions=3)
    _context_frames_pay_and_decode(g, p, n, 0.95)


def test_corrupt_context_frame_is_detected() -> None:
    rng = np.random.default_rng(5)
    ctx = rng.integers(0, rans_ctx.K, 20_000).astype(np.uint8)
    # a plane whose bytes depend on the context: order-0 coders cannot see it
    plane = (ctx.astype(np.int64) * 13 + rng.integers(0, 2, ctx.size)).astype(np.uint8)
    codec_id, payload = entropy.encode_plane_ctx(memoryview(plane), ctx, 1)
    assert codec_id == entropy.RANS_CTX
    assert bytes(entropy.decode_plane(codec_id, payload, plane.size, "t", ctx)) == plane.tobytes()
    bad = bytearray(payload)
    bad[6] ^= 0xFF  # inside the compressed tables
    with pytest.raises(CorruptObjectError):
        entropy.decode_plane(codec_id, bytes(bad), plane.size, "t", ctx)
    with pytest.raises(CorruptObjectError):
        entropy.decode_plane(codec_id, payload[:-10], plane.size, "t", ctx)


def test_repack_recodes_deltas_with_their_neighbour_as_context(tmp_path) -> None:
    """Commits code reverse deltas plainly (fast to commit and to decode); repack
    re-codes each plain delta whose base is itself a delta with that neighbouring delta
    as context, and every version still restores bit for bit."""
    traj = _trajectory(n=300_000, versions=6)
    tensors = [torch.from_numpy(x.view(np.float32).copy()) for x in traj]
    repo = Repository.init(tmp_path / "repo", max_load_factor=None, repack="commit")
    for t in tensors:
        repo.commit({"w": t, "b": torch.ones(3)}, "m")
    ids = {v.number: v.id for v in repo.versions("m")}
    for number in range(1, 6):  # committed plainly: no context anywhere
        data = repo.manifest(ids[number]).tensors[0]["data"]
        assert data["base"] == {"version": ids[number + 1], "index": 0}
        assert "context" not in data and "exponent_context" not in data
    before = repo.stats()["stored_bytes"]
    report = repo.repack()
    assert report.versions == 4 and report.tensors == 4 and report.over_budget == []
    assert report.bytes_after < 0.95 * report.bytes_before
    for number in (1, 2, 3, 4):  # every version but the two newest got its context
        data = repo.manifest(ids[number]).tensors[0]["data"]
        assert data["base"] == {"version": ids[number + 1], "index": 0}
        assert data["context"] == {"version": ids[number + 2], "index": 0}
    assert "context" not in repo.manifest(ids[5]).tensors[0]["data"]
    assert repo.stats()["stored_bytes"] < before
    for number, t in enumerate(tensors, start=1):
        got = repo.load(f"m@v{number}")["w"]
        assert torch.equal(got.view(torch.int32), t.view(torch.int32))
    assert repo.verify() == []
    assert repo.gc()["objects_removed"] == 0  # switch() already removed the old packs
    assert repo.repack().versions == 0  # nothing left to re-code


def test_repack_stays_within_the_recreation_budget(tmp_path) -> None:
    """Context-coded planes decode slower: repack re-codes only while every version
    reading the record keeps its estimated restore within max_load_factor."""
    from modelhub_torch.budget import estimate

    traj = _trajectory(n=300_000, versions=6)
    repo = Repository.init(tmp_path / "repo", max_load_factor=None, repack="commit")
    for x in traj:
        repo.commit({"w": torch.from_numpy(x.view(np.float32).copy())}, "m")
    factors = {v.id: estimate(repo.store.manifest, v.id).factor for v in repo.versions("m")}
    # headroom for one re-code (~3.3 whole loads here: three rans_ctx planes), not two:
    # the oldest version reads every record of the chain
    limit = max(factors.values()) + 4.0
    repo.store.update_settings(max_load_factor=limit)
    report = repo.repack()
    assert 1 <= report.versions < 4 and report.over_budget  # the rest was left out for the budget
    for v in repo.versions("m"):
        assert estimate(repo.store.manifest, v.id).factor <= limit
        assert torch.equal(repo.load(v.ref)["w"].view(torch.int32),
                           torch.from_numpy(traj[v.number - 1].view(np.int32)))


def test_context_coding_can_be_switched_off(tmp_path) -> None:
    traj = _trajectory(n=100_000, versions=4)
    repo = Repository.init(tmp_path / "repo", context_coding=False, max_load_factor=None)
    for x in traj:
        repo.commit({"w": torch.from_numpy(x.view(np.float32).copy())}, "m")
    assert repo.repack().versions == 0
    for v in repo.versions("m"):
        assert "context" not in repo.manifest(v.id).tensors[0]["data"]
        assert "exponent_context" not in repo.manifest(v.id).tensors[0]["data"]
        assert torch.equal(
            repo.load(v.ref)["w"].view(torch.int32),
            torch.from_numpy(traj[v.number - 1].view(np.int32)),
        )


# ------------------------------------------------------------ exponent context


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=300),
    st.sampled_from([(4, 23, 0xFF), (2, 10, 0x1F), (2, 7, 0xFF), (8, 52, 0x7FF)]),
    st.integers(-20, 300),
)
def test_exponent_buckets_match_twin(values: list[int], layout: tuple[int, int, int], lo: int) -> None:
    width, shift, mask = layout
    dtype = {2: np.uint16, 4: np.uint32, 8: np.uint64}[width]
    base = np.array([v % (1 << (8 * width)) for v in values] + [0, (1 << (8 * width)) - 1], dtype=dtype)
    got, want = np.empty(base.size, np.uint8), np.empty(base.size, np.uint8)
    rans_ctx.exponent_buckets(base, shift, mask, lo, got)
    rans_ctx.exponent_buckets_numpy(base, shift, mask, lo, want)
    assert (got == want).all()
    assert got.max(initial=0) < rans_ctx.K
    assert rans_ctx.max_exponent(base, shift, mask) == rans_ctx.max_exponent_numpy(base, shift, mask)


def test_exponent_context_spans_the_largest_finite_exponents() -> None:
    x = np.array([0.5, 3.0, -1e-3, np.inf, np.nan, 0.0], dtype=np.float32).view(np.uint32)
    spec = ExponentContext.for_base(x, "float32")
    assert spec == ExponentContext(128 - 15, 8)  # 3.0 has exponent field 128; inf/NaN ignored
    assert ExponentContext.from_json(spec.to_json()) == spec
    assert ExponentContext.for_base(x.view(np.int32), "int32") is None
    for bad in ({"from": 1}, {"from": "x", "bits": 8}, {"from": 0, "bits": 40}, None):
        with pytest.raises(FormatError):
            ExponentContext.from_json(bad)


def _scaled_trajectory(n: int = 200_000, versions: int = 4) -> list[np.ndarray]:
    """Adam-like without memory: every weight moves by about the same amount each
    version (so its delta in units of its last place follows its exponent), with a
    fresh random size per version (so the neighbouring delta says little)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(n) * 0.05).astype(np.float32)
    out = [w]
    for _ in range(versions - 1):
        step = (1e-4 * rng.uniform(0.2, 1.0, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
        out.append((out[-1] + step).astype(np.float32))
    return [x.view(np.uint32) for x in out]


def test_exponent_context_frames_are_chosen_and_decode() -> None:
    g, p, _ = _scaled_trajectory(versions=3)
    _context_frames_pay_and_decode(g, p, ExponentContext.for_base(p, "float32"), 0.97)


def test_damaged_exponent_context_is_a_clear_error(tmp_path) -> None:
    """Exponent contexts are no longer written, but repositories hold them (the golden
    fixture's reverse deltas): a damaged one is refused clearly."""
    import shutil
    from pathlib import Path

    src = Path(__file__).parent / "golden" / "features-v1" / "repo"
    shutil.copytree(src, tmp_path / "repo")
    repo = Repository(tmp_path / "repo")
    found = [(v, i) for v in repo.versions() for i, t in enumerate(repo.manifest(v.id).tensors)
             if "exponent_context" in t["data"]]
    assert found
    v, i = found[0]
    m = repo.manifest(v.id)
    m.tensors[i]["data"]["exponent_context"] = {"from": "?", "bits": 8}
    with pytest.raises(FormatError, match="exponent context"):
        repo.reader().decode(v.id, i)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_exponent_context_for_other_float_widths(dtype: torch.dtype) -> None:
    """The exponent field sits elsewhere in 2- and 8-byte floats: deltas coded with
    their base's exponents as context decode bit for bit at every width."""
    from modelhub_torch.pas.dtypes import tensor_bits

    g = torch.Generator().manual_seed(3)
    w = torch.randn(80_000, generator=g, dtype=torch.float64) * 0.05
    older = tensor_bits((w - 1e-3 * torch.rand(80_000, generator=g, dtype=torch.float64)).to(dtype))
    base = tensor_bits(w.to(dtype))
    spec = ExponentContext.for_base(base, {torch.bfloat16: "bfloat16", torch.float16: "float16",
                                           torch.float64: "float64"}[dtype])
    assert spec is not None and spec.exp_bits == {torch.bfloat16: 8, torch.float16: 5, torch.float64: 11}[dtype]
    cfg = CodecConfig(op="sub", lane=8, group_from=8, chunk_elems=30_000).for_width(base.itemsize)
    chunks = list(encode_tensor(older, base, cfg, context=spec))
    out = np.empty_like(older)
    decode_tensor(chunks, out, base, cfg, "test", context=spec)
    assert (out == older).all()
