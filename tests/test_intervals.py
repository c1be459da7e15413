"""Interval bounds for progressive inference: weight bounds, soundness of the interval
network against the real float32 forward pass, exactness of top-k decisions, and a
deliberately wrong bound that these checks must catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modelhub_torch.errors import ModelHubError
from modelhub_torch.progressive import intervals, topk, weights
from modelhub_torch.progressive.decision import decide
from modelhub_torch.progressive.intervals import IntervalNet, UnsupportedLayerError
from modelhub_torch.progressive.topk import decide_topk
from modelhub_torch.progressive.weights import known_mask, weight_bounds

LAYOUTS = ("ieee", "exp-first")


def f32(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


# --------------------------------------------------------------------------- masks


def test_known_mask_float32() -> None:
    assert [known_mask("float32", p, "ieee") for p in range(5)] == [
        0, 0xFF000000, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFF
    ]
    assert [known_mask("float32", p, "exp-first") for p in range(5)] == [
        0, 0x7F800000, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFF
    ]


def test_known_mask_half_types() -> None:
    assert known_mask("float16", 1, "ieee") == 0xFF00
    # [5 exponent][sign][2 mantissa] -> exponent 0x7C00, sign 0x8000, mantissa 0x0300
    assert known_mask("float16", 1, "exp-first") == 0xFF00
    assert known_mask("bfloat16", 1, "exp-first") == 0x7F80  # the exponent only
    assert known_mask("bfloat16", 1, "ieee") == 0xFF00
    for dt in ("float16", "bfloat16"):
        for layout in LAYOUTS:
            assert known_mask(dt, 2, layout) == 0xFFFF
    with pytest.raises(ValueError):
        known_mask("float16", 3, "ieee")
    with pytest.raises(ValueError):
        known_mask("float32", 1, "rotated")
    with pytest.raises(ValueError):
        known_mask("float64", 1, "ieee")


# --------------------------------------------------------------------------- weight bounds


def wb(bits: list[int], mask: int, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    container = np.uint32 if dtype == "float32" else np.uint16
    return weight_bounds(np.array(bits, dtype=container), mask, dtype)


def test_weight_bounds_hand_made() -> None:
    one_half = 0x3FC00000  # 1.5
    lo, hi = wb([one_half, one_half | 0x80000000], 0xFF000000)
    assert lo[0] == 0.5 and hi[0] == f32(0x3FFFFFFF)  # [0.5, 2 - 2^-23]
    assert lo[1] == -f32(0x3FFFFFFF) and hi[1] == -0.5
    # exp-first, one plane: exponent known, sign not
    lo, hi = wb([one_half, one_half | 0x80000000], 0x7F800000)
    assert list(lo) == [-f32(0x3FFFFFFF)] * 2 and list(hi) == [f32(0x3FFFFFFF)] * 2
    # subnormals and zero keep the bit order = magnitude order
    lo, hi = wb([0x00000123, 0x80000123, 0x00000000], 0xFFFFFF00)
    assert lo[0] == 0x100 * 2.0**-149 and hi[0] == 0x1FF * 2.0**-149
    assert lo[1] == -0x1FF * 2.0**-149 and hi[1] == -0x100 * 2.0**-149
    assert lo[2] == 0.0 and hi[2] == 0xFF * 2.0**-149
    lo, hi = wb([0x00000000], 0xFF000000)
    assert lo[0] == 0.0 and hi[0] == f32(0x00FFFFFF)
    # exactly known
    lo, hi = wb([one_half, 0xC0490FDB], 0xFFFFFFFF)
    assert list(lo) == list(hi) == [1.5, f32(0xC0490FDB)]


def test_weight_bounds_infinite_when_inf_or_nan_reachable() -> None:
    # exponent 1111111? (top 7 known ones): inf/NaN reachable -> unbounded
    lo, hi = wb([0x7F000000, 0xFF7FFFFF, 0x7F800000, 0x7FC00000, 0x7F7FFFFF], 0xFF000000)
    assert np.all(lo[:4] == -np.inf) and np.all(hi[:4] == np.inf)
    assert lo[4] == -np.inf and hi[4] == np.inf
    # exactly known inf and NaN, and the largest finite float
    lo, hi = wb([0x7F800000, 0xFFC00001, 0x7F7FFFFF], 0xFFFFFFFF)
    assert list(lo[:2]) == [-np.inf] * 2 and list(hi[:2]) == [np.inf] * 2
    assert lo[2] == hi[2] == f32(0x7F7FFFFF)
    # exp-first plane 1 of a finite weight: exponent known and not all ones
    lo, hi = wb([0x7F000000], 0x7F800000)
    assert np.isfinite(lo[0]) and np.isfinite(hi[0])


def test_weight_bounds_half_types() -> None:
    lo, hi = wb([0x3E00, 0xBE00], 0xFF00, "float16")  # 1.5, -1.5
    assert lo[0] == 1.5 and hi[0] == 1.5 + 255 / 1024
    assert lo[1] == -(1.5 + 255 / 1024) and hi[1] == -1.5
    lo, hi = wb([0x3FC0], 0xFF00, "bfloat16")  # 1.5
    assert lo[0] == 0.5 and hi[0] == 1.9921875
    lo, hi = wb([0x7C00, 0x7BFF], 0xFF00, "float16")  # inf; 65504 (exponent fully known)
    assert lo[0] == -np.inf and hi[0] == np.inf
    assert lo[1] == 57344.0 and hi[1] == 65504.0
    lo, hi = wb([0x7F00, 0x7F7F], 0xFF00, "bfloat16")  # last exponent bit unknown: inf reachable
    assert np.all(lo == -np.inf) and np.all(hi == np.inf)
    with pytest.raises(TypeError):
        weight_bounds(np.array([1.0], dtype=np.float32), 0xFF00, "float16")


@np.errstate(invalid="ignore")  # NaN patterns
def _check_bounds_property(bits: np.ndarray, completions: np.ndarray) -> None:
    vals = bits.view(np.float32).astype(np.float64)
    for layout in LAYOUTS:
        for planes in (1, 2, 3, 4):
            mask = known_mask("float32", planes, layout)
            lo, hi = weight_bounds(bits, mask, "float32")
            assert lo.dtype == hi.dtype == np.float64
            m = np.uint32(mask)
            comp = (bits & m) | (completions & ~m)
            cval = comp.view(np.float32).astype(np.float64)
            reach = (bits & m) | (np.uint32(0x7F800000) & ~m)
            nonfinite_reachable = (reach & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
            fin = np.isfinite(lo)
            assert np.array_equal(fin, np.isfinite(hi))
            assert np.array_equal(~fin, nonfinite_reachable)  # infinite exactly when reachable
            assert np.all(lo[fin] <= vals[fin]) and np.all(vals[fin] <= hi[fin])
            assert np.all(lo[fin] <= cval[fin]) and np.all(cval[fin] <= hi[fin])
            # tight: both bounds are themselves completions
            for b in (lo[fin], hi[fin]):
                assert np.all(b.astype(np.float32).astype(np.float64) == b)
                bb = b.astype(np.float32).view(np.uint32)
                agree = (bb & m) == (bits[fin] & m)
                # -0.0 vs +0.0: a zero bound may carry either sign when the sign is unknown
                assert np.all(agree | ((b == 0) & ((m & np.uint32(0x80000000)) == 0)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64),
    st.integers(0, 2**32 - 1),
)
def test_weight_bounds_property_floats(values: list[float], seed: int) -> None:
    bits = np.array(values, dtype=np.float32).view(np.uint32)
    rng = np.random.default_rng(seed)
    _check_bounds_property(bits, rng.integers(0, 2**32, size=bits.shape, dtype=np.uint32))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_weight_bounds_property_all_patterns(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=512, dtype=np.uint32)
    bits[:8] = [0, 0x80000000, 1, 0x80000001, 0x00800000, 0x7F7FFFFF, 0x7F800000, 0xFFC00000]
    _check_bounds_property(bits, rng.integers(0, 2**32, size=bits.shape, dtype=np.uint32))


# --------------------------------------------------------------------------- models


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10),
    )


class ResBN(nn.Module):
    """Residual CNN: BatchNorm (eval), GELU, dilated grouped conv, avg pools, cat, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 4, 1, stride=2)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(12 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.bn1(self.stem(x)))
        h = h + self.bn2(self.conv2(h))
        h = torch.relu(h)
        h = torch.cat([self.pool(h), self.side(h)], dim=1)
        h = self.gap(h)
        return self.head(self.drop(h.view(h.size(0), -1)))


