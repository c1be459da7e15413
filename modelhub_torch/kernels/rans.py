"""Order-0 rANS byte coder with static frequencies per frame.

zstd codes literals with Huffman, which wastes a fraction of a bit per symbol on
skewed byte distributions such as the exponent plane of trained weights (0.364
B/elem against an order-0 entropy of 0.327 on MiniLM); rANS codes close to the
entropy. Design after ryg's rans_word: 31-bit states renormalised 16 bits at a time
(at most one read per symbol), probabilities in 12 bits, and four interleaved states
(symbol i uses state i % 4) so the decoder runs four independent dependency chains.
The encoder divides by multiplying with per-symbol reciprocals.

Frame: ``uint16[256]`` frequencies (little-endian, summing to 4096), the final states
(uint32, big-endian words: state 0 first), then the 16-bit word stream. ``rans0``
frames interleave four states; ``rans8`` frames eight (symbol i uses state i % 8),
which decode ~20% faster (two more independent chains hide the table-load and
multiply latencies); new frames are written as ``rans8``, both decode.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SCALE_BITS = 12
M = 1 << SCALE_BITS
# States stay in [2^15, 2^31): the encoder's reciprocal division (exact below 2^31)
# then never errs, and one 16-bit renormalisation step always suffices.
RANS_L = 1 << 15
HEADER_BYTES = 512
STATES = 4  # rans0 frames
WIDE_STATES = 8  # rans8 frames


@njit(nogil=True, cache=True)
def histogram(data):
    """Byte counts of ``data`` (np.bincount converts to intp first and runs 4x slower).
    Four interleaved tables: on skewed planes consecutive bytes are often equal, and one
    table would make every increment wait for the previous one to the same counter."""
    n = data.shape[0]
    sub = np.zeros((4, 256), np.int64)
    i = 0
    while i + 4 <= n:
        sub[0, data[i]] += 1
        sub[1, data[i + 1]] += 1
        sub[2, data[i + 2]] += 1
        sub[3, data[i + 3]] += 1
        i += 4
    while i < n:
        sub[0, data[i]] += 1
        i += 1
    counts = np.zeros(256, np.int64)
    for s in range(256):
        counts[s] = sub[0, s] + sub[1, s] + sub[2, s] + sub[3, s]
    return counts


@njit(nogil=True, cache=True)
def normalize_freqs(counts):
    """Scale byte counts to sum to M, keeping every present symbol >= 1."""
    total = 0
    for c in counts:
        total += c
    freqs = np.zeros(256, np.int64)
    if total == 0:
        return freqs
    assigned = 0
    best = 0
    for s in range(256):
        if counts[s] > 0:
            f = (counts[s] * M) // total
            if f < 1:
                f = 1
            freqs[s] = f
            assigned += f
            if counts[s] > counts[best]:
                best = s
    diff = M - assigned
    while diff != 0:
        if diff > 0:
            freqs[best] += diff
            diff = 0
        else:
            s_max = 0
            for s in range(256):
                if freqs[s] > freqs[s_max]:
                    s_max = s
            take = min(-diff, freqs[s_max] - 1)
            freqs[s_max] -= take
            diff += take
    return freqs


@njit(nogil=True, cache=True)
def encoder_tables(freqs, x_max, rcp, rshift, bias, cmpl):
    """Fill one table's per-symbol encoder constants (ryg's RansEncSymbolInit): the
    renormalisation bound and the reciprocal that replaces division by the frequency."""
    start = 0
    for s in range(256):
        f = freqs[s]
        if f > 0:
            x_max[s] = np.uint64(((RANS_L >> SCALE_BITS) << 16) * f)
            cmpl[s] = np.uint64(M - f)
            if f < 2:
                rcp[s] = np.uint64(0xFFFFFFFF)
                rshift[s] = np.uint64(0)
                bias[s] = np.uint64(start + M - 1)
            else:
                shift = 0
                while f > (1 << shift):
                    shift += 1
                rcp[s] = np.uint64(((1 << (shift + 31)) + f - 1) // f)
                rshift[s] = np.uint64(shift - 1)
                bias[s] = np.uint64(start)
        start += f


@njit(nogil=True, cache=True)
def decoder_tables(freqs, sym, freq_of, bias_of):
    """Fill one table's slot -> (symbol, frequency, offset) lookups."""
    start = 0
    for s in range(256):
        f = freqs[s]
        for k in range(start, start + f):
            sym[k] = s
            freq_of[k] = f
            bias_of[k] = k - start
        start += f


