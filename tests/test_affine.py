"""Affine-form bounds (progressive/affine.py): the float32 forward pass of networks whose
weights are *any* completion of the known planes lies inside the forms, decisions equal
every such network's top-k, and dropping the rounding terms is caught."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_intervals import build, inputs, near_ties, plane_weights
from torch import nn

from modelhub_torch.progressive import affine, forms
from modelhub_torch.progressive.affine import AffineNet
from modelhub_torch.progressive.context import Interval
from modelhub_torch.progressive.decision import decide
from modelhub_torch.progressive.forms import Form, FormContext
from modelhub_torch.progressive.intervals import IntervalNet
from modelhub_torch.progressive.weights import known_mask


class LeNet(nn.Module):
    """Functional max-pools after convolutions: the layers the weight symbols serve."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(16 * 2 * 2, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def model_and_shape(name: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "lenet":
        torch.manual_seed(seed)
        return LeNet().eval(), (1, 8, 8)
    return build(name, seed)


def completion(model: nn.Module, names: list[str], planes: int, layout: str, seed: int) -> nn.Module:
    """A copy of ``model`` whose float32 weights keep the known planes' bits and draw
    the unknown low bits at random: one network the bounds must hold for."""
    rng = np.random.default_rng(seed)
    mask = np.uint32(known_mask("float32", planes, layout))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in names:
        bits = state[name].contiguous().numpy().view(np.uint32)
        noise = rng.integers(0, 2**32, size=bits.shape, dtype=np.uint32)
        state[name] = torch.from_numpy(((bits & mask) | (noise & ~mask)).view(np.float32).copy())
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


def pair_lower_bounds(form: Form) -> torch.Tensor:
    """[N, C, C]: a lower bound of z_a − z_b for every ordered pair (a, b)."""
    ca, cb = form.c.unsqueeze(2), form.c.unsqueeze(1)
    ga, gb = form.g.unsqueeze(3), form.g.unsqueeze(2)
    spread = (ga - gb).abs().sum(1)
    size = ca.abs() + cb.abs() + ga.abs().sum(1) + gb.abs().sum(1)
    return (ca - cb) - spread - size * 1e-12


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet", "resbn", "functional"])
def test_forms_contain_every_completion_of_the_known_planes(name: str) -> None:
    """(The residual BN net's forms cost ~0.2 s an input: 24 inputs here, 64 in the
    slow suite.)"""
    check_forms_contain_completions(name, 24 if name == "resbn" else 64)


@pytest.mark.slow
def test_forms_contain_every_completion_of_the_known_planes_resbn_all_inputs() -> None:
    check_forms_contain_completions("resbn", 64)


def check_forms_contain_completions(name: str, n_inputs: int) -> None:
    model, shape = model_and_shape(name, 3)
    net = IntervalNet(model)
    x = inputs(shape, n_inputs, 5)
    for layout, planes in (("exp-first", 2), ("ieee", 2), ("exp-first", 1)):
        w = plane_weights(model, net.param_names, planes, layout)
        form, bad = AffineNet(net).logits(x, net.checked_weights(w))
        box = form.box()
        low = pair_lower_bounds(form)
        for seed in range(3):
            with torch.no_grad():
                ref = completion(model, net.param_names, planes, layout, seed)(x).double()
            ok = ~bad
            inside = (box.lo <= ref) & (ref <= box.hi)
            assert bool(inside[ok].all()), f"{name} {layout}@{planes}: a logit outside its form"
            diff = ref.unsqueeze(2) - ref.unsqueeze(1)
            assert bool((diff[ok] >= low[ok]).all()), f"{name} {layout}@{planes}: a difference below its bound"
        if planes == 2 and layout == "exp-first" and name != "resbn":
            # the forms are useful: most rows have a width far below the logits' spread
            width = (box.hi - box.lo)[~bad].amax(1)
            assert float(width.median()) < float(ref.abs().amax(1).median())


@pytest.mark.parametrize("name", ["cnn", "lenet"])
@pytest.mark.parametrize("k", [1, 5])
def test_affine_decisions_equal_every_completions_topk(name: str, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Every row gets the affine pass, ~30 ms an input: 120 random inputs here, 300
    in the slow suite.)"""
    check_affine_decisions(name, k, 120, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "lenet"])
@pytest.mark.parametrize("k", [1, 5])
def test_affine_decisions_equal_every_completions_topk_all_inputs(name: str, k: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    check_affine_decisions(name, k, 300, monkeypatch)


def check_affine_decisions(name: str, k: int, n_random: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(affine, "PROBE_ROWS", 10**9)  # every row gets the pass
    model, shape = model_and_shape(name, 4)
    net = IntervalNet(model)
    x = torch.cat([inputs(shape, n_random, 6), near_ties(model, shape, 60, k, 8)])
    w = plane_weights(model, net.param_names, 2, "exp-first")
    decided, top = AffineNet(net).decide(x, net.checked_weights(w), k)
    assert int(decided.sum()) > 0
    for seed in range(3):
        with torch.no_grad():
            ref = completion(model, net.param_names, 2, "exp-first", seed)(x).topk(k).indices
        assert torch.equal(top[decided], ref[decided])
    assert bool((top[~decided] == -1).all())


def test_weight_symbols_tighten_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A symbol per convolution weight (shared across positions) decides more than a
    fresh symbol per output does, on the same inputs and bounds."""
    monkeypatch.setattr(affine, "PROBE_ROWS", 10**9)  # try every row either way
    model, shape = model_and_shape("lenet", 1)
    net = IntervalNet(model)
    x = inputs(shape, 400, 9)
    w = net.checked_weights(plane_weights(model, net.param_names, 2, "exp-first"))
    shared, _ = AffineNet(net).decide(x, w, 1)
    monkeypatch.setattr(forms, "WEIGHT_SYMBOL_ELEMS", 0)
    fresh, _ = AffineNet(net).decide(x, w, 1)
    assert int(shared.sum()) > int(fresh.sum())


