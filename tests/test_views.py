"""Views, strides, storage offsets, lazy bits and requires_grad come back as torch.load
gives them: every case is compared with a real torch.save/torch.load round trip."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from conftest import assert_bit_equal, assert_like_torch_load, tensor_bytes, torch_round_trip

from modelhub_torch.pas.dtypes import bits_to_tensor, dtype_name, tensor_bits
from modelhub_torch.skeleton import flatten, unflatten
from modelhub_torch.skeleton_check import state_dict_nodes, view_gather


def _decoded(flat) -> list[torch.Tensor]:
    """The stored tensors as a load decodes them: fresh, contiguous, from their bits."""
    return [bits_to_tensor(tensor_bits(t).copy(), dtype_name(t.dtype), list(t.shape)) for t in flat.tensors]


def _round_trip(obj, weights_only: bool = True):
    flat = flatten(obj)
    skeleton = json.loads(json.dumps(flat.skeleton, allow_nan=False))
    return unflatten(skeleton, _decoded(flat), weights_only=weights_only)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _slices_and_transposes():
    base = torch.randn(12, generator=_gen())
    return {"a": base[:6], "b": base[6:], "t": base.view(3, 4).t(), "v": base.view(2, 6), "step": base[1::3]}


def _slices_without_their_base():
    qkv = torch.randn(3 * 4, 5, generator=_gen())
    return {"q": qkv[:4], "k": qkv[4:8], "v": qkv[8:]}


def _slice_of_a_bigger_storage():
    return {"part": torch.randn(10, generator=_gen())[2:5]}


def _fused_qkv():
    qkv = torch.randn(12, 5, generator=_gen())
    return {"qkv": qkv, "q": qkv[:4], "kv": qkv[4:].view(2, 4, 5)}


def _channels_last():
    w = torch.randn(8, 3, 3, 3, generator=_gen()).to(memory_format=torch.channels_last)
    depthwise = torch.randn(4, 1, 3, 3, generator=_gen()).to(memory_format=torch.channels_last)
    return {"w": w, "depthwise": depthwise, "first_filter": w[0]}


def _expanded_and_scalars():
    return {"ex": torch.arange(4.0).expand(3, 4), "s": torch.tensor(2.5), "row": torch.randn(1, 4, generator=_gen()).t()}


def _requires_grad():
    a = torch.randn(4, generator=_gen(), requires_grad=True)
    return {"a": a, "slice": a[:2], "doubled": a * 2, "detached": a.detach(), "plain": torch.ones(2)}


def _parameters():
    p = torch.nn.Parameter(torch.randn(6, generator=_gen()))
    frozen = torch.nn.Parameter(torch.randn(2, 3, generator=_gen()), requires_grad=False)
    cl = torch.nn.Parameter(torch.randn(2, 3, 2, 2, generator=_gen()).to(memory_format=torch.channels_last))
    return {"p": p, "p_slice": p[:3], "p_detached": p.detach(), "frozen": frozen, "frozen_t": frozen.t(), "cl": cl}


def _tied():
    w = torch.nn.Parameter(torch.randn(4, 3, generator=_gen()))
    return collections.OrderedDict([("emb", w), ("lm", w), ("emb_data", w.detach()), ("copy", w.detach().clone())])


def _conj_and_neg():
    x = torch.randn(4, generator=_gen(), dtype=torch.complex64)
    y = torch.randn(3, generator=_gen(), dtype=torch.complex128)
    return {"x": x, "xc": x.conj(), "xc_tail": x.conj()[1:], "yc": y.conj()}


def _neg_view_alone():
    return {"neg": torch.randn(4, generator=_gen(), dtype=torch.complex64).conj().imag}


CASES = {
    "slices-and-transposes": _slices_and_transposes,
    "slices-without-their-base": _slices_without_their_base,
    "slice-of-a-bigger-storage": _slice_of_a_bigger_storage,
    "fused-qkv": _fused_qkv,
    "channels-last": _channels_last,
    "expanded-and-scalars": _expanded_and_scalars,
    "requires-grad": _requires_grad,
    "parameters": _parameters,
    "tied": _tied,
    "conj-and-neg": _conj_and_neg,
    "neg-view-alone": _neg_view_alone,
}


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_unflatten_gives_what_torch_load_gives(make, tmp_path):
    obj = make()
    assert_like_torch_load(_round_trip(obj), torch_round_trip(obj, tmp_path))


def test_numpy_arrays_come_back_as_torch_load_gives_them(tmp_path):
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    obj = {"c": a, "again": a, "f": np.asfortranarray(a), "strided": a[:, ::2], "alias": a[1:], "empty": a[:0]}
    got, want = _round_trip(obj), torch_round_trip(obj, tmp_path, weights_only=False)
    assert_like_torch_load(got, want)
    assert got["f"].flags.f_contiguous and not got["f"].flags.c_contiguous
    assert got["c"] is got["again"]  # one array saved twice is one array (pickle's memo)
    assert not np.shares_memory(got["c"], got["alias"])  # pickle copies each array


def test_writes_through_one_view_show_in_the_others():
    base = torch.arange(24.0)
    obj = {"m": base.view(4, 6), "row": base[6:12], "col": base.view(4, 6)[:, 2], "t": base.view(4, 6).t()}
    back = _round_trip(obj)
    back["row"][2] = -1.0
    assert back["m"][1, 2] == -1.0 and back["col"][1] == -1.0 and back["t"][2, 1] == -1.0


def test_the_common_case_is_stored_as_before():
    """A contiguous tensor owning its storage: the stored tensor is the tensor itself,
    named by a bare node, and it comes back as the very tensor decoded (no copy)."""
    w, b = torch.randn(3, 4, generator=_gen()), torch.zeros(3)
    p = torch.nn.Parameter(torch.randn(2, generator=_gen()))
    flat = flatten({"w": w, "b": b, "p": p})
    assert flat.tensors[0] is w and flat.tensors[1] is b and flat.tensors[2] is p
    assert flat.paths == ["w", "b", "p"]
    assert flat.skeleton == {"$dict": [["w", {"$t": 0}], ["b", {"$t": 1}], ["p", {"$t": 2, "param": True}]]}
    decoded = _decoded(flat)
    back = unflatten(flat.skeleton, decoded)
    assert back["w"] is decoded[0] and back["b"] is decoded[1]
    assert back["p"].data_ptr() == decoded[2].data_ptr()


def test_stored_forms():
    """What each kind of tensor is stored as (see modelhub_torch/views.py)."""
    w = torch.randn(8, 3, 3, 3, generator=_gen()).to(memory_format=torch.channels_last)
    flat = flatten({"w": w})
    assert flat.tensors[0] is w and flat.skeleton["$dict"][0][1] == {"$t": 0, "layout": [27, 1, 9, 3]}
    assert torch.equal(_decoded(flat)[0], w)  # stored in logical order, as before views
    qkv = torch.randn(12, 5, generator=_gen())
    flat = flatten({"q": qkv[:4], "v": qkv[8:]})
    assert flat.paths == ["q/<storage>"] and flat.tensors[0].shape == (60,)
    assert flat.skeleton["$dict"][1][1] == {"$t": 0, "size": [4, 5], "stride": [5, 1], "offset": 40}
    flat = flatten({"qkv": qkv, "k": qkv[4:8]})
    assert flat.paths == ["qkv"] and flat.tensors[0] is qkv
    assert flat.skeleton["$dict"] == [["qkv", {"$t": 0}], ["k", {"$t": 0, "size": [4, 5], "stride": [5, 1], "offset": 20}]]


def test_views_of_different_dtypes_are_stored_apart():
    """torch.save refuses them; they are stored each on its own, values exact."""
    x = torch.randn(4, generator=_gen(), dtype=torch.complex64)
    obj = {"x": x, "xc": x.conj(), "real": x.real, "bits": x.view(torch.int64)}
    with pytest.raises(RuntimeError, match="different types"):
        torch.save(obj, "/dev/null")
    flat = flatten(obj)
    assert len(flat.tensors) == 4 and all(len(n) == 1 for _, n in flat.skeleton["$dict"])
    back = _round_trip(obj)
    assert_bit_equal(back, {k: v.resolve_conj() for k, v in obj.items()})


def test_a_grad_requiring_tensor_and_its_detached_alias_stay_apart(tmp_path):
    a = torch.randn(3, generator=_gen(), requires_grad=True)
    obj = {"a": a, "d": a.detach()}
    back = _round_trip(obj)
    assert back["a"].requires_grad and back["a"].is_leaf and not back["d"].requires_grad
    assert back["a"].data_ptr() == back["d"].data_ptr()
    assert_like_torch_load(back, torch_round_trip(obj, tmp_path))


def lightning_checkpoint() -> dict:
    """A Lightning-style checkpoint: a channels_last conv (weight and Adam state), an
    embedding tied to the output layer and sliced for positions, a fused qkv."""
    g = _gen(7)
    conv = torch.randn(16, 3, 3, 3, generator=g).to(memory_format=torch.channels_last)
    emb = torch.randn(50, 8, generator=g)
    qkv = torch.randn(24, 8, generator=g)
    sd = collections.OrderedDict([
        ("conv.weight", conv),
        ("conv.bias", torch.randn(16, generator=g)),
        ("emb.weight", emb),
        ("pos.weight", emb[:10]),
        ("head.weight", emb),
        ("attn.qkv", qkv),
        ("attn.q", qkv[:8]),
        ("attn.out.weight", torch.randn(8, 8, generator=g).t()),
    ])
    exp_avg = torch.zeros_like(conv).add_(0.5)  # zeros_like keeps channels_last
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": sd,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0), "exp_avg": exp_avg}},
                              "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [],
        "callbacks": {},
        "hparams_name": "kwargs",
        "hyper_parameters": {"width": 8},
    }


def test_lightning_checkpoint_through_a_repository(local_repo, tmp_path):
    ckpt = lightning_checkpoint()
    v = local_repo.commit(ckpt, "lit")
    back = local_repo.load(v.ref)
    assert_like_torch_load(back, torch_round_trip(ckpt, tmp_path))
    sd = back["state_dict"]
    assert sd["conv.weight"].is_contiguous(memory_format=torch.channels_last)
    assert sd["head.weight"] is sd["emb.weight"]
    sd["emb.weight"][3, 0] = 42.0
    assert sd["pos.weight"][3, 0] == 42.0
    # stored once per storage: conv, bias, emb, qkv, out, exp_avg, step
    assert len(local_repo.manifest(v.id).tensors) == 7
    assert "views" in local_repo.store.settings["features"]


def test_load_weights_gives_views(local_repo):
    ckpt = lightning_checkpoint()
    v = local_repo.commit(ckpt, "lit")
    weights = local_repo.load_state_dict(v.ref)
    assert list(weights) == list(ckpt["state_dict"])
    for k, t in ckpt["state_dict"].items():
        assert torch.equal(weights[k], t) and weights[k].stride() == t.stride(), k
    assert weights["pos.weight"].untyped_storage().data_ptr() == weights["emb.weight"].untyped_storage().data_ptr()
    assert weights["attn.q"].storage_offset() == 0 and weights["attn.q"].shape == (8, 8)


def test_view_gather_maps_a_weight_onto_its_stored_tensor():
    ckpt = lightning_checkpoint()
    flat = flatten(ckpt)
    nodes = state_dict_nodes(flat.skeleton)
    for name, t in ckpt["state_dict"].items():
        leaf = flat.tensors[nodes[name]["$t"]]
        logical = leaf.detach().contiguous().reshape(-1)
        gather = view_gather(nodes[name], list(leaf.shape))
        got = logical if gather is None else logical[torch.from_numpy(gather.copy())]
        assert tensor_bytes(got) == tensor_bytes(t), name
    # a view of a stored tensor that is placed with a layout
    w = torch.randn(4, 3, 2, 2, generator=_gen()).to(memory_format=torch.channels_last)
    flat = flatten({"w": w, "w0": w[1, :, 1]})
    node = flat.skeleton["$dict"][1][1]
    assert node["layout"] == [12, 1, 6, 3]
    gather = torch.from_numpy(view_gather(node, [4, 3, 2, 2]))
    assert torch.equal(w.contiguous().reshape(-1)[gather].reshape(3, 2), w[1, :, 1])


def test_diff_and_describe_see_views(local_repo):
    ckpt = lightning_checkpoint()
    v1 = local_repo.commit(ckpt, "lit")
    ckpt["state_dict"]["emb.weight"][0, 0] += 1.0  # changes emb, head and pos (row 0)
    v2 = local_repo.commit(ckpt, "lit")
    d = local_repo.diff(v1.ref, v2.ref)
    changed = {t.path for t in d.changed}
    assert changed == {"state_dict/emb.weight", "state_dict/pos.weight"}  # head is emb (one tensor)
    pos = next(t for t in d.tensors if t.path == "state_dict/pos.weight")
    assert pos.shape == ([10, 8], [10, 8])
    info = {t.path: t for t in local_repo.describe(v2.ref).tensors}
    assert info["state_dict/conv.weight"].shape == [16, 3, 3, 3] and info["state_dict/conv.weight"].in_state_dict
    assert "state_dict/pos.weight" not in info  # a view, stored as part of emb.weight


def test_a_channels_last_weight_is_stored_as_versions_before_views_stored_it(local_repo):
    """Versions written before views stored a channels_last weight in logical order;
    so does this one (only the node's layout is new): the record is bit-identical, so
    the older version becomes a link to it, and delta chains go on across the upgrade."""
    w = torch.randn(8, 3, 3, 3, generator=_gen())
    v1 = local_repo.commit({"conv.weight": w.contiguous()}, "m")  # the form of earlier versions
    v2 = local_repo.commit({"conv.weight": w.to(memory_format=torch.channels_last)}, "m")
    old, new = local_repo.manifest(v1.id).tensors[0], local_repo.manifest(v2.id).tensors[0]
    assert (old["shape"], old["digest"]) == (new["shape"], new["digest"])
    assert old["data"] == {"kind": "same", "version": v2.id, "index": 0}
    assert local_repo.manifest(v2.id).skeleton["$dict"][0][1] == {"$t": 0, "layout": [27, 1, 9, 3]}
    assert local_repo.load(v2.ref)["conv.weight"].stride() == (27, 1, 9, 3)
    assert local_repo.load(v1.ref)["conv.weight"].is_contiguous()