def res_bn() -> nn.Module:
    m = ResBN()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.copy_(torch.randn(8, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(8, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(8, generator=g) * 0.1)
    return m


class Zoo(nn.Module):
    """Every other supported activation and the 1-d layers, on (N, 2, 16) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.leaky = nn.LeakyReLU(0.1)
        self.mp = nn.MaxPool1d(2, ceil_mode=True)
        self.ap = nn.AvgPool1d(3, stride=1, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm1d(6)
        self.l1 = nn.Linear(24, 16)
        self.elu = nn.ELU(0.7)
        self.l2 = nn.Linear(16, 16)
        self.sig = nn.Sigmoid()
        self.l3 = nn.Linear(16, 12)
        self.ident = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ap(self.mp(self.leaky(self.c1(x))))
        h = torch.flatten(self.bn(h), 1)
        h = self.elu(self.l1(h))
        h = F.silu(h) + self.sig(h)
        h = torch.tanh(self.l2(h)) + 0.1
        h = F.gelu(h, approximate="tanh") + F.leaky_relu(h, 0.2) + nn.functional.elu(h)
        return self.l3(self.ident(h.sigmoid() + h.tanh()))


class Functional(nn.Module):
    """The functional spellings: F.relu, Tensor.relu, F.max/avg/adaptive pools, reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3)
        self.c2 = nn.Conv2d(6, 8, 2, stride=1, padding=1)
        self.fc = nn.Linear(8 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.c1(x)), 2, stride=1)  # 6 x 5 x 5
        h = F.avg_pool2d(self.c2(h).relu(), 2, stride=1)  # 8 x 5 x 5
        h = F.adaptive_avg_pool2d(h, (2, 2))
        h = F.dropout(h, 0.5, training=self.training)
        return self.fc(h.reshape(h.shape[0], -1))