@njit(nogil=True, cache=True)
def read_states(buf, o, x):
    """Read ``len(x)`` final encoder states (big-endian uint32) at ``buf[o:]`` into
    ``x``; returns the offset after them."""
    for j in range(x.shape[0]):
        v = np.uint32(0)
        for _ in range(4):
            v = (v << np.uint32(8)) | np.uint32(buf[o])
            o += 1
        x[j] = v
    return o


@njit(nogil=True, cache=True)
def _encode_symbol(xs, s, x_max, rcp, rshift, bias, cmpl, words, pos):
    """One encoder step of state ``xs`` for symbol ``s`` (branchless renormalisation:
    the word is always stored, ``pos`` advances only when it was due)."""
    c = xs >= x_max[s]
    words[pos] = np.uint16(xs & np.uint64(0xFFFF))
    xs = (xs >> np.uint64(16)) if c else xs
    q = ((xs * rcp[s]) >> np.uint64(32)) >> rshift[s]
    return xs + bias[s] + q * cmpl[s], pos + c


@njit(nogil=True, cache=True)
def _write_frame(freqs, x, words, pos, out):
    """Header (frequencies), then the final states and the words; returns bytes used."""
    for s in range(256):
        out[2 * s] = freqs[s] & 0xFF
        out[2 * s + 1] = (freqs[s] >> 8) & 0xFF
    return write_stream(x, words, pos, out, HEADER_BYTES)


@njit(nogil=True, cache=True)
def write_stream(x, words, pos, out, o):
    """The final states (big-endian uint32) and the ``pos`` words in decoding order,
    from ``out[o]``; returns the offset after them."""
    for j in range(x.shape[0]):
        for k in range(3, -1, -1):
            out[o] = np.uint8((x[j] >> np.uint64(8 * k)) & np.uint64(0xFF))
            o += 1
    for k in range(pos - 1, -1, -1):
        w = words[k]
        out[o] = np.uint8(w & 0xFF)
        out[o + 1] = np.uint8(w >> 8)
        o += 2
    return o


@njit(nogil=True, cache=True)
def _new_encoder_tables(freqs):
    """Per-symbol encoder constants of one frequency table (reciprocal division, ryg's
    RansEncSymbolInit): ``(x_max, rcp, rshift, bias, cmpl)``."""
    x_max = np.zeros(256, np.uint64)
    rcp = np.zeros(256, np.uint64)
    rshift = np.zeros(256, np.uint64)
    bias = np.zeros(256, np.uint64)
    cmpl = np.zeros(256, np.uint64)
    encoder_tables(freqs, x_max, rcp, rshift, bias, cmpl)
    return x_max, rcp, rshift, bias, cmpl


@njit(nogil=True, cache=True)
def rans_encode(data, freqs, out, states=STATES):
    """Encode ``data`` (uint8) with ``freqs`` into ``out`` with ``states`` (4 or 8)
    interleaved states; returns bytes used. ``out`` must hold ``HEADER_BYTES + 2 *
    len(data) + 64`` bytes."""
    n = data.shape[0]
    x_max, rcp, rshift, bias, cmpl = _new_encoder_tables(freqs)
    words = np.empty(n + 16, np.uint16)
    pos = 0
    x = np.full(states, RANS_L, np.uint64)
    last = states - 1
    for i in range(n - 1, -1, -1):
        j = i & last
        x[j], pos = _encode_symbol(x[j], data[i], x_max, rcp, rshift, bias, cmpl, words, pos)
    return _write_frame(freqs, x, words, pos, out)


@njit(nogil=True, cache=True)
def rans_encode8(data, freqs, out):
    """:func:`rans_encode` with eight states, unrolled: the states live in registers
    and eight independent chains overlap (about 2x faster; the same bytes)."""
    n = data.shape[0]
    x_max, rcp, rshift, bias, cmpl = _new_encoder_tables(freqs)
    words = np.empty(n + 16, np.uint16)
    pos = 0
    x = np.full(WIDE_STATES, RANS_L, np.uint64)
    i = n - 1
    while i >= 0 and (i & 7) != 7:  # the last n % 8 symbols, state by state
        x[i & 7], pos = _encode_symbol(x[i & 7], data[i], x_max, rcp, rshift, bias, cmpl, words, pos)
        i -= 1
    x0, x1, x2, x3, x4, x5, x6, x7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
    while i >= 7:  # symbols i..i-7 use states 7..0, in the generic loop's order
        x7, pos = _encode_symbol(x7, data[i], x_max, rcp, rshift, bias, cmpl, words, pos)
        x6, pos = _encode_symbol(x6, data[i - 1], x_max, rcp, rshift, bias, cmpl, words, pos)
        x5, pos = _encode_symbol(x5, data[i - 2], x_max, rcp, rshift, bias, cmpl, words, pos)
        x4, pos = _encode_symbol(x4, data[i - 3], x_max, rcp, rshift, bias, cmpl, words, pos)
        x3, pos = _encode_symbol(x3, data[i - 4], x_max, rcp, rshift, bias, cmpl, words, pos)
        x2, pos = _encode_symbol(x2, data[i - 5], x_max, rcp, rshift, bias, cmpl, words, pos)
        x1, pos = _encode_symbol(x1, data[i - 6], x_max, rcp, rshift, bias, cmpl, words, pos)
        x0, pos = _encode_symbol(x0, data[i - 7], x_max, rcp, rshift, bias, cmpl, words, pos)
        i -= 8
    x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7] = x0, x1, x2, x3, x4, x5, x6, x7
    return _write_frame(freqs, x, words, pos, out)


