"""flatten/unflatten: every non-tensor value as typed JSON, ties kept, pickle only on request."""

from __future__ import annotations

import collections
import enum
import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_bit_equal, is_neg_zero
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhub_torch.errors import FormatError, PickleRequiredError
from modelhub_torch.skeleton import flatten, state_dict_paths, unflatten


class Custom:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Custom and other.x == self.x

    def __hash__(self):
        return hash(repr(self.x))


class Color(enum.Enum):
    RED = 1


def _round_trip(obj, **kw):
    flat = flatten(obj, **kw)
    text = json.dumps(flat.skeleton, allow_nan=False)  # the skeleton is plain, strict JSON
    return unflatten(json.loads(text), flat.tensors, weights_only=kw.get("allow_pickle") is not True)


def test_nested_containers_and_scalars():
    obj = {
        "a": [1, 2.5, "x", None, True, False],
        "t": (1, (2, 3), [4]),
        3: "int key",
        (1, "k"): "tuple key",
        -7: {"deep": {"deeper": [(), [], {}]}},
        "od": collections.OrderedDict([("z", 1), ("a", 2)]),
        "size": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "dtypes": [torch.float32, torch.int8, torch.bool],
        "device": torch.device("cpu"),
        "cuda": torch.device("cuda", 1),
        "bytes": b"\x00\xffabc",
        "bytearray": bytearray(b"xy"),
        "set": {3, 1, 2},
        "frozen": frozenset({"a", "b"}),
        "big": 2**100,
        "neg_big": -(2**70) + 1,
        "floats": [0.1, 1e-310, 1.7976931348623157e308],
        "empty_str": "",
        "unicode": "gewichte—λ",
    }
    back = _round_trip(obj)
    assert_bit_equal(back, obj)
    assert list(back) == list(obj)  # key order
    assert type(back["od"]) is collections.OrderedDict and list(back["od"]) == ["z", "a"]
    assert type(back["t"]) is tuple and type(back["t"][1]) is tuple and type(back["t"][2]) is list
    assert type(back["size"]) is torch.Size and back["size"] == (2, 3)
    assert back["dtype"] is torch.bfloat16
    assert back["cuda"] == torch.device("cuda", 1)
    assert type(back["bytes"]) is bytes and type(back["bytearray"]) is bytearray
    assert back["set"] == {1, 2, 3} and type(back["set"]) is set
    assert type(back["frozen"]) is frozenset
    assert back["big"] == 2**100 and type(back["big"]) is int
    assert back[(1, "k")] == "tuple key"


def test_int_and_float_are_not_confused():
    back = _round_trip({"i": 1, "f": 1.0, "b": True, "l": [0, 0.0, False]})
    assert type(back["i"]) is int and type(back["f"]) is float and type(back["b"]) is bool
    assert [type(v) for v in back["l"]] == [int, float, bool]


