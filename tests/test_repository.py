"""Repository: bit-exact commits and loads, refs, deltas, dedup, gc — on disk and in memory."""

from __future__ import annotations

import collections
import itertools
import math
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import (
    assert_bit_equal,
    assert_like_torch_load,
    float32_specials,
    tensor_bytes,
    torch_round_trip,
    unique_memory_url,
)

import modelhub_torch
from modelhub_torch.budget import estimate
from modelhub_torch.errors import (
    ModelHubError,
    PickleRequiredError,
    RefNotFoundError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    UnsupportedDtypeError,
)
from modelhub_torch.repository import Repository, Version


def _from_bits(patterns, int_dtype, float_dtype) -> torch.Tensor:
    return torch.tensor(patterns, dtype=torch.int64).to(int_dtype).view(float_dtype)


def every_dtype_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(6, 8, generator=g)
    sd: dict[str, torch.Tensor] = {
        "f32": torch.randn(7, 5, generator=g),
        "f64": torch.randn(11, generator=g, dtype=torch.float64),
        "f16": torch.randn(3, 4, 5, generator=g).half(),
        "bf16": torch.randn(9, generator=g).bfloat16(),
        "i8": torch.randint(-128, 128, (17,), generator=g, dtype=torch.int8),
        "i16": torch.randint(-(2**15), 2**15, (13,), generator=g, dtype=torch.int16),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 0, -1, 12345], dtype=torch.int32),
        "i64": torch.tensor([-(2**63), 2**63 - 1, 0, -1, 2**40 + 3], dtype=torch.int64),
        "u8": torch.randint(0, 256, (4, 4), generator=g, dtype=torch.uint8),
        "bool": torch.rand(21, generator=g) > 0.5,
        "scalar_f32": torch.tensor(3.25),
        "scalar_i64": torch.tensor(7),
        "scalar_bool": torch.tensor(True),
        "scalar_bf16": torch.tensor(-0.0, dtype=torch.bfloat16),
        "empty_f32": torch.empty(0),
        "empty_2d": torch.empty(3, 0, dtype=torch.float16),
        "empty_i64": torch.empty(0, 5, dtype=torch.int64),
        "transposed": wide.t(),
        "strided": wide[::2, 1::3],
        "expanded": torch.arange(4.0).expand(3, 4),
        "f32_special": float32_specials(),
        "f64_special": _from_bits(
            [
                0x7FF8000000000001,  # NaN with payload
                -0x0000000000000001,  # 0xFFFF...: negative NaN, full payload
                0x7FF0000000000001,  # signalling NaN
                -0x8000000000000000,  # -0.0
                0x7FF0000000000000,  # +inf
                -0x0010000000000000,  # -inf (0xFFF0...)
                0x0000000000000001,  # smallest denormal
                -0x7FF0000000000000,  # 0x8010...: negative normal
            ],
            torch.int64,
            torch.float64,
        ),
        "f16_special": _from_bits(
            [0x7E01, 0xFC00 - 0x10000, 0x8000 - 0x10000, 0x0001, 0x7C00, 0x7D55, 0x03FF], torch.int16, torch.float16
        ),
        "bf16_special": _from_bits(
            [0x7FC1, 0xFF81 - 0x10000, 0x8000 - 0x10000, 0x0001, 0x7F80, 0xFF80 - 0x10000, 0x007F],
            torch.int16,
            torch.bfloat16,
        ),
        "c64": torch.randn(5, generator=g, dtype=torch.complex64),
    }
    return sd


INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def test_every_dtype_round_trips_bit_exact(repo, tmp_path):
    sd = every_dtype_state()
    v = repo.commit(sd, "dtypes")
    assert isinstance(v, Version) and v.ref == "dtypes@v1" and v.number == 1
    stored = dict(sd)  # each storage once:
    del stored["strided"]  # a view of the storage "transposed" holds whole
    stored["expanded"] = sd["expanded"][0]  # 4 elements, expanded to 12
    assert v.raw_bytes == sum(t.numel() * t.element_size() for t in stored.values())
    back = repo.load("dtypes@v1")
    assert list(back) == list(sd)
    for k, t in sd.items():
        got = back[k]
        assert type(got) is torch.Tensor, k
        assert got.dtype == t.dtype and got.shape == t.shape, k
        assert tensor_bytes(got) == tensor_bytes(t), k
        if t.dtype in INT_VIEW:
            assert torch.equal(got.contiguous().view(INT_VIEW[t.dtype]), t.contiguous().view(INT_VIEW[t.dtype])), k
    assert torch.equal(back["transposed"], sd["transposed"])
    assert back["transposed"].stride() == (1, 8)  # as torch.load gives it
    assert_like_torch_load(back, torch_round_trip(sd, tmp_path))
    # the special values themselves, read as floats
    f = back["f32_special"]
    assert torch.isnan(f[:5]).all()
    assert f[5].item() == 0.0 and torch.signbit(f[5])
    assert f[7].item() == float("inf") and f[8].item() == float("-inf")
    assert 0 < f[9].item() < torch.finfo(torch.float32).tiny
    assert back["scalar_f32"].dim() == 0 and back["scalar_f32"].item() == 3.25
    assert torch.signbit(back["scalar_bf16"])


def test_a_tensor_spanning_several_chunks(repo):
    t = torch.randn(1_300_000)  # > one codec chunk (2**20 elements)
    t[::1000] = float("nan")
    repo.commit({"big": t, "small": torch.arange(3)}, "big")
    back = repo.load("big@latest")
    assert tensor_bytes(back["big"]) == tensor_bytes(t)


def test_more_dtypes_and_lazy_views(repo):
    """Unsigned/float8/complex128 dtypes, and conj/neg views (regression: they were
    refused with a RuntimeError, and x.conj() was tied to x and came back unconjugated)."""
    g = torch.Generator().manual_seed(4)
    raw = torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8)
    sd = {}
    for name, width in (("uint16", 2), ("uint32", 4), ("uint64", 8), ("float8_e4m3fn", 1),
                        ("float8_e5m2", 1), ("complex128", 16)):
        if hasattr(torch, name):
            sd[name] = raw[: 64 * width].view(getattr(torch, name))
    z = torch.randn(6, generator=g, dtype=torch.complex64)
    sd.update({"z": z, "z_conj": z.conj(), "z_neg_imag": z.conj().imag})
    repo.commit(sd, "views")
    back = repo.load("views@v1")
    for k, t in sd.items():
        t = t.resolve_conj().resolve_neg()
        assert back[k].dtype == t.dtype and tensor_bytes(back[k]) == tensor_bytes(t), k
    assert torch.equal(back["z_conj"], z.conj())
    assert torch.equal(back["z_neg_imag"], -z.imag)


def test_unsupported_dtype_is_refused_and_leaves_no_version(repo):
    with pytest.raises(UnsupportedDtypeError, match=r"complex32|ComplexHalf"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "ComplexHalf support is experimental"
            bad = torch.zeros(2, dtype=torch.complex32)
        repo.commit({"x": bad}, "bad")
    assert repo.versions() == []


def test_tied_weights_are_restored(repo):
    emb = torch.nn.Parameter(torch.randn(10, 4))
    sd = collections.OrderedDict([("emb.weight", emb), ("lm.weight", emb), ("lm.bias", torch.zeros(10))])
    repo.commit(sd, "tied")
    back = repo.load("tied@v1")
    assert type(back) is collections.OrderedDict
    a, b = back["emb.weight"], back["lm.weight"]
    assert a is b or a.data_ptr() == b.data_ptr()
    assert back["lm.bias"].data_ptr() != a.data_ptr()
    assert isinstance(a, torch.nn.Parameter)
    assert tensor_bytes(a) == tensor_bytes(emb)


def test_tied_module_weights_are_restored(repo):
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(12, 6)
            self.lm = torch.nn.Linear(6, 12, bias=False)
            self.lm.weight = self.emb.weight

    model = LM()
    repo.commit(model, "lm")  # an nn.Module commits its state_dict
    back = repo.load("lm@v1")
    assert back["emb.weight"].data_ptr() == back["lm.weight"].data_ptr()
    fresh = LM()
    fresh.load_state_dict(back)
    assert torch.equal(fresh.emb.weight, model.emb.weight)


def test_equal_but_untied_tensors_stay_separate(repo):
    a = torch.ones(50)
    repo.commit({"a": a, "b": a.clone()}, "m")
    back = repo.load("m@v1")
    assert torch.equal(back["a"], back["b"])
    assert back["a"].data_ptr() != back["b"].data_ptr()
    back["a"].add_(1)
    assert back["b"].sum().item() == 50.0


def _mlp(seed: int = 0, width: int = 32, hidden: int = 64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))