@njit(nogil=True, cache=True, inline="always")
def renorm(xs, stream, o):
    """Branchless renormalisation of one decoder state: shift in the 16-bit word at
    ``stream[o]`` when the state fell below ``RANS_L``; returns ``(state, offset)``.
    The caller guarantees ``o + 2 <= len(stream)``."""
    c = xs < np.uint32(RANS_L)
    w = np.uint32(stream[o]) | (np.uint32(stream[o + 1]) << np.uint32(8))
    return ((xs << np.uint32(16)) | w) if c else xs, o + 2 * c


@njit(nogil=True, cache=True)
def decoder_setup(frame, x):
    """Parse a frame's header: its decoder tables and final states (into ``x``, one per
    interleaved state). Returns ``(offset of the stream or -1 when malformed, sym,
    freq_of, bias_of)``."""
    sym = np.empty(M, np.uint8)
    freq_of = np.empty(M, np.uint32)
    bias_of = np.empty(M, np.uint32)
    if frame.shape[0] < HEADER_BYTES + 4 * x.shape[0]:
        return -1, sym, freq_of, bias_of
    freqs = np.zeros(256, np.uint32)
    total = 0
    for s in range(256):
        freqs[s] = np.uint32(frame[2 * s]) | (np.uint32(frame[2 * s + 1]) << np.uint32(8))
        total += freqs[s]
    if total != M:
        return -1, sym, freq_of, bias_of
    decoder_tables(freqs, sym, freq_of, bias_of)
    return read_states(frame, HEADER_BYTES, x), sym, freq_of, bias_of


@njit(nogil=True, cache=True)
def decode_tail(frame, o, x, i, out, sym, freq_of, bias_of):
    """Symbols ``i..`` one at a time with bounds-checked reads (the end of a frame);
    returns bytes read, or -1 when the frame runs out."""
    end = frame.shape[0]
    last = x.shape[0] - 1
    while i < out.shape[0]:
        j = i & last
        xs = x[j]
        slot = xs & np.uint32(M - 1)
        out[i] = sym[slot]
        xs = freq_of[slot] * (xs >> np.uint32(SCALE_BITS)) + bias_of[slot]
        if xs < np.uint32(RANS_L):
            if o + 2 > end:
                return -1
            xs, o = renorm(xs, frame, o)
        x[j] = xs
        i += 1
    return o


@njit(nogil=True, cache=True)
def rans_decode(frame, out):
    """Decode ``len(out)`` symbols from a four-state (``rans0``) frame; returns bytes
    read, or -1 when the frame is malformed (truncated or bad frequency table)."""
    n = out.shape[0]
    x = np.zeros(STATES, np.uint32)
    o, sym, freq_of, bias_of = decoder_setup(frame, x)
    if o < 0:
        return -1
    end = frame.shape[0]
    # four scalar states (registers, not an array): each step is independent of the
    # other three, so their latencies overlap
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    mask = np.uint32(M - 1)
    sb = np.uint32(SCALE_BITS)
    i = 0
    while i + 4 <= n and o + 8 <= end:  # the reads stay inside the frame
        slot = x0 & mask
        out[i] = sym[slot]
        x0, o = renorm(freq_of[slot] * (x0 >> sb) + bias_of[slot], frame, o)
        slot = x1 & mask
        out[i + 1] = sym[slot]
        x1, o = renorm(freq_of[slot] * (x1 >> sb) + bias_of[slot], frame, o)
        slot = x2 & mask
        out[i + 2] = sym[slot]
        x2, o = renorm(freq_of[slot] * (x2 >> sb) + bias_of[slot], frame, o)
        slot = x3 & mask
        out[i + 3] = sym[slot]
        x3, o = renorm(freq_of[slot] * (x3 >> sb) + bias_of[slot], frame, o)
        i += 4
    x[0], x[1], x[2], x[3] = x0, x1, x2, x3
    return decode_tail(frame, o, x, i, out, sym, freq_of, bias_of)