def test_special_floats():
    back = _round_trip({"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "nz": -0.0, "pz": 0.0})
    assert math.isnan(back["nan"])
    assert back["inf"] == math.inf and back["ninf"] == -math.inf
    assert back["nz"] == 0.0 and math.copysign(1.0, back["nz"]) == -1.0
    assert is_neg_zero(back["nz"]) and not is_neg_zero(back["pz"])


def test_special_float_keys_and_sets():
    back = _round_trip({math.inf: 1, -0.0: 2, "s": {1.5, -math.inf}})
    keys = list(back)
    assert keys[0] == math.inf
    assert is_neg_zero(keys[1])
    assert back["s"] == {1.5, -math.inf}


def test_numpy_arrays_and_scalars():
    obj = {
        "arr": np.arange(12, dtype=np.int16).reshape(3, 4),
        "f64": np.array([1.5, np.nan, -0.0]),
        "noncontig": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
        "s_f32": np.float32(0.1),
        "s_i64": np.int64(-5),
        "s_u8": np.uint8(200),
        "s_bool": np.bool_(True),
        "s_nan": np.float64("nan"),
    }
    flat = flatten(obj)
    assert len(flat.tensors) == 3  # only arrays become tensor leaves
    back = unflatten(json.loads(json.dumps(flat.skeleton)), flat.tensors)
    for k in ("arr", "f64", "noncontig"):
        assert isinstance(back[k], np.ndarray)
        assert back[k].dtype == obj[k].dtype and back[k].shape == obj[k].shape
        assert back[k].tobytes() == np.ascontiguousarray(obj[k]).tobytes()
    for k in ("s_f32", "s_i64", "s_u8", "s_bool", "s_nan"):
        assert type(back[k]) is type(obj[k]), k
        assert back[k].tobytes() == obj[k].tobytes(), k


def test_tensors_become_leaves_with_paths():
    a, b = torch.randn(3), torch.zeros(2, dtype=torch.int64)
    flat = flatten({"x": {"w": a}, "y": [b]})
    assert flat.paths == ["x/w", "y/0"]
    assert flat.tensors[0] is a and flat.tensors[1] is b
    assert not flat.uses_pickle


def test_tied_tensors_are_one_leaf():
    w = torch.nn.Parameter(torch.randn(4, 3))
    sd = {"emb.weight": w, "lm.weight": w, "other": w.detach().clone()}
    flat = flatten(sd)
    assert len(flat.tensors) == 2
    back = unflatten(flat.skeleton, [t.detach().clone() for t in flat.tensors])
    assert back["emb.weight"].data_ptr() == back["lm.weight"].data_ptr()
    assert back["other"].data_ptr() != back["emb.weight"].data_ptr()
    assert isinstance(back["emb.weight"], torch.nn.Parameter) and back["emb.weight"].requires_grad


def test_distinct_views_of_one_storage_are_one_leaf():
    base = torch.arange(12.0)
    sd = {"a": base[:6], "b": base[6:], "t": base.view(3, 4).t()}
    flat = flatten(sd)
    assert len(flat.tensors) == 1 and flat.paths == ["t"]  # the view that holds the storage whole
    assert flat.tensors[0] is sd["t"]
    back = unflatten(json.loads(json.dumps(flat.skeleton)), [flat.tensors[0].contiguous()])
    assert back["b"].tolist() == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert back["t"].stride() == (1, 4) and back["b"].storage_offset() == 6
    assert len({v.untyped_storage().data_ptr() for v in back.values()}) == 1


def test_same_view_twice_through_different_python_objects_is_tied():
    base = torch.randn(5)
    flat = flatten({"a": base.view(5), "b": base[:]})
    assert len(flat.tensors) == 1


def test_empty_tensors_are_not_tied():
    flat = flatten({"a": torch.empty(0), "b": torch.empty(0)})
    assert len(flat.tensors) == 2


def test_parameter_flag_and_requires_grad():
    sd = {"p": torch.nn.Parameter(torch.ones(2), requires_grad=False), "t": torch.ones(2)}
    back = _round_trip(sd)
    assert isinstance(back["p"], torch.nn.Parameter) and not back["p"].requires_grad
    assert type(back["t"]) is torch.Tensor


@pytest.mark.parametrize(
    "value",
    [Custom(3), Color.RED, {Custom(1)}, collections.defaultdict(int, a=1), object.__new__(Custom)],
    ids=["object", "enum", "set-of-objects", "defaultdict", "bare"],
)
def test_custom_objects_need_pickle(value):
    with pytest.raises(PickleRequiredError, match="allow_pickle=True"):
        flatten({"state": {"thing": value}})


def test_pickled_object_needs_weights_only_false():
    obj = {"w": torch.ones(2), "thing": Custom([1, 2])}
    flat = flatten(obj, allow_pickle=True)
    assert flat.uses_pickle
    skel = json.loads(json.dumps(flat.skeleton))
    with pytest.raises(PickleRequiredError, match="weights_only=False"):
        unflatten(skel, flat.tensors, weights_only=True)
    back = unflatten(skel, flat.tensors, weights_only=False)
    assert back["thing"] == Custom([1, 2]) and type(back["thing"]) is Custom
    assert back["w"] is flat.tensors[0]


def test_error_names_the_path():
    with pytest.raises(PickleRequiredError, match="optimizer/extra"):
        flatten({"optimizer": {"extra": Custom(1)}})


def test_unpicklable_object_with_allow_pickle():
    with pytest.raises(PickleRequiredError, match="cannot be pickled"):
        flatten({"f": lambda: 1}, allow_pickle=True)


def test_unknown_skeleton_tag_is_format_error():
    with pytest.raises(FormatError):
        unflatten({"$bogus": 1}, [])
    with pytest.raises(FormatError):
        unflatten({}, [])


def _trap_tensors() -> list[torch.Tensor]:
    return [torch.arange(12.0).reshape(3, 4), torch.zeros(4, dtype=torch.complex64), torch.arange(3),
            torch.empty(0, 2), torch.zeros(2, dtype=torch.float8_e4m3fn)]


@pytest.mark.parametrize(
    ("node", "what"),
    [
        ({"$t": 0, "size": [3, 4], "stride": [4, 1], "offset": 1}, "reaches element 12, past the 12"),
        ({"$t": 0, "size": [2], "stride": [100], "offset": 0}, "past the 12 elements"),
        ({"$t": 0, "size": [1], "stride": [1], "offset": 12}, "past the 12 elements"),
        ({"$t": 0, "size": [0], "stride": [1], "offset": 13}, "past the 12 elements"),
        ({"$t": 3, "size": [1], "stride": [1], "offset": 0}, "past the 0 elements"),
        ({"$t": 0, "size": [2], "stride": [-1], "offset": 5}, "must be lists of"),
        ({"$t": 0, "size": [-2], "stride": [1], "offset": 5}, "must be lists of"),
        ({"$t": 0, "size": [2], "stride": [1], "offset": -1}, "offset -1"),
        ({"$t": 0, "size": [2], "stride": [1], "offset": 2**70}, "offset"),
        ({"$t": 0, "size": [2**47, 2**47], "stride": [0, 0], "offset": 0}, "view of"),
        ({"$t": 0, "size": [2], "stride": [2**63], "offset": 0}, "must be lists of"),
        ({"$t": 0, "size": [2, 2], "stride": [1], "offset": 0}, "as many integers"),
        ({"$t": 0, "size": [1] * 65, "stride": [1] * 65, "offset": 0}, "must be lists of"),
        ({"$t": 0, "size": 2, "stride": [1], "offset": 0}, "must be lists of"),
        ({"$t": 0, "size": [1.5], "stride": [1], "offset": 0}, "must be lists of"),
        ({"$t": 0, "size": [True], "stride": [1], "offset": 0}, "must be lists of"),
        ({"$t": 0, "size": [2], "stride": [1], "offset": "0"}, "offset"),
        ({"$t": 0, "size": [2], "stride": [1]}, "needs all of"),
        ({"$t": 0, "offset": 3}, "needs all of"),
        ({"$t": 0, "layout": [1, 1]}, "does not place"),  # overlapping
        ({"$t": 0, "layout": [4, 1000]}, "does not place"),  # would allocate far more than the tensor
        ({"$t": 0, "layout": [1]}, "one non-negative stride per dimension"),
        ({"$t": 0, "layout": [-4, 1]}, "one non-negative stride per dimension"),
        ({"$t": 0, "layout": "C"}, "one non-negative stride per dimension"),
        ({"$t": 3, "layout": [2, 1]}, "does not place"),  # an empty tensor
        ({"$t": 0, "conj": True}, "conj bit on a float32"),
        ({"$t": 2, "neg": True}, "neg bit on a int64 tensor"),
        ({"$t": 4, "neg": True}, "neg bit on a float8_e4m3fn tensor"),  # torch cannot negate one
        ({"$t": 2, "grad": True}, "requires_grad on a int64 tensor"),
        ({"$t": 0, "grad": 1}, "must be true or false"),
        ({"$t": 1, "conj": "yes"}, "must be true or false"),
        ({"$t": 0, "grad": True, "param": True}, "'grad' is for plain tensors"),
        ({"$t": 1, "np": True, "conj": True}, "no conj or neg bit"),
        ({"$t": 0, "view": [[2], [1], 0]}, "unexpected keys"),
    ],
)
def test_booby_trapped_view_fields_are_format_errors(node, what):
    """A skeleton travels with a repository: a view that would read past its tensor,
    allocate without bound or set a bit torch asserts on is refused before any tensor
    is built."""
    with pytest.raises(FormatError, match=what):
        unflatten({"$dict": [["w", node]]}, _trap_tensors())


def test_one_tensor_placed_two_ways_is_a_format_error():
    with pytest.raises(FormatError, match="two different layouts"):
        unflatten([{"$t": 0, "layout": [1, 3]}, {"$t": 0}], _trap_tensors())
    with pytest.raises(FormatError, match="two different layouts"):
        unflatten([{"$t": 0, "size": [2], "stride": [1], "offset": 0}, {"$t": 0, "layout": [1, 3]}], _trap_tensors())


def test_views_at_the_edges_of_their_tensor_are_accepted():
    t = _trap_tensors()
    back = unflatten([{"$t": 0, "size": [0], "stride": [1], "offset": 12},
                      {"$t": 0, "size": [3], "stride": [5], "offset": 1},
                      {"$t": 0, "size": [2, 2], "stride": [0, 0], "offset": 11}], t)
    assert back[0].shape == (0,) and back[1].tolist() == [1.0, 6.0, 11.0] and back[2].tolist() == [[11.0] * 2] * 2


def test_a_view_checked_against_the_tensor_actually_decoded():
    """unflatten checks views against the tensors it is given, not against what the
    manifest claims: a shorter decoded tensor cannot be read past."""
    node = {"$t": 0, "size": [4], "stride": [1], "offset": 8}
    assert unflatten(node, [torch.arange(12.0)]).tolist() == [8.0, 9.0, 10.0, 11.0]
    with pytest.raises(FormatError, match="past the 6 elements"):
        unflatten(node, [torch.arange(6.0)])


def test_a_manifest_with_a_view_past_its_tensor_is_refused(local_repo):
    """The same checks run when a manifest is read (validate_manifest), against its records."""
    import zstandard

    from modelhub_torch.manifest import validate_manifest

    base = torch.arange(12.0)
    v = local_repo.commit({"a": base[:6], "b": base[6:]}, "m")
    doc = json.loads(zstandard.ZstdDecompressor().decompress(local_repo.manifest(v.id).to_bytes()))
    validate_manifest(doc, "m")
    doc["skeleton"]["$dict"][1][1]["offset"] = 7
    with pytest.raises(FormatError, match="reaches element 12, past the 12 elements"):
        validate_manifest(doc, "m")


_ODD = st.sampled_from([-1, 2**48, 2**48 + 1, 2**62, 2**63, 2**70])
_INTS = st.one_of(*[st.integers(0, 4)] * 6, st.integers(0, 12), _ODD)  # mostly in bounds
_DIM = st.one_of(*[st.integers(1, 3)] * 6, st.just(0))

def _reference_view(shape, layout, size, stride, offset):
    """The view's values by definition, elementwise: None when it is not allowed."""
    n = math.prod(shape)
    ok = lambda v: type(v) is int and 0 <= v <= 2**48  # noqa: E731
    if not all(map(ok, [*size, *stride, offset])) or math.prod(size) > 2**48:
        return None
    storage = list(range(n))
    if layout is not None:
        if not all(map(ok, layout)) or n == 0:
            return None
        slots = [sum(i * st for i, st in zip(idx, layout)) for idx in itertools.product(*map(range, shape))]
        if sorted(slots) != list(range(n)):
            return None
        storage = [0] * n
        for element, slot in enumerate(slots):
            storage[slot] = element
    positions = [offset + sum(i * st for i, st in zip(idx, stride)) for idx in itertools.product(*map(range, size))]
    if any(p >= n for p in positions) or (not positions and offset > n):
        return None
    return [storage[p] for p in positions]


def _dense_layout(shape: list[int], order: list[int]) -> list[int]:
    """Strides placing dimensions ``order`` (innermost first) one after another."""
    layout, step = [0] * len(shape), 1
    for d in order:
        layout[d], step = step, step * shape[d]
    return layout


@settings(max_examples=1000, deadline=None)
@given(
    shape=st.lists(_DIM, min_size=0, max_size=3),
    size=st.lists(st.one_of(_DIM, st.sampled_from([-1, 2**48 + 1, 2**60])), min_size=0, max_size=3),
    data=st.data(),
    layout_kind=st.sampled_from(["none", "dense", "any"]),
)
def test_random_views_are_exact_or_refused(shape, size, data, layout_kind):
    """Any size/stride/offset/layout a repository may hold: either the view's elements
    exactly (as defined elementwise, independently of torch) or a FormatError."""
    stride = data.draw(st.lists(_INTS, min_size=len(size), max_size=len(size)))
    offset = data.draw(_INTS)
    n = math.prod(shape)
    reach = sum((s - 1) * st for s, st in zip(size, stride)) if min(size, default=1) > 0 else 0
    if data.draw(st.booleans()) and 0 <= reach < n:  # half the time: an offset that fits, if one does
        offset = data.draw(st.integers(0, n - 1 - reach))
    layout = {
        "none": None,
        "dense": _dense_layout(shape, data.draw(st.permutations(range(len(shape))))),
        "any": data.draw(st.lists(_INTS, min_size=len(shape), max_size=len(shape))),
    }[layout_kind]
    leaf = torch.arange(n, dtype=torch.float64).reshape(shape)
    node = {"$t": 0, "size": size, "stride": stride, "offset": offset}
    if layout is not None:
        node["layout"] = layout
    want = _reference_view(shape, layout, size, stride, offset)
    if want is None:
        with pytest.raises(FormatError):
            unflatten(node, [leaf])
        return
    got = unflatten(node, [leaf])
    assert list(got.shape) == size and got.stride() == tuple(stride)
    assert got.reshape(-1).tolist() == [float(v) for v in want]


def test_state_dict_paths():
    w = torch.ones(2)
    plain = flatten({"a": w, "b": torch.zeros(1)})
    assert state_dict_paths(plain.skeleton) == {"a": 0, "b": 1}
    ckpt = flatten({"epoch": 3, "state_dict": {"l.w": w, "l.b": torch.zeros(1)}, "opt": [torch.ones(3)]})
    assert state_dict_paths(ckpt.skeleton) == {"l.w": 0, "l.b": 1}
    assert state_dict_paths(flatten({"epoch": 1}).skeleton) == {}
    assert state_dict_paths(flatten([w]).skeleton) == {}


def test_conjugate_and_negative_views_are_not_tied_to_their_base():
    """Regression: x and x.conj() share storage, offset, shape and strides."""
    x = torch.randn(4, dtype=torch.complex64)
    flat = flatten({"x": x, "c": x.conj(), "n": x.conj().imag, "i": x.imag})
    assert len(flat.tensors) == 4
    assert len(flatten({"a": x.conj(), "b": x.conj()}).tensors) == 1