def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    width = model[0].in_features
    for _ in range(steps):
        x = torch.randn(16, width, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def lightning_like_checkpoint():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for i in range(3):
        _train(model, opt, 2, i)
        sched.step()
    return {
        "epoch": 2,
        "global_step": 6,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": collections.OrderedDict(
            (k, v.detach().clone()) for k, v in model.state_dict().items()
        ),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.125),
                                                                "best_k_models": {}, "kth_value": float("inf")}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 1e-3, "hidden": 64, "betas": (0.9, 0.999), "name": "mlp"},
    }, model, opt


def test_lightning_checkpoint_with_adam_state_round_trips(repo):
    ckpt, model, opt = lightning_like_checkpoint()
    state = ckpt["optimizer_states"][0]["state"]
    assert sorted(state) == [0, 1, 2, 3] and "exp_avg_sq" in state[0]
    repo.commit(ckpt, "lit", metrics={"val_loss": 0.5})
    back = repo.load("lit@v1")
    assert_bit_equal(back, ckpt)
    assert list(back["optimizer_states"][0]["state"]) == [0, 1, 2, 3]  # int keys kept
    assert back["hyper_parameters"]["betas"] == (0.9, 0.999)
    assert back["callbacks"]["ModelCheckpoint{'monitor': 'val_loss'}"]["kth_value"] == float("inf")

    # and it resumes: the restored optimizer state drives the same next step
    fresh = _mlp(seed=1)
    fresh.load_state_dict(back["state_dict"])
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(back["optimizer_states"][0])
    _train(model, opt, 1, 99)
    _train(fresh, fresh_opt, 1, 99)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_returns_only_weights(repo):
    ckpt, _, _ = lightning_like_checkpoint()
    repo.commit(ckpt, "lit")
    weights = repo.load_state_dict("lit@v1")
    assert list(weights) == list(ckpt["state_dict"])
    for k, t in ckpt["state_dict"].items():
        assert tensor_bytes(weights[k]) == tensor_bytes(t) and weights[k].dtype == t.dtype

    plain = {"w": torch.randn(3)}
    repo.commit(plain, "plain")
    assert_bit_equal(repo.load_state_dict("plain"), plain)

    repo.commit({"epoch": 1, "notes": [torch.ones(2)]}, "odd")
    with pytest.raises(ModelHubError, match="no state_dict"):
        repo.load_state_dict("odd@v1")


def test_slowly_changing_model_versions(repo):
    model = _mlp(width=128, hidden=256)  # ~35k weights: manifests are a small overhead
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    states, losses = [], []
    for n in range(5):
        if n:
            losses.append(_train(model, opt, 3, n))
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        states.append(sd)
        v = repo.commit(sd, "mlp", metrics={"step": 3 * n, "loss": losses[-1] if losses else None})
        assert v.ref == f"mlp@v{n + 1}"
        assert v.parent == (f"mlp@v{n}" if n else None)
    for n, sd in enumerate(states, start=1):
        assert_bit_equal(repo.load(f"mlp@v{n}"), sd)

    versions = repo.versions("mlp")
    assert [v.number for v in versions] == [1, 2, 3, 4, 5]
    assert versions[2].metrics == {"step": 6, "loss": losses[1]}
    stats = repo.stats()
    assert stats["versions"] == 5 and stats["models"] == 1
    assert stats["raw_bytes"] == 5 * versions[0].raw_bytes
    assert stats["ratio"] > 1.25
    last = versions[-1].stored_bytes
    # reverse deltas: the newest version is stored whole (it loads in one decode) and
    # older ones were re-encoded as deltas against their child when that was committed,
    # as far as the recreation budget allows
    assert last > 0.6 * versions[-1].raw_bytes
    budget = repo.settings["max_load_factor"]
    factors = [estimate(repo.store.manifest, v.id).factor for v in versions]
    assert all(f <= budget for f in factors), factors
    deltas = [v for v in versions[:-1] if v.stored_bytes < 0.8 * last]
    assert len(deltas) >= 2, versions
    assert sum(stats["planes"].values()) <= stats["stored_bytes"]