MODELS = {
    "mlp": (mlp, (64,)),
    "cnn": (small_cnn, (1, 8, 8)),
    "resbn": (res_bn, (1, 8, 8)),
    "zoo": (Zoo, (2, 16)),
    "functional": (Functional, (1, 8, 8)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    factory, shape = MODELS[name]
    model = factory()
    if name == "zoo":  # give BatchNorm1d non-trivial statistics
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.3, 2.0)
    return model.eval(), shape


def inputs(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    half = n // 2
    digits = torch.randint(0, 17, (half, *shape), generator=g).float()  # digits-like 0..16
    normal = torch.randn(n - half, *shape, generator=g) * 3
    return torch.cat([digits, normal])


def plane_weights(model: nn.Module, names: list[str], planes: int, layout: str) -> dict:
    state = model.state_dict()
    out = {}
    for name in names:
        bits = state[name].detach().contiguous().numpy().view(np.uint32)
        lo, hi = weight_bounds(bits, known_mask("float32", planes, layout), "float32")
        out[name] = (torch.from_numpy(lo), torch.from_numpy(hi))
    return out


def random_sub_weights(model: nn.Module, names: list[str], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    out = {}
    for i, name in enumerate(names):
        w = state[name].double()
        rel = (1e-1, 1e-3, 1e-6)[i % 3]
        scale = w.abs() * rel + 1e-9
        lo = w - torch.rand(w.shape, generator=g, dtype=torch.float64) * scale
        hi = w + torch.rand(w.shape, generator=g, dtype=torch.float64) * scale
        if "running_var" in name:  # keep the variance interval positive
            lo = torch.maximum(lo, w * 0.5)
        out[name] = (lo, hi)
    return out


def near_ties(model: nn.Module, shape: tuple[int, ...], n: int, k: int, seed: int) -> torch.Tensor:
    """Inputs on both sides of a top-k change, found by bisecting (in float64, evaluated
    in float32) between random inputs with different ordered top-k: there two logits
    differ by about one float32 rounding."""
    x = inputs(shape, 8 * n, seed)
    a, b = x[: 4 * n], x[4 * n :]
    with torch.no_grad():
        diff = (model(a).topk(k).indices != model(b).topk(k).indices).any(1)
        a, b = a[diff][:n].double(), b[diff][:n].double()
        if len(a) == 0:
            return x[:0]
        view = (-1,) + (1,) * len(shape)
        t0 = torch.zeros(len(a), dtype=torch.float64).view(view)
        t1 = torch.ones_like(t0)
        top0 = model(a.float()).topk(k).indices
        for _ in range(60):
            tm = (t0 + t1) / 2
            same = (model((a + tm * (b - a)).float()).topk(k).indices == top0).all(1).view(view)
            t0 = torch.where(same, tm, t0)
            t1 = torch.where(same, t1, tm)
    return torch.cat([(a + t0 * (b - a)).float(), (a + t1 * (b - a)).float()])


# --------------------------------------------------------------------------- soundness


def assert_inside(lo: torch.Tensor, hi: torch.Tensor, ref: torch.Tensor) -> None:
    assert lo.dtype == hi.dtype == torch.float64
    r = ref.double()
    outside = ~((lo <= r) & (r <= hi))
    assert not outside.any(), f"{int(outside.sum())} outputs outside their bounds"


@pytest.mark.parametrize("name", list(MODELS))
def test_bounds_contain_float32_forward(name: str) -> None:
    model, shape = build(name)
    net = IntervalNet(model)
    assert set(net.param_names) <= set(model.state_dict())
    x = torch.cat([inputs(shape, 2000, 1), near_ties(model, shape, 100, 1, 2)])
    with torch.no_grad():
        ref = model(x)
    for layout in LAYOUTS:
        for planes in (1, 2, 3):
            lo, hi = net.bounds(x, plane_weights(model, net.param_names, planes, layout))
            assert lo.shape == hi.shape == ref.shape
            assert_inside(lo, hi, ref)
    for seed in range(2):
        lo, hi = net.bounds(x, random_sub_weights(model, net.param_names, seed))
        assert_inside(lo, hi, ref)
    lo, hi = net.bounds(x, plane_weights(model, net.param_names, 4, "ieee"))
    assert_inside(lo, hi, ref)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    # tight at exact weights: only rounding is left (γ_n·Σ|w||x| per layer, compounded)
    rel = (hi - lo).amax(1) / ref.double().abs().amax(1)
    assert float(rel.median()) < 1e-3 and float(rel.max()) < 5e-3


def test_exact_weights_tight_for_mlp() -> None:
    model, shape = build("mlp")
    net = IntervalNet(model)
    x = inputs(shape, 2000, 3)
    lo, hi = net.bounds(x, plane_weights(model, net.param_names, 4, "exp-first"))
    with torch.no_grad():
        scale = model(x).double().abs().amax(1, keepdim=True)
    assert float(((hi - lo) / scale).median()) < 2.5e-4


def test_bounds_batch_rows_are_independent() -> None:
    model, shape = build("cnn")
    net = IntervalNet(model)
    x = inputs(shape, 64, 4)
    w = plane_weights(model, net.param_names, 2, "ieee")
    lo, hi = net.bounds(x, w)
    lo1, hi1 = net.bounds(x[5:6], w)
    # float64 kernels may block a batch differently: equal up to float64 noise
    assert torch.allclose(lo[5:6], lo1, rtol=1e-12, atol=1e-12)
    assert torch.allclose(hi[5:6], hi1, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- decisions


def exactness_failures(net: IntervalNet, model: nn.Module, x: torch.Tensor, weights: dict, k: int) -> tuple[int, int, int]:
    """(decided, decided-but-wrong, outputs outside bounds) against the float32 forward."""
    lo, hi = net.bounds(x, weights)
    with torch.no_grad():
        ref = model(x)
    decided, top = decide_topk(lo, hi, k)
    wrong = (top[decided] != ref.topk(k).indices[decided]).any(1)
    outside = ~((lo <= ref.double()) & (ref.double() <= hi)).all(1)
    return int(decided.sum()), int(wrong.sum()), int(outside.sum())


@pytest.mark.parametrize("name", ["mlp", "cnn", "resbn", "zoo"])
@pytest.mark.parametrize("k", [1, 5])
def test_decisions_equal_float32_topk(name: str, k: int) -> None:
    model, shape = build(name, seed=1)
    net = IntervalNet(model)
    ties = near_ties(model, shape, 150, k, 7)
    with torch.no_grad():
        logits = model(ties).sort(1, descending=True).values
    gaps = (logits[:, :-1] - logits[:, 1:]).abs().amin(1)
    assert float((gaps < 1e-6).float().mean()) > 0.9  # genuinely adversarial near-ties
    x = torch.cat([inputs(shape, 1000, 8), ties])
    total = 0
    for layout in LAYOUTS:
        for planes in (2, 3, 4):
            decided, wrong, outside = exactness_failures(
                net, model, x, plane_weights(model, net.param_names, planes, layout), k
            )
            assert wrong == 0 and outside == 0
            total += decided
    assert total > 0  # the rule does decide inputs


def test_wrong_bound_is_caught() -> None:
    """Without the rounding widening the bounds are the float64 values: near-ties then
    get decided the float64 way, which differs from float32 — the checks must fail."""
    model, shape = build("cnn", seed=1)
    ties = near_ties(model, shape, 150, 1, 7)
    w = plane_weights(model, IntervalNet(model).param_names, 4, "ieee")
    _, wrong, outside = exactness_failures(IntervalNet(model, _rounding=False), model, ties, w, 1)
    assert wrong > 0 and outside > 0
    _, wrong, outside = exactness_failures(IntervalNet(model), model, ties, w, 1)
    assert wrong == 0 and outside == 0


@pytest.mark.parametrize("name", ["mlp", "cnn", "resbn"])
@pytest.mark.parametrize("k", [1, 5])
def test_pairwise_decisions_equal_float32_topk(name: str, k: int) -> None:
    """decide (differences of logits through the final Linear) decides at least what
    the plain rule does, and every decision equals the float32 top-k. (The CNN's
    affine pass at 2 planes costs ~15 ms an input: 150 random inputs here, all 1000
    in the slow suite.)"""
    check_pairwise_decisions(name, k, 150 if name == "cnn" else 1000)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 5])
def test_pairwise_decisions_equal_float32_topk_cnn_all_inputs(k: int) -> None:
    check_pairwise_decisions("cnn", k, 1000)


def check_pairwise_decisions(name: str, k: int, n_random: int) -> None:
    model, shape = build(name, seed=2)
    net = IntervalNet(model)
    x = torch.cat([inputs(shape, n_random, 9), near_ties(model, shape, 150, k, 11)])
    with torch.no_grad():
        ref = model(x).topk(k).indices
    more = 0
    for layout in LAYOUTS:
        for planes in (2, 3, 4):
            w = plane_weights(model, net.param_names, planes, layout)
            plain, _ = decide_topk(*net.bounds(x, w), k)
            decided, top = decide(net, x, w, k)
            assert bool((decided | ~plain).all())  # never fewer than the plain rule
            assert torch.equal(top[decided], ref[decided])
            more += int(decided.sum() - plain.sum())
    assert more > 0  # the differences decide inputs the plain bounds cannot


def test_pairwise_rule_catches_a_wrong_bound() -> None:
    model, shape = build("mlp", seed=1)
    ties = near_ties(model, shape, 150, 1, 7)
    w = plane_weights(model, IntervalNet(model).param_names, 4, "ieee")
    with torch.no_grad():
        ref = model(ties).topk(1).indices
    decided, top = decide(IntervalNet(model, _rounding=False), ties, w, 1)
    assert bool((top[decided] != ref[decided]).any())  # unsound without the widening...
    decided, top = decide(IntervalNet(model), ties, w, 1)
    assert torch.equal(top[decided], ref[decided])  # ...and exact with it



def test_bounds_return_their_context_and_leave_nothing_for_the_next_call() -> None:
    """What the decision rules need from a pass comes back with its bounds, so a call on
    other inputs or weights in between cannot change the next decision."""
    model, shape = build("mlp", seed=1)
    net = IntervalNet(model)
    x = torch.cat([inputs(shape, 200, 3), near_ties(model, shape, 40, 1, 5)])
    w2 = plane_weights(model, net.param_names, 2, "exp-first")
    w3 = plane_weights(model, net.param_names, 3, "ieee")
    first = decide(net, x, w2, 1)
    b = net.bounds(x[:7] * 1e37, w3)  # other rows, other weights, rows past float32's safe range
    assert b.undecidable.shape == (7,) and bool(b.undecidable.all())
    assert bool(torch.isinf(b.lo[b.undecidable]).all()) and bool(torch.isinf(b.hi[b.undecidable]).all())
    assert b.rounding and b.head_input is not None and b.head_input.lo.shape == (7, 32)
    assert set(b.weights) == set(net.param_names) and all(lo.dtype == torch.float64 for lo, _ in b.weights.values())
    lo, hi = b  # unpacks as the bounds, as callers of the old tuple expect
    assert lo is b.lo and hi is b.hi
    again = decide(net, x, w2, 1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_moved_names_are_still_importable_from_intervals() -> None:
    """benchmarks/ and users import these from progressive.intervals."""
    assert intervals.decide_topk is topk.decide_topk
    assert intervals.known_mask is weights.known_mask and intervals.weight_bounds is weights.weight_bounds


def test_decide_topk_rule() -> None:
    lo = torch.tensor([[5.0, 1.0, 3.0, 0.0], [5.0, 4.0, 3.0, 0.0], [5.0, 1.0, 3.0, 0.0]], dtype=torch.float64)
    hi = torch.tensor([[6.0, 2.0, 4.0, 1.0], [6.0, 5.0, 4.0, 1.0], [6.0, 3.0, 4.0, 1.0]], dtype=torch.float64)
    d, top = decide_topk(lo, hi, 1)
    assert d.tolist() == [True, False, True] and top[0].tolist() == [0] and top[1].tolist() == [-1]
    d, top = decide_topk(lo, hi, 2)
    # row 2: lo of 2nd (3) == hi of class 1 (3): strict inequality fails
    assert d.tolist() == [True, False, False] and top[0].tolist() == [0, 2]
    d, top = decide_topk(lo, hi, 4)
    assert d.tolist() == [False, False, False]
    lo4 = torch.tensor([[9.0, 1.0, 5.0, 3.0]], dtype=torch.float64)
    d, top = decide_topk(lo4, lo4 + 0.5, 4)
    assert d.tolist() == [True] and top[0].tolist() == [0, 2, 3, 1]
    with pytest.raises(ValueError):
        decide_topk(lo, hi, 5)


def test_unbounded_weight_gives_unbounded_rows() -> None:
    model, shape = build("mlp")
    net = IntervalNet(model)
    w = plane_weights(model, net.param_names, 4, "ieee")
    b_lo, b_hi = w["0.bias"]
    b_hi = b_hi.clone()
    b_hi[3] = float("inf")
    w["0.bias"] = (b_lo, b_hi)
    lo, hi = net.bounds(inputs(shape, 10, 0), w)
    assert torch.all(lo == -float("inf")) and torch.all(hi == float("inf"))
    assert not decide_topk(lo, hi, 1)[0].any()


def test_bad_weight_arguments() -> None:
    model, shape = build("mlp")
    net = IntervalNet(model)
    w = plane_weights(model, net.param_names, 2, "ieee")
    x = inputs(shape, 4, 0)
    with pytest.raises(KeyError):
        net.bounds(x, {k: v for k, v in w.items() if k != "2.weight"})
    with pytest.raises(ValueError):
        net.bounds(x, {**w, "0.bias": (w["0.bias"][1] + 1, w["0.bias"][1])})
    with pytest.raises(TypeError):
        net.bounds(x.double(), w)


# --------------------------------------------------------------------------- refusals


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


class WithSort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.fc(x), dim=1).values


class WithExp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).exp()


class WithRawParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (WithLSTM(), "rnn"),
        (WithSort(), "sort"),
        (WithExp(), "Tensor.exp"),
        (WithRawParam(), "'w'"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "LayerNorm"),
        (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)), "Softmax"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "padding_mode"),
        (nn.Sequential(nn.Linear(4, 4), nn.MaxPool1d(2, return_indices=True)), "return_indices"),
    ],
)
def test_unsupported_layers_refused(model: nn.Module, named: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=named) as info:
        IntervalNet(model.eval())
    assert isinstance(info.value, ModelHubError) and isinstance(info.value, TypeError)
    if "padding_mode" not in named:
        assert "supported:" in str(info.value)