def test_affine_rounding_terms_are_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With exact weights only rounding separates near-ties: dropping the rounding terms
    of the affine pass makes it decide some of them the float64 way, which is wrong."""
    model, shape = model_and_shape("lenet", 2)
    net = IntervalNet(model)
    ties = near_ties(model, shape, 150, 1, 7)
    w = net.checked_weights(plane_weights(model, net.param_names, 4, "ieee"))
    with torch.no_grad():
        ref = model(ties).topk(1).indices
    decided, top = AffineNet(net).decide(ties, w, 1)
    assert torch.equal(top[decided], ref[decided])
    def zero(*args: object) -> float:
        return 0.0

    # every rounding term the affine pass uses: the forms' layers and the final pairs
    for name, value in (("dot_eps", zero), ("gamma", zero), ("TINY32", 0.0), ("U32", 0.0), ("U64", 0.0)):
        monkeypatch.setattr(forms, name, value)
    for name, value in (("gamma", zero), ("TINY32", 0.0), ("U64", 0.0)):
        monkeypatch.setattr(affine, name, value)
    decided, top = AffineNet(net).decide(ties, w, 1)
    assert bool((top[decided] != ref[decided]).any())


def test_within_reach_picks_rows_worth_the_pass() -> None:
    lo = torch.tensor([[9.0, 0.0, 0.0], [5.0, 4.0, 0.0], [1.0, -math.inf, 0.0], [2.0, 1.9, 0.0]], dtype=torch.float64)
    hi = torch.tensor([[11.0, 2.0, 1.0], [7.0, 6.0, 1.0], [3.0, 1.0, 1.0], [40.0, 38.0, 0.5]], dtype=torch.float64)
    # row 0: gap 9 vs spread 2; row 1: gap 1 vs spread 2; row 2: infinite; row 3: gap 1.05 vs spread 37.05
    assert affine.within_reach(lo, hi, 1).tolist() == [True, True, False, False]
    # top-2 also needs the first two classes apart: row 0 gap 9, spread 2 → still in reach
    assert affine.within_reach(lo, hi, 2).tolist() == [True, True, False, False]


def test_forms_from_different_branches_keep_their_own_symbols() -> None:
    """A fresh symbol of one branch is never the same symbol as another branch's:
    adding two forms bounds the sum by the sum of both radii, whatever their signs."""
    ctx = FormContext({}, 1)
    a = forms.from_box(ctx, Interval(torch.tensor([[-1.0, 0.0]], dtype=torch.float64),
                                  torch.tensor([[1.0, 0.0]], dtype=torch.float64)))
    neg = Form(-a.c, -a.g)  # −a: the same symbol, opposite sign
    b = forms.from_box(ctx, Interval(torch.tensor([[-2.0, -2.0]], dtype=torch.float64),
                                  torch.tensor([[2.0, 2.0]], dtype=torch.float64)))
    assert ctx.symbols == 3 and a.symbols == 1 and b.symbols == 3
    total = forms.add(ctx, neg, b).box()
    assert float(total.hi[0, 0]) >= 3.0 and float(total.lo[0, 0]) <= -3.0
    assert float(total.hi[0, 1]) >= 2.0 and float(total.hi[0, 1]) < 2.001
    same = forms.add(ctx, a, neg).box()  # a + (−a): the shared symbol cancels (float32 rounding left)
    assert float(same.hi.abs().max()) < 1e-6 and float(same.lo.abs().max()) < 1e-6


class InplaceReused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(F.relu(h, True) + h)  # the real forward adds relu(h) twice


def test_inplace_op_on_a_reused_tensor_is_refused() -> None:
    from modelhub_torch.progressive.intervals import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError, match="in place"):
        IntervalNet(InplaceReused().eval())
    chain = nn.Sequential(nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 10)).eval()
    IntervalNet(chain)  # nothing else reads the ReLU's input: fine


def test_same_padding_convolution_is_decided() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()
    net = IntervalNet(model)
    x = inputs((1, 8, 8), 64, 3)
    w = plane_weights(model, net.param_names, 3, "exp-first")
    decided, top = decide(net, x, w, 1)
    with torch.no_grad():
        ref = model(x).topk(1).indices
    assert int(decided.sum()) > 0 and torch.equal(top[decided], ref[decided])


def test_affine_pass_gives_up_on_networks_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    model, shape = model_and_shape("lenet", 1)
    net = IntervalNet(model)
    w = net.checked_weights(plane_weights(model, net.param_names, 2, "exp-first"))
    monkeypatch.setattr(affine, "MAX_ROW_ELEMS", 1000)
    decided, top = AffineNet(net).decide(inputs(shape, 40, 2), w, 1)
    assert not bool(decided.any()) and bool((top == -1).all())


class KeywordPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(input=F.relu(self.conv(x)), kernel_size=2)
        return self.fc(torch.flatten(h, 1))


def test_keyword_max_pool_is_bounded_soundly() -> None:
    torch.manual_seed(0)
    model = KeywordPool().eval()
    net = IntervalNet(model)
    x = inputs((1, 8, 8), 64, 4)
    decided, top = decide(net, x, plane_weights(model, net.param_names, 3, "exp-first"), 1)
    with torch.no_grad():
        ref = model(x).topk(1).indices
    assert int(decided.sum()) > 0 and torch.equal(top[decided], ref[decided])