def _commit_trained(repo, steps: int, versions: int = 5) -> list[dict]:
    """Commit ``versions`` state dicts of an MLP trained ``steps`` Adam steps apart."""
    model = _mlp(width=128, hidden=256)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    states = []
    for n in range(versions):
        _train(model, opt, steps, n)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        repo.commit(states[-1], "m")
    return states


def test_unbounded_budget_keeps_one_delta_chain(tmp_path):
    """max_load_factor=None: every older version is a delta (keyframes only at
    multiples of keyframe_interval=16), the smallest storage."""
    repo = Repository.init(tmp_path / "r", max_load_factor=None)
    states = _commit_trained(repo, steps=3)
    versions = repo.versions("m")
    last = versions[-1].stored_bytes
    assert all(v.stored_bytes < 0.8 * last for v in versions[:-1]), versions
    factors = [estimate(repo.store.manifest, v.id).factor for v in versions]
    assert factors == sorted(factors, reverse=True) and factors[0] > 4, factors  # one chain
    for n, sd in enumerate(states, start=1):
        assert_bit_equal(repo.load(f"m@v{n}"), sd)


def test_keyframe_interval_bounds_delta_chains(tmp_path):
    repo = Repository.init(tmp_path / "r", keyframe_interval=2, max_load_factor=None)
    states = _commit_trained(repo, steps=1)
    sizes = [v.stored_bytes for v in repo.versions("m")]
    whole = sizes[-1]
    is_delta = [size < 0.8 * whole for size in sizes[:-1]]
    # every other version is a keyframe, so no delta chain is longer than one link
    assert sum(is_delta) == 2, sizes
    assert not any(a and b for a, b in itertools.pairwise(is_delta)), sizes
    assert all(size > 0.9 * whole for size, d in zip(sizes[:-1], is_delta) if not d), sizes
    for n, sd in enumerate(states, start=1):
        assert_bit_equal(repo.load(f"m@v{n}"), sd)


def _three_versions(repo, model="m"):
    sds = []
    for n in range(3):
        sd = {"w": torch.full((40,), float(n)), "b": torch.arange(5) + n}
        sds.append(sd)
        repo.commit(sd, model, metrics={"n": n}, message=f"commit {n}")
    return sds


def test_refs(repo):
    sds = _three_versions(repo)
    assert_bit_equal(repo.load("m@v1"), sds[0])
    assert_bit_equal(repo.load("m@V2"), sds[1])
    assert_bit_equal(repo.load("m@latest"), sds[2])
    assert_bit_equal(repo.load("m"), sds[2])  # a bare model name is its latest
    v2 = repo.version("m@v2")
    assert v2.message == "commit 1" and v2.metrics == {"n": 1}
    assert repo.resolve(v2) == v2.id
    assert_bit_equal(repo.load(v2), sds[1])
    assert_bit_equal(repo.load(v2.id[:10]), sds[1])  # bare id prefix
    within = re.match(r"[0-9]*[a-f]?", v2.id).group()  # digits alone after '@' are a number
    within = v2.id[: max(8, len(within))]
    assert_bit_equal(repo.load(f"m@{within}"), sds[1])  # id prefix within the model
    assert_bit_equal(repo.load(v2.id.upper()[:12]), sds[1])

    tagged = repo.tag("m@v2", "best")
    assert tagged.ref == "m@v2"
    assert_bit_equal(repo.load("m@best"), sds[1])
    assert repo.tags("m") == {"best": "m@v2"}
    repo.tag("m@v3", "best")  # aliases move
    assert repo.resolve("m@best") == repo.resolve("m@v3")
    with pytest.raises(ModelHubError, match="shadow"):
        repo.tag("m@v1", "v7")
    with pytest.raises(ModelHubError, match="invalid alias"):
        repo.tag("m@v1", "bad/alias")
    assert repo.models() == ["m"]