@njit(nogil=True, cache=True)
def rans_decode8(frame, out):
    """Decode ``len(out)`` symbols from an eight-state (``rans8``) frame; returns bytes
    read, or -1 when the frame is malformed."""
    n = out.shape[0]
    x = np.zeros(WIDE_STATES, np.uint32)
    o, sym, freq_of, bias_of = decoder_setup(frame, x)
    if o < 0:
        return -1
    end = frame.shape[0]
    x0, x1, x2, x3, x4, x5, x6, x7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
    mask = np.uint32(M - 1)
    sb = np.uint32(SCALE_BITS)
    i = 0
    while i + 8 <= n and o + 16 <= end:
        # eight table lookups and updates first (independent), then the renormalising
        # reads in stream order; every read stays inside the frame (o + 16 <= end)
        s0, s1, s2, s3 = x0 & mask, x1 & mask, x2 & mask, x3 & mask
        s4, s5, s6, s7 = x4 & mask, x5 & mask, x6 & mask, x7 & mask
        out[i] = sym[s0]
        out[i + 1] = sym[s1]
        out[i + 2] = sym[s2]
        out[i + 3] = sym[s3]
        out[i + 4] = sym[s4]
        out[i + 5] = sym[s5]
        out[i + 6] = sym[s6]
        out[i + 7] = sym[s7]
        x0 = freq_of[s0] * (x0 >> sb) + bias_of[s0]
        x1 = freq_of[s1] * (x1 >> sb) + bias_of[s1]
        x2 = freq_of[s2] * (x2 >> sb) + bias_of[s2]
        x3 = freq_of[s3] * (x3 >> sb) + bias_of[s3]
        x4 = freq_of[s4] * (x4 >> sb) + bias_of[s4]
        x5 = freq_of[s5] * (x5 >> sb) + bias_of[s5]
        x6 = freq_of[s6] * (x6 >> sb) + bias_of[s6]
        x7 = freq_of[s7] * (x7 >> sb) + bias_of[s7]
        x0, o = renorm(x0, frame, o)
        x1, o = renorm(x1, frame, o)
        x2, o = renorm(x2, frame, o)
        x3, o = renorm(x3, frame, o)
        x4, o = renorm(x4, frame, o)
        x5, o = renorm(x5, frame, o)
        x6, o = renorm(x6, frame, o)
        x7, o = renorm(x7, frame, o)
        i += 8
    x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7] = x0, x1, x2, x3, x4, x5, x6, x7
    return decode_tail(frame, o, x, i, out, sym, freq_of, bias_of)


def rans_encode_numpy(data: np.ndarray, freqs: np.ndarray, states: int = STATES) -> bytes:
    """Pure-Python twin of :func:`rans_encode` (exact division; the test oracle)."""
    freqs = [int(f) for f in freqs]
    cum = [0]
    for f in freqs:
        cum.append(cum[-1] + f)
    header = b"".join(f.to_bytes(2, "little") for f in freqs)
    words: list[int] = []
    x = [RANS_L] * states
    symbols = data.tolist()
    for i in range(len(symbols) - 1, -1, -1):
        s = symbols[i]
        f = freqs[s]
        j = i % states
        if x[j] >= ((RANS_L >> SCALE_BITS) << 16) * f:
            words.append(x[j] & 0xFFFF)
            x[j] >>= 16
        x[j] = ((x[j] // f) << SCALE_BITS) + (x[j] % f) + cum[s]
    states = b"".join(v.to_bytes(4, "big") for v in x)
    stream = b"".join(w.to_bytes(2, "little") for w in reversed(words))
    return header + states + stream


def rans_decode_numpy(frame: bytes, n: int, states: int = STATES) -> np.ndarray:
    """Pure-Python twin of :func:`rans_decode` (``states=8``: of :func:`rans_decode8`)."""
    freqs = [int.from_bytes(frame[2 * s : 2 * s + 2], "little") for s in range(256)]
    cum = [0]
    for f in freqs:
        cum.append(cum[-1] + f)
    slot_sym = np.repeat(np.arange(256, dtype=np.uint8), freqs)
    o = HEADER_BYTES
    x = [int.from_bytes(frame[o + 4 * j : o + 4 * j + 4], "big") for j in range(states)]
    o += 4 * states
    out = np.empty(n, np.uint8)
    for i in range(n):
        j = i % states
        slot = x[j] & (M - 1)
        s = int(slot_sym[slot])
        out[i] = s
        x[j] = freqs[s] * (x[j] >> SCALE_BITS) + slot - cum[s]
        if x[j] < RANS_L:
            x[j] = (x[j] << 16) | int.from_bytes(frame[o : o + 2], "little")
            o += 2
    return out
