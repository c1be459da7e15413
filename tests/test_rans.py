"""rANS kernel vs its exact-division twin, on the distributions that break coders."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhub_torch.kernels import rans

DECODERS = {rans.STATES: rans.rans_decode, rans.WIDE_STATES: rans.rans_decode8}


def _roundtrip(data: np.ndarray) -> None:
    freqs = rans.normalize_freqs(rans.histogram(data))
    assert freqs.sum() == rans.M
    assert ((freqs > 0) == (rans.histogram(data) > 0)).all()
    for states, decode in DECODERS.items():  # rans0 frames (old versions) and rans8
        out = np.empty(rans.HEADER_BYTES + 2 * data.size + 64, np.uint8)
        used = rans.rans_encode(data, freqs, out, states)
        assert out[:used].tobytes() == rans.rans_encode_numpy(data, freqs, states)
        if states == rans.WIDE_STATES:  # the unrolled encoder writes the same bytes
            fast = np.empty_like(out)
            assert rans.rans_encode8(data, freqs, fast) == used
            assert fast[:used].tobytes() == out[:used].tobytes()
        dec = np.empty_like(data)
        assert decode(out[:used], dec) == used
        assert (dec == data).all()
        if data.size <= 2000:
            assert (rans.rans_decode_numpy(out[:used].tobytes(), data.size, states) == data).all()


def test_frames_of_either_width_are_told_apart() -> None:
    """A rans8 frame is not a rans0 frame: decoding one as the other fails or differs
    (so the codec id, not luck, is what keeps old versions readable)."""
    data = np.random.default_rng(3).integers(0, 16, 4000).astype(np.uint8)
    freqs = rans.normalize_freqs(rans.histogram(data))
    out = np.empty(rans.HEADER_BYTES + 2 * data.size + 64, np.uint8)
    used = rans.rans_encode(data, freqs, out, rans.WIDE_STATES)
    dec = np.empty_like(data)
    assert rans.rans_decode(out[:used], dec) != used or not (dec == data).all()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5000),
    k=st.integers(1, 256),
    alpha=st.sampled_from([0.01, 0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_rans_matches_twin_and_roundtrips(n: int, k: int, alpha: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, alpha))
    _roundtrip(rng.choice(k, size=n, p=p).astype(np.uint8))


def test_dominant_symbol_long_stream_regression() -> None:
    """A symbol with frequency ~3800/4096 drives states near their top: the reciprocal
    division of the encoder must stay exact there (it did not with 2^32 states)."""
    rng = np.random.default_rng(7)
    p = np.r_[0.93, np.full(211, 0.07 / 211)]
    _roundtrip(rng.choice(212, size=300_000, p=p).astype(np.uint8))


@pytest.mark.parametrize("states", sorted(DECODERS))
def test_truncated_frame_is_rejected(states: int) -> None:
    decode = DECODERS[states]
    data = np.random.default_rng(1).integers(0, 4, 5000).astype(np.uint8)
    freqs = rans.normalize_freqs(rans.histogram(data))
    out = np.empty(rans.HEADER_BYTES + 2 * data.size + 64, np.uint8)
    used = rans.rans_encode(data, freqs, out, states)
    dec = np.empty_like(data)
    assert decode(out[: used - 40], dec) == -1
    assert decode(out[: rans.HEADER_BYTES + 4 * states - 1], dec) == -1  # states cut off
    bad = out[:used].copy()
    bad[0] ^= 0xFF  # frequency table no longer sums to 4096
    assert decode(bad, dec) == -1


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3000), k=st.integers(1, 256), seed=st.integers(0, 2**32 - 1))
def test_histogram_matches_bincount(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, k, n).astype(np.uint8)
    data[: n // 3] = data[0] if n else 0  # runs of one byte (the skewed planes' case)
    assert (rans.histogram(data) == np.bincount(data, minlength=256)).all()