def test_bad_refs_name_the_closest_match(repo):
    _three_versions(repo)
    repo.tag("m@v1", "best")
    with pytest.raises(RefNotFoundError) as exc:
        repo.resolve("m@v9")
    assert "model 'm' has no version 'm@v9' (it has v1..v3; latest is m@v3)" in str(exc.value)
    with pytest.raises(RefNotFoundError, match=r"did you mean m@v1\b"):
        repo.resolve("m@v11")
    assert isinstance(exc.value, KeyError)  # `except KeyError` still works
    with pytest.raises(RefNotFoundError, match="m@best"):
        repo.load("m@bset")
    with pytest.raises(RefNotFoundError, match="did you mean m@latest"):
        repo.resolve("m@lates")
    with pytest.raises(RefNotFoundError, match="'nosuch@v1'"):
        repo.load("nosuch@v1")
    with pytest.raises(RefNotFoundError):
        repo.resolve("")
    repo.commit({"w": torch.ones(1)}, "solo")
    for bad in ("m@", "solo@"):  # regression: an empty id prefix matched every version
        with pytest.raises(RefNotFoundError):
            repo.resolve(bad)
    with pytest.raises(RefNotFoundError):
        repo.resolve("ffffffffffffffffffff")  # an id prefix that matches nothing


def test_parent_default_and_explicit(repo):
    sds = _three_versions(repo)
    assert [v.parent for v in repo.versions("m")] == [None, "m@v1", "m@v2"]
    branch = {"w": torch.full((40,), 10.0), "b": torch.arange(5)}
    v4 = repo.commit(branch, "m", parent="m@v1")
    assert v4.ref == "m@v4" and v4.parent == "m@v1"
    v5 = repo.commit(branch, "m")  # default: the model's latest
    assert v5.parent == "m@v4"
    for n, sd in enumerate([*sds, branch, branch], start=1):
        assert_bit_equal(repo.load(f"m@v{n}"), sd)
    with pytest.raises(RefNotFoundError):
        repo.commit(branch, "m", parent="m@v42")
    assert len(repo.versions("m")) == 5


def test_cross_model_parent_fine_tune(repo):
    g = torch.Generator().manual_seed(3)
    base = {"w": torch.randn(200, 100, generator=g), "b": torch.randn(100, generator=g), "head": torch.randn(10, 100, generator=g)}
    repo.commit(base, "m")
    base2 = {k: v + 1e-3 for k, v in base.items()}
    repo.commit(base2, "m")
    ft = {"w": base2["w"] + 1e-5 * torch.randn(200, 100, generator=g), "b": base2["b"].clone(), "head": torch.randn(3, 100, generator=g)}
    v = repo.commit(ft, "ft", parent="m@v2", metrics={"acc": 0.9})
    assert v.ref == "ft@v1" and v.parent == "m@v2"
    assert v.stored_bytes < 0.7 * v.raw_bytes  # forward deltas against the parent model
    assert_bit_equal(repo.load("ft@v1"), ft)
    assert_bit_equal(repo.load("m@v2"), base2)
    # the base model moves on (m@v2 is re-encoded against m@v3); the fine-tune still loads
    base3 = {k: v + 1e-3 for k, v in base2.items()}
    repo.commit(base3, "m")
    repo.gc()
    for ref, sd in (("m@v1", base), ("m@v2", base2), ("m@v3", base3), ("ft@v1", ft)):
        assert_bit_equal(repo.load(ref), sd)
    assert repo.verify() == []
    ft2 = {k: v.clone() for k, v in ft.items()}
    ft2["head"] += 1
    assert repo.commit(ft2, "ft").parent == "ft@v1"
    assert_bit_equal(repo.load("ft@v2"), ft2)
    assert_bit_equal(repo.load("ft@v1"), ft)


