"""Opt-in lossy archival of float tensors (ModelHub, ICDE 2017, "lossy compression").

The lossless codec keeps every bit; archived versions that are only ever re-read for
analysis or fine-tuning can afford less. Each scheme turns a tensor's values into a
``codes`` array of a plain NumPy dtype (which the store then codes losslessly) plus a
small strict-JSON ``transform`` kept in the manifest; :func:`decode` inverts it.

Schemes and their error bounds (``x`` an input value, ``y`` its decoded value):

``fp16``
    IEEE half precision, round to nearest even. For ``2**-14 <= |x| <= 65504``:
    ``|y - x| <= 2**-11 * |x|``; below that ``|y - x| <= 2**-25`` (half a subnormal
    step). Finite values beyond the half range saturate to ``±65504`` rather than turn
    into infinities; inf and NaN are kept.
``bf16``
    bfloat16 (the top 16 bits of a float32), round to nearest even: same range as
    float32, ``|y - x| <= 2**-8 * |x|`` for normal values. Finite values beyond the
    bfloat16 range saturate to its largest finite value; inf is kept, NaN stays a
    (quiet) NaN.
``fixed:K``
    Fixed point with one exponent per matrix: ``x ≈ code * 2**exp`` with ``K``-bit
    signed codes in ``[-(2**(K-1)-1), 2**(K-1)-1]``, ``exp`` the smallest exponent at
    which the largest magnitude does not clip. Absolute error ``<= 2**exp / 2``, i.e.
    about ``max|x| / 2**K`` for every value: good for matrices of similar-sized
    values, poor for small values next to large ones. Refuses NaN/inf.
``quant:K``
    ``K``-bit codes into a table of at most ``2**K`` values fitted by 1-D k-means
    (Lloyd), so the levels follow the value density (bell-shaped weights get fine
    levels near zero). Each value becomes its nearest table entry: error at most
    half the gap between neighbouring entries (and zero when the tensor has at most
    ``2**K`` distinct values). Refuses NaN/inf.

bfloat16 tensors are passed as ``uint16`` bit patterns (NumPy has no bfloat16). All
arithmetic is deterministic, so re-archiving gives the same codes, and decoding a
decoded tensor again is stable (``encode(decode(encode(x)))`` decodes to the same
values).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelhub_torch.errors import ModelHubError

__all__ = [
    "LOSSY_DTYPES",
    "SCHEME_NAMES",
    "LossyError",
    "LossyScheme",
    "applies",
    "code_dtype",
    "decode",
    "encode",
    "parse_scheme",
]

LOSSY_DTYPES = ("float32", "float64", "float16", "bfloat16")

_VALID_FORMS = "fp16, bf16, fixed:K (2 <= K <= 16), quant:K (1 <= K <= 8)"
_BITS_RANGE = {"fixed": (2, 16), "quant": (1, 8)}
# every scheme name this version decodes (a manifest naming another came from a newer one)
SCHEME_NAMES = ("fp16", "bf16", *_BITS_RANGE)
_SCHEME_RE = re.compile(r"(fixed|quant):([0-9]{1,2})")

# numpy dtype of the codes, by the "code_dtype" name a transform records
_CODE_DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),  # bfloat16 bit patterns
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "uint8": np.dtype(np.uint8),
}

_FP16_MAX = 65504.0
_MAX_EXP = 1100  # fixed-point exponents stay within float64's reach (2**-1089 .. 2**1024)
_BF16_MAX_BITS = 0x7F7F
_BF16_SIGN = 0x8000

# k-means fitting: values sampled for the fit, and Lloyd iterations (each costs O(k log n))
_QUANT_SAMPLE = 1 << 20
_QUANT_ITERS = 25


class LossyError(ModelHubError, ValueError):
    """A lossy scheme that is malformed or cannot apply to the given tensor."""


@dataclass(frozen=True)
class LossyScheme:
    """A parsed scheme: ``name`` is fp16/bf16/fixed/quant, ``bits`` the code width (K)."""

    name: str
    bits: int | None = None

    def __post_init__(self) -> None:
        # validate here too so a hand-built scheme cannot reach encode() malformed
        if self.name in ("fp16", "bf16"):
            ok = self.bits is None
        elif self.name in _BITS_RANGE:
            lo, hi = _BITS_RANGE[self.name]
            ok = type(self.bits) is int and lo <= self.bits <= hi
        else:
            ok = False
        if not ok:
            raise LossyError(
                f"invalid lossy scheme {self.name!r} with bits={self.bits!r}; "
                f"valid forms: {_VALID_FORMS}"
            )

    def __str__(self) -> str:
        return self.name if self.bits is None else f"{self.name}:{self.bits}"


def parse_scheme(text: str) -> LossyScheme:
    """Parse ``fp16``, ``bf16``, ``fixed:K`` or ``quant:K`` (as given on the command line)."""
    if isinstance(text, str):
        if text in ("fp16", "bf16"):
            return LossyScheme(text, None)
        match = _SCHEME_RE.fullmatch(text)
        if match:
            name, bits = match.group(1), int(match.group(2))
            lo, hi = _BITS_RANGE[name]
            if lo <= bits <= hi:
                return LossyScheme(name, bits)
    raise LossyError(f"unknown lossy scheme {text!r}; valid forms: {_VALID_FORMS}")


def applies(dtype: str, scheme: LossyScheme) -> bool:
    """Whether ``scheme`` loses (and saves) anything on a tensor of ``dtype``.

    Non-float tensors are never archived lossily; fp16 on float16 and bf16 on bfloat16
    would only copy the values, so the store keeps those lossless.
    """
    if dtype not in LOSSY_DTYPES:
        return False
    return not (
        (scheme.name == "fp16" and dtype == "float16")
        or (scheme.name == "bf16" and dtype == "bfloat16")
    )


def code_dtype(transform: dict[str, Any]) -> np.dtype:
    """The numpy dtype of the codes a transform describes (bf16 codes are uint16 bits)."""
    name = transform.get("code_dtype") if isinstance(transform, dict) else None
    if name not in _CODE_DTYPES:
        raise LossyError(f"lossy transform has unknown code_dtype {name!r}")
    return _CODE_DTYPES[name]


def encode(values: np.ndarray, dtype: str, scheme: LossyScheme) -> tuple[np.ndarray, dict]:
    """Lossily encode a tensor's flat values: ``(codes, transform)``.

    ``values`` is 1-D, of ``dtype`` (uint16 bit patterns for bfloat16). ``codes`` is a
    contiguous 1-D array for the lossless codec; ``transform`` is strict JSON holding
    what :func:`decode` needs besides the codes.
    """
    _check_values(values, dtype)
    if scheme.name == "fp16":
        codes = _encode_fp16(values, dtype)
        transform: dict[str, Any] = {"code_dtype": _code_dtype_name(scheme)}
    elif scheme.name == "bf16":
        codes = _encode_bf16(values, dtype)
        transform = {"code_dtype": _code_dtype_name(scheme)}
    elif scheme.name == "fixed":
        assert scheme.bits is not None
        x = _finite_f64(values, dtype, scheme)
        codes, exp = _encode_fixed(x, scheme.bits, dtype)
        transform = {"code_dtype": _code_dtype_name(scheme), "exp": exp}
    elif scheme.name == "quant":
        assert scheme.bits is not None
        x = _finite_f64(values, dtype, scheme)
        codes, table = _encode_quant(x, scheme.bits, dtype)
        transform = {"code_dtype": _code_dtype_name(scheme), "table": [float(v) for v in table]}
    else:  # pragma: no cover - LossyScheme validates its name
        raise LossyError(f"unknown lossy scheme {scheme}; valid forms: {_VALID_FORMS}")
    return np.ascontiguousarray(codes), {"scheme": str(scheme), **transform}


def decode(codes: np.ndarray, transform: dict, dtype: str) -> np.ndarray:
    """Invert :func:`encode`: values of ``dtype`` (uint16 bits for bfloat16), one per code."""
    if dtype not in LOSSY_DTYPES:
        raise LossyError(f"lossy schemes apply to {', '.join(LOSSY_DTYPES)}, not {dtype!r}")
    if not isinstance(transform, dict):
        raise LossyError(f"lossy transform must be a JSON object, got {type(transform).__name__}")
    scheme = parse_scheme(transform.get("scheme"))  # type: ignore[arg-type]
    if transform.get("code_dtype") != _code_dtype_name(scheme):
        raise LossyError(
            f"{scheme} transform with code_dtype {transform.get('code_dtype')!r}, "
            f"expected {_code_dtype_name(scheme)!r}"
        )
    expected = code_dtype(transform)
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype != expected:
        raise LossyError(
            f"{scheme} codes must be a 1-D {expected.name} array, "
            f"got {codes.dtype.name} with shape {codes.shape}"
        )
    if scheme.name == "fp16":
        out = _from_f32(codes.astype(np.float32), dtype)
    elif scheme.name == "bf16":
        out = codes.copy() if dtype == "bfloat16" else _from_f32(_bf16_to_f32(codes), dtype)
    elif scheme.name == "fixed":
        exp = transform.get("exp")
        if type(exp) is not int or abs(exp) > _MAX_EXP:
            raise LossyError(f"{scheme} transform needs an integer 'exp', got {exp!r}")
        out = _fixed_values(codes, exp, dtype)
    else:
        table = transform.get("table")
        if not isinstance(table, list) or len(table) > 1 << (scheme.bits or 0):
            raise LossyError(f"{scheme} transform needs a 'table' of at most 2**K floats")
        entries = np.asarray(table, dtype=np.float64).reshape(-1)
        if not np.isfinite(entries).all():
            raise LossyError(f"{scheme} table holds non-finite values")
        if codes.size and int(codes.max()) >= len(table):
            raise LossyError(
                f"{scheme} code {int(codes.max())} is beyond its {len(table)}-entry table"
            )
        out = _from_f64(entries, dtype)[codes] if codes.size else _empty(dtype)
    return np.ascontiguousarray(out)


# --- validation and float conversions -------------------------------------------------


def _code_dtype_name(scheme: LossyScheme) -> str:
    if scheme.name == "fixed":
        return "int8" if (scheme.bits or 0) <= 8 else "int16"
    return {"fp16": "float16", "bf16": "bfloat16", "quant": "uint8"}[scheme.name]


def _storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def _empty(dtype: str) -> np.ndarray:
    return np.empty(0, _storage_dtype(dtype))


def _check_values(values: np.ndarray, dtype: str) -> None:
    if dtype not in LOSSY_DTYPES:
        raise LossyError(f"lossy schemes apply to {', '.join(LOSSY_DTYPES)}, not {dtype!r}")
    want = _storage_dtype(dtype)
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype != want:
        got = (
            f"{values.dtype.name} {values.shape}"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise LossyError(f"{dtype} values must be a 1-D {want.name} array, got {got}")


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns to float32 (exact: bfloat16 is float32's top half)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _bf16_from_f32(x: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bits: round to nearest even, quiet NaNs, saturate finite overflow."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    out = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # the rounding add would carry through a NaN's payload; keep sign, set quiet
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    overflow = ((out & np.uint16(0x7FFF)) == np.uint16(0x7F80)) & np.isfinite(x)
    if overflow.any():
        out[overflow] = (out[overflow] & np.uint16(_BF16_SIGN)) | np.uint16(_BF16_MAX_BITS)
    return out


def _bf16_from_f64(x: np.ndarray) -> np.ndarray:
    """float64 to bfloat16 bits, rounded once (no float32 double rounding).

    Rounds to float32 by round-to-odd first: with 16 spare bits, rounding that result to
    nearest even gives exactly the directly rounded bfloat16.
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        f = x.astype(np.float32)
    inexact = np.isfinite(x) & (f.astype(np.float64) != x)
    if inexact.any():
        fi = f[inexact]
        xi = x[inexact]
        away = np.abs(fi.astype(np.float64)) > np.abs(xi)  # rounded away from zero: step back
        fi[away] = np.nextafter(fi[away], np.float32(0))
        # an underflow to zero keeps the sign of x, then becomes the odd (smallest) step
        fi = np.copysign(fi, xi).astype(np.float32)
        f[inexact] = (fi.view(np.uint32) | np.uint32(1)).view(np.float32)
    return _bf16_from_f32(f)