def test_training_mode_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="training"):
        IntervalNet(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train())
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    net = IntervalNet(model)
    model.train()
    w = {n: (t.double(), t.double()) for n, t in model.state_dict().items() if n in net.param_names}
    with pytest.raises(UnsupportedLayerError, match="training"):
        net.bounds(torch.randn(3, 4), w)


def test_single_leaf_module_and_param_names() -> None:
    lin = nn.Linear(5, 3).eval()
    net = IntervalNet(lin)
    assert net.param_names == ["weight", "bias"]
    x = torch.randn(50, 5)
    lo, hi = net.bounds(x, plane_weights(lin, net.param_names, 3, "ieee"))
    assert_inside(lo, hi, lin(x).detach())
    bn_net = IntervalNet(res_bn().eval())
    assert "bn1.running_var" in bn_net.param_names and "bn1.num_batches_tracked" not in bn_net.param_names


def test_rows_that_may_overflow_are_unbounded() -> None:
    model, shape = build("cnn")
    net = IntervalNet(model)
    x = inputs(shape, 6, 0)
    x[2, 0, 3, 3] = 3e38  # float32 partial sums may overflow: never decided
    x[4, 0, 0, 0] = float("nan")
    lo, hi = net.bounds(x, plane_weights(model, net.param_names, 4, "ieee"))
    bad = torch.tensor([False, False, True, False, True, False])
    assert torch.all(lo[bad] == -float("inf")) and torch.all(hi[bad] == float("inf"))
    assert torch.isfinite(lo[~bad]).all() and torch.isfinite(hi[~bad]).all()
    assert decide_topk(lo, hi, 1)[0][bad].sum() == 0


@pytest.mark.parametrize(
    "act",
    [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.ELU(),
     nn.ELU(0.3), nn.LeakyReLU(0.01), nn.LeakyReLU(-0.3), nn.ReLU()],
    ids=lambda m: f"{type(m).__name__}{getattr(m, 'approximate', '')}",
)
def test_activation_widening_covers_this_machines_float32_kernels(act: nn.Module) -> None:
    rng = np.random.default_rng(0)
    pats = rng.integers(0, 2**32, 200_000, dtype=np.uint32).view(np.float32)
    vals = np.concatenate([
        np.linspace(-20, 20, 400_001, dtype=np.float32),
        np.linspace(-1e-3, 1e-3, 20_001, dtype=np.float32),
        np.linspace(-120, 120, 20_001, dtype=np.float32),
        pats[np.abs(pats) < 2.0**100],
    ])
    x = torch.from_numpy(vals).reshape(-1, 1)
    lo, hi = IntervalNet(act).bounds(x, {})
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
    assert_inside(lo, hi, act(x))