def test_identical_tensors_are_stored_once(repo):
    g = torch.Generator().manual_seed(5)
    sd = {"w": torch.randn(256, 256, generator=g), "b": torch.randn(256, generator=g)}
    raw = sum(t.numel() * t.element_size() for t in sd.values())
    repo.commit(sd, "m")
    before = repo.stats()["stored_bytes"]
    repo.commit({k: v.clone() for k, v in sd.items()}, "m")
    after = repo.stats()["stored_bytes"]
    assert after - before < 0.05 * raw
    v1, v2 = repo.versions("m")
    # reverse deltas: the newest holds the data, the older one only links to it
    assert v1.stored_bytes < 0.05 * raw
    assert v2.stored_bytes > 0.5 * raw
    # another model holding the same tensor links to it too
    repo.commit({"copy": sd["w"].clone()}, "other")
    assert repo.version("other@v1").stored_bytes < 0.05 * raw
    for ref in ("m@v1", "m@v2"):
        assert_bit_equal(repo.load(ref), sd)
    assert torch.equal(repo.load("other@v1")["copy"], sd["w"])
    assert repo.verify() == []


def test_pickle_only_on_request(repo):
    obj = {"w": torch.ones(3), "thing": collections.Counter("aab")}
    with pytest.raises(PickleRequiredError):
        repo.commit(obj, "p")
    assert repo.versions() == []
    repo.commit(obj, "p", allow_pickle=True)
    with pytest.raises(PickleRequiredError, match="weights_only=False"):
        repo.load("p@v1")
    back = repo.load("p@v1", weights_only=False)
    assert back["thing"] == collections.Counter("aab") and type(back["thing"]) is collections.Counter


def test_map_location(repo):
    repo.commit({"w": torch.randn(4)}, "m")
    for loc in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda storage, _: storage):
        assert repo.load("m@v1", map_location=loc)["w"].device.type == "cpu"


def test_open_errors(tmp_path):
    with pytest.raises(RepositoryNotFoundError, match="no modelhub repository"):
        Repository(tmp_path / "nonexistent")
    with pytest.raises(FileNotFoundError):
        Repository(str(tmp_path / "nonexistent"))
    with pytest.raises(RepositoryNotFoundError):
        Repository(unique_memory_url())
    Repository.init(tmp_path / "r")
    with pytest.raises(RepositoryExistsError):
        Repository.init(tmp_path / "r")
    assert isinstance(Repository.init(tmp_path / "r", exist_ok=True), Repository)
    with pytest.raises(ModelHubError, match="unknown repository settings"):
        Repository.init(tmp_path / "r2", bogus=1)


def test_invalid_model_names(repo):
    for name in ("", "a/b", "latest", "-x", "x" * 200, "m@v1"):
        with pytest.raises(ModelHubError, match="invalid model name"):
            repo.commit({"w": torch.ones(1)}, name)


def test_metrics_must_be_json(repo):
    v = repo.commit({"w": torch.ones(1)}, "m", metrics={"acc": torch.tensor(0.5), "n": np.int64(3)})
    assert v.metrics == {"acc": 0.5, "n": 3}
    with pytest.raises(ModelHubError, match="JSON"):
        repo.commit({"w": torch.ones(1)}, "m", metrics={"bad": object()})