def _from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values to ``dtype`` storage, rounding to nearest even and saturating."""
    if dtype == "bfloat16":
        return _bf16_from_f32(x)
    if dtype == "float16":
        return _to_f16(x)
    return x.astype(dtype)


def _from_f64(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values to ``dtype`` storage, rounding to nearest even and saturating."""
    if dtype == "bfloat16":
        return _bf16_from_f64(x)
    if dtype == "float16":
        return _to_f16(x)
    if dtype == "float32":
        with np.errstate(over="ignore"):
            out = x.astype(np.float32)
        return _saturate(out, x, float(np.finfo(np.float32).max))
    return x.astype(np.float64)


def _to_f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = x.astype(np.float16)
    return _saturate(out, x, _FP16_MAX)


def _saturate(out: np.ndarray, x: np.ndarray, limit: float) -> np.ndarray:
    """Replace infinities that came from finite inputs by ``±limit``."""
    overflow = np.isinf(out) & np.isfinite(x)
    if overflow.any():
        out[overflow] = np.copysign(limit, x[overflow])
    return out


def _to_f64(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return _bf16_to_f32(values).astype(np.float64)
    return values.astype(np.float64)


def _finite_f64(values: np.ndarray, dtype: str, scheme: LossyScheme) -> np.ndarray:
    x = _to_f64(values, dtype)
    if not np.isfinite(x).all():
        raise LossyError(
            f"lossy scheme {scheme} cannot archive a tensor with non-finite values (NaN/inf); "
            "choose fp16 or bf16, which keep them, or store the tensor losslessly"
        )
    return x


# --- fp16 / bf16 ---------------------------------------------------------------------


def _encode_fp16(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return values.copy()
    if dtype == "bfloat16":
        return _to_f16(_bf16_to_f32(values))  # float32 -> float16 rounds once, correctly
    return _to_f16(values)  # numpy rounds float64 -> float16 directly, not via float32


def _encode_bf16(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return values.copy()
    if dtype == "float64":
        return _bf16_from_f64(values)
    return _bf16_from_f32(values.astype(np.float32))  # float16 -> float32 is exact


# --- fixed point ---------------------------------------------------------------------


def _fixed_values(codes: np.ndarray, exp: int, dtype: str) -> np.ndarray:
    """``codes * 2**exp`` in float64 (saturated), then rounded to ``dtype``."""
    with np.errstate(over="ignore", under="ignore"):
        y = np.ldexp(codes.astype(np.float64), exp)
    f64_max = float(np.finfo(np.float64).max)
    y = np.clip(y, -f64_max, f64_max)
    return _from_f64(y, dtype)


def _fixed_exponent(m: float, bits: int, dtype: str) -> int:
    """Smallest exponent at which the largest magnitude ``m`` takes no clipped code.

    It must also decode to a value whose code does not clip on re-encoding (a 16-bit
    code rounded to a bfloat16 can round up past the largest code), so that archiving
    a decoded tensor again reproduces it.
    """
    if m == 0.0:
        return 0
    limit = (1 << (bits - 1)) - 1
    _, p = math.frexp(m)  # m < 2**p, so the answer exceeds p - bits
    e = p - bits
    while True:
        code = round(math.ldexp(m, -e))  # half-even, exact like np.round
        if code <= limit:
            back = _to_f64(_fixed_values(np.array([code], np.int64), e, dtype), dtype)[0]
            with np.errstate(over="ignore"):
                bound = np.ldexp(np.float64(limit), e)  # inf past float64: no clip possible
            if back <= bound:
                return e
        e += 1


def _encode_fixed(x: np.ndarray, bits: int, dtype: str) -> tuple[np.ndarray, int]:
    m = float(np.abs(x).max()) if x.size else 0.0
    exp = _fixed_exponent(m, bits, dtype)
    limit = (1 << (bits - 1)) - 1
    with np.errstate(under="ignore"):
        scaled = np.ldexp(x, -exp)
    codes = np.clip(np.rint(scaled), -limit, limit)  # clip is a guard: exp avoids clipping
    return codes.astype(np.int8 if bits <= 8 else np.int16), exp


# --- k-means quantization -------------------------------------------------------------


def _encode_quant(x: np.ndarray, bits: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes and the (sorted, ``dtype``-representable) table they index."""
    k = 1 << bits
    if x.size == 0:
        return np.empty(0, np.uint8), np.empty(0, np.float64)
    sample = _quant_sample(x)
    table = _few_distinct(x, np.unique(sample), k)
    if table is None:
        centroids = _lloyd(np.sort(sample), k)
        # table entries are values of dtype, so decoding is an exact lookup
        table = np.unique(_to_f64(_from_f64(centroids, dtype), dtype))
    return _nearest(x, table), table


def _quant_sample(x: np.ndarray) -> np.ndarray:
    """At most ~1M values to fit the table on: all of them, or a fixed-seed sample.

    A seeded random sample rather than a stride, so a stride matching a row length
    cannot pick one column; the extremes are added so the table spans the range.
    """
    if x.size <= _QUANT_SAMPLE:
        return x
    idx = np.random.default_rng(0).integers(0, x.size, _QUANT_SAMPLE)
    return np.concatenate([x[idx], [x.min(), x.max()]])


def _few_distinct(x: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray | None:
    """The distinct values of ``x`` if there are at most ``k`` (quantization is then lossless)."""
    if seen.size > k:
        return None
    if x.size <= _QUANT_SAMPLE:
        return seen  # the sample was all of x
    pos = np.minimum(np.searchsorted(seen, x), seen.size - 1)
    missed = x[seen[pos] != x]
    if missed.size == 0:
        return seen
    more = np.unique(missed)
    if seen.size + more.size > k:
        return None
    return np.union1d(seen, more)


def _lloyd(s: np.ndarray, k: int) -> np.ndarray:
    """1-D k-means (Lloyd) on sorted ``s``: at most ``k`` centroids, deterministic.

    Started where the asymptotically optimal quantizer puts its levels (density ** 1/3,
    Panter-Dite): starting at plain quantiles leaves the tails far too coarse, which
    Lloyd then needs hundreds of iterations to repair at k = 256. On sorted data each
    cluster is a contiguous run, so an iteration costs ``k`` binary searches and
    prefix-sum differences, not a pass over the values.
    """
    n = s.size
    _, p = math.frexp(float(max(-s[0], s[-1])))
    t = np.ldexp(s, -p)  # |t| < 1: spans and sums cannot overflow, tiny data is not tiny
    if t[0] == t[-1]:
        return s[:1].copy()
    counts, edges = np.histogram(t, bins=min(16 * k, 4096), range=(t[0], t[-1]))
    weight = np.concatenate([[0.0], np.cumsum(np.cbrt(counts.astype(np.float64)))])
    centroids = np.unique(np.interp((np.arange(k) + 0.5) * (weight[-1] / k), weight, edges))
    pivot = t[n // 2]  # sums about the median stay accurate for offset data
    prefix = np.concatenate([[0.0], np.cumsum(t - pivot)])
    for _ in range(_QUANT_ITERS):
        cuts = np.searchsorted(t, _midpoints(centroids), side="right")
        lo = np.concatenate([[0], cuts])
        hi = np.concatenate([cuts, [n]])
        count = hi - lo
        keep = count > 0  # an empty cluster gives up its level
        means = (prefix[hi[keep]] - prefix[lo[keep]]) / count[keep] + pivot
        # a mean of values in [t[lo], t[hi-1]] stays inside it despite rounding
        means = np.clip(means, t[lo[keep]], t[hi[keep] - 1])
        if means.size == centroids.size and np.array_equal(means, centroids):
            break
        centroids = np.unique(means)
    return np.ldexp(centroids, p)


def _midpoints(table: np.ndarray) -> np.ndarray:
    # halves first: no overflow at the float64 extremes
    return table[:-1] * 0.5 + table[1:] * 0.5


def _nearest(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest table entry for each value (a tie goes to the lower entry)."""
    if table.size == 1:
        return np.zeros(x.size, np.uint8)
    return np.searchsorted(_midpoints(table), x, side="left").astype(np.uint8)