def test_non_finite_metrics_are_kept(repo):
    """A NaN/inf metric (a diverged loss) is kept as what it was (stored tagged, as
    manifests are strict JSON), in the manifest and in the index, and in queries it
    is neither a number nor null."""
    v = repo.commit({"w": torch.ones(1)}, "m", metrics={"loss": float("nan"), "best": torch.tensor(float("inf")),
                                                        "hist": [1.0, float("-inf")], "acc": 0.5})
    for got in (v.metrics, repo.versions("m")[0].metrics, Repository(repo.url).version("m@v1").metrics):
        assert math.isnan(got["loss"]) and got["best"] == math.inf and got["hist"] == [1.0, -math.inf]
        assert got["acc"] == 0.5
    assert repo.query("select m where m.metrics.best > 1").refs == []
    assert repo.query("select m where m.metrics.loss is null").refs == []
    assert repo.query("select m where m.metrics.acc = 0.5").refs == ["m@v1"]
    row = repo.query("select m where m.metrics.acc = 0.5 order by m.metrics.loss").to_dicts()[0]
    assert math.isnan(row["metrics.loss"])  # selected columns show the value, not its tag
    v2 = repo.commit({"w": torch.zeros(1)}, "m", metrics={"loss": float("nan"), "acc": 0.5})
    d = repo.diff("m@v1", v2.ref)
    assert not d.metrics["loss"].differs and d.metrics["acc"].differs is False
    assert repo.gc()["objects_removed"] == 0


def test_metadata_may_be_any_mapping(repo):
    """hparams straight from a config object (a read-only mapping) commit as a dict."""
    import types

    v = repo.commit({"w": torch.ones(1)}, "m", hparams=types.MappingProxyType({"lr": 0.1}))
    assert v.hparams == {"lr": 0.1}


def test_a_version_returned_from_its_manifest_decodes_metadata(repo, monkeypatch):
    """When the index cannot give the new version back, commit builds it from the
    manifest: NaN metrics come back as NaN there too."""
    from modelhub_torch.store.repo import RepoStore

    def broken(self, vid):
        raise ModelHubError("index unavailable")

    monkeypatch.setattr(RepoStore, "checked_version", broken)
    v = repo.commit({"w": torch.ones(1)}, "m", metrics={"loss": float("nan")})
    assert math.isnan(v.metrics["loss"]) and v.ref == "m@v1"


def test_top_level_load_function(tmp_path):
    path = tmp_path / "hub"
    repo = Repository.init(path)
    sd = {"w": torch.randn(8, 8)}
    repo.commit(sd, "m")
    assert_bit_equal(modelhub_torch.load(str(path), "m@v1"), sd)
    assert_bit_equal(modelhub_torch.load(str(path), "m@latest", map_location="cpu"), sd)
    url = unique_memory_url()
    Repository.init(url).commit(sd, "x")
    assert_bit_equal(modelhub_torch.load(url, "x"), sd)


def test_reopen_sees_everything(tmp_path):
    repo = Repository.init(tmp_path / "r")
    sds = _three_versions(repo)
    again = Repository(tmp_path / "r")
    assert [v.ref for v in again.versions()] == ["m@v1", "m@v2", "m@v3"]
    assert_bit_equal(again.load("m@v2"), sds[1])


def test_gc_keeps_live_objects_and_removes_garbage(repo):
    sds = _three_versions(repo)
    _, model, _ = lightning_like_checkpoint()
    repo.commit(model, "mlp")
    live = set(repo.objects)
    assert repo.gc(dry_run=True)["objects_removed"] == 0
    assert repo.gc()["objects_removed"] == 0
    assert set(repo.objects) == live

    junk = repo.objects.put(b"nobody points at me")
    repo.loc.write_atomic("tmp/leftover.tmp", b"partial")
    assert repo.objects.exists(junk)
    dry = repo.gc(dry_run=True)
    assert dry["objects_removed"] == 1 and dry["bytes_freed"] == len(b"nobody points at me")
    assert repo.objects.exists(junk)
    done = repo.gc()
    assert done["objects_removed"] == 1 and done["temp_files"] == 1
    assert not repo.objects.exists(junk)
    assert repo.loc.listdir("tmp") == []
    assert set(repo.objects) == live
    for n, sd in enumerate(sds, start=1):
        assert_bit_equal(repo.load(f"m@v{n}"), sd)
    assert repo.verify() == []
