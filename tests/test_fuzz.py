"""Fuzzing: every decoder of repository bytes, fed random and mutated input, raises only
ModelHubError or returns exactly what was committed (targets: benchmarks/fuzz_targets.py,
whose 100,000-case run is benchmarks/fuzz.py); then the input classes that once crashed,
hung or misbehaved, each pinned with the error it must now raise."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhub_torch import Repository
from modelhub_torch.errors import CorruptObjectError, FormatError, PickleRequiredError
from modelhub_torch.kernels import decode_planes, rans_ctx
from modelhub_torch.manifest import Manifest, validate_manifest
from modelhub_torch.pas import entropy
from modelhub_torch.pas.codec import CodecConfig, decode_tensor
from modelhub_torch.skeleton import unflatten
from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.store.switch import SWITCH_FILE, read_switch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_targets as ft


class DrawSource:
    """A fuzz_targets.Source drawing from hypothesis (so failing cases shrink)."""

    def __init__(self, data: st.DataObject):
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def raw(self, n: int) -> bytes:
        return self.data.draw(st.binary(min_size=n, max_size=n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> ft.Corpus:
    return ft.build_corpus(tmp_path_factory.mktemp("fuzz"))


def fuzz(examples: int, seconds: float) -> settings:
    """Small example counts (the whole file stays well under a minute on two cores);
    the per-example deadline is the hang guard (a bomb takes ~0.5 s to refuse)."""
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=seconds),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------ fuzzing


@pytest.mark.parametrize("name", list(ft.TARGETS))
@fuzz(150, seconds=10)
@given(data=st.data())
def test_decoder(corpus: ft.Corpus, name: str, data: st.DataObject) -> None:
    """One decoder (``ft.TARGETS[name]``): ModelHubError or bit-exact, nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged versions left out of listings warn
        outcome = ft.TARGETS[name][0](corpus, DrawSource(data))
    assert outcome in (ft.REJECTED, ft.EXACT)


def test_unmutated_inputs_load_exactly(corpus: ft.Corpus) -> None:
    """The oracle's baseline: what was committed parses, decodes and loads bit-exact."""
    repo = Repository(ft.fresh_repo(corpus))
    for ref, want in corpus.committed.items():
        assert Manifest.from_bytes(corpus.manifests[ref]).ref == ref
        assert ft.same_object(repo.load(ref), want), ref
    for coder, cases in corpus.frames.items():
        for case in cases:
            out = np.empty_like(case.bits)
            decode_tensor(case.chunks, out, case.base, case.cfg, coder, context=case.context)
            assert (out == case.bits).all(), coder
    for skeleton, tensors, obj in corpus.skeletons:
        assert ft.same_object(unflatten(skeleton, tensors), obj)


# ------------------------------------------------------- pinned input classes


def _doc(corpus: ft.Corpus, ref: str = "m@v4") -> dict:
    return json.loads(json.dumps(corpus.docs[ref]))


def _planes_record(doc: dict) -> tuple[int, dict]:
    return next((i, t) for i, t in enumerate(doc["tensors"]) if t["data"]["kind"] == "planes")


def test_manifest_errors_name_the_tensor_and_the_field(corpus: ft.Corpus) -> None:
    doc = _doc(corpus)
    i, rec = _planes_record(doc)
    rec["shape"] = [*rec["shape"], 2]
    with pytest.raises(FormatError, match=rf"manifest X: tensor {i} \({rec['path']}\): shape .* nbytes"):
        validate_manifest(doc, "manifest X")
    link = {"version": doc["id"], "index": -1}
    for edit, what in [
        (lambda r: r.update(dtype="object"), "dtype 'object'"),
        (lambda r: r.update(digest="../" + "0" * 61), "digest"),
        (lambda r: r["data"]["chunks"][0]["frames"][0].__setitem__(2, "lz4"), "frame"),
        (lambda r: r["data"]["chunks"][0].update(n=r["data"]["chunks"][0]["n"] + 1), "elements"),
        (lambda r: r["data"]["codec"].update(exp_bits=40), "exp_bits"),
        (lambda r: r["data"].update(base=link), "base link"),
    ]:
        doc = _doc(corpus)
        edit(doc["tensors"][i])
        with pytest.raises(FormatError, match=what):
            validate_manifest(doc, "manifest X")


def test_manifest_declaring_more_bytes_than_it_stores_is_refused(corpus: ft.Corpus) -> None:
    """A tiny manifest must not make a reader allocate terabytes (was: np.empty of the
    declared size, MemoryError or an OOM kill)."""
    doc = _doc(corpus)
    _, rec = _planes_record(doc)
    rec["shape"] = [1 << 40]
    rec["nbytes"] = (1 << 40) * getattr(torch, rec["dtype"]).itemsize
    rec["data"]["chunks"] = [{"n": 1 << 40, "frames": rec["data"]["chunks"][0]["frames"]}]
    with pytest.raises(FormatError, match="decompression bomb"):
        validate_manifest(doc)


def test_manifest_bombs_deep_nesting_and_huge_numbers_are_format_errors(corpus: ft.Corpus) -> None:
    for data in corpus.bombs:  # was MemoryError for the forged header, 257 MiB for the others
        with pytest.raises(FormatError, match="more than"):
            Manifest.from_bytes(data)
    for data, what in [
        (b"[" * 100_000, "nested too deeply"),  # was RecursionError
        (b'{"format": 1, "id": ' + b"9" * 5000 + b"}", "not valid JSON"),  # was ValueError (int digits)
        (json.dumps({**_doc(corpus), "metrics": {"x": float("nan")}}).encode(), "not valid JSON"),
        (zstandard.ZstdCompressor().compress(b"\xff\xfe"), "not valid JSON"),  # was UnicodeDecodeError
    ]:
        with pytest.raises(FormatError, match=what):
            Manifest.from_bytes(data)


def test_skeleton_resolves_only_allowed_names() -> None:
    """``{"$dtype": name}`` was ``getattr(torch, name)``: any attribute of torch (a
    function such as torch.load) came back from a repository."""
    assert unflatten({"$dtype": "bfloat16"}, []) is torch.bfloat16
    for node in [{"$dtype": "load"}, {"$dtype": "Tensor"}, {"$dtype": "__builtins__"}, {"$np": "O", "v": ""},
                 {"$np": "V8", "v": "AAAAAAAAAAA="}, {"$np": "i4,i4", "v": "AAAAAAAAAAA="}]:
        with pytest.raises(FormatError):
            unflatten(node, [])


@pytest.mark.parametrize(
    "node, what",
    [
        ({"$t": 1}, "tensor index 1"),  # was IndexError
        ({"$t": -1}, "tensor index -1"),  # was the last tensor
        ({"$t": 0, "np": "yes"}, "flags"),
        ({"$bytes": "!!!"}, "base64"),  # was binascii.Error
        ({"$np": "<f4", "v": "AAAAAAAA"}, "holds 6 bytes"),  # was a silent misread
        ({"$float": "1e5"}, "malformed"),
        ({"$size": [2**70]}, "malformed"),  # was OverflowError
        ({"$device": "nope:99"}, "bad device"),  # was RuntimeError
        ({"$dict": [[[1], 2]]}, "key"),  # was TypeError (unhashable)
        ({"$set": [[1]]}, "set"),
        ({"$t": 0, "$dict": []}, "unknown skeleton tag"),
        ({"$tuple": [], "bogus": 1}, "unexpected keys"),
        (float("inf"), "non-finite|no skeleton node"),
    ],
)
def test_malformed_skeleton_nodes_are_format_errors(node: object, what: str) -> None:
    with pytest.raises(FormatError, match=what):
        unflatten({"$dict": [["k", node]]}, [torch.zeros(2)])


def test_deep_skeletons_and_pruned_tensors() -> None:
    deep: object = 0
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(FormatError, match="nested deeper"):  # was RecursionError
        unflatten(deep, [])
    with pytest.raises(FormatError, match="tensor index 0"):  # a pruned tensor (None)
        unflatten({"$t": 0}, [None])
    with pytest.raises(PickleRequiredError, match="weights_only=False"):
        unflatten({"$dict": [["x", {"$pickle": "gASVAAAAAAAAAAA="}]]}, [])


def test_codec_refuses_operands_the_kernels_would_read_past() -> None:
    """A base, context or plane count that does not fit the tensor is refused before a
    Numba kernel indexes it (they do not check bounds: was a read past the array)."""
    bits = np.arange(4000, dtype=np.uint32)
    cfg = CodecConfig(op="sub", lane=4, group_from=8, chunk_elems=4000)
    base = bits[::-1].copy()
    from modelhub_torch.pas.codec import encode_tensor

    chunks = list(encode_tensor(bits, base, cfg))
    out = np.empty_like(bits)
    for bad_base in (base[:10], base.astype(np.uint64), base[:0]):
        with pytest.raises(FormatError, match="base tensor holds"):
            decode_tensor(chunks, out, bad_base, cfg, "t")
    with pytest.raises(FormatError, match="5 planes for 4-byte"):
        decode_tensor([(4000, [*chunks[0][1], chunks[0][1][0]])], out, base, cfg, "t")
    with pytest.raises(FormatError, match="context tensor holds"):
        decode_tensor(chunks, out, base, cfg, "t", context=base[:5])
    with pytest.raises(FormatError, match="exp_bits"):
        CodecConfig(exp_bits=8).check_width(1, "t")
    with pytest.raises(ValueError, match="do not fit"):  # the kernel's own last line of defence
        decode_planes(np.zeros((4, 10), np.uint8), np.zeros(3, np.uint32), 2, 4, 8, np.empty(10, np.uint32))


def test_forged_frames_are_corrupt_before_anything_is_allocated() -> None:
    """A zstd frame whose header declares 1 TiB (zstandard would allocate it, whatever
    max_output_size says) and context-rANS frames with a table length past the end."""
    forged = ft.forge_content_size(bytes(100), 1 << 40)
    assert zstandard.frame_content_size(forged) == 1 << 40
    with pytest.raises(CorruptObjectError, match="declares 1099511627776 bytes, expected 100"):
        entropy.decode_plane("zstd", forged, 100, "p")
    ctx = np.zeros(100, np.uint8)
    for payload in (b"", b"\x01", (1 << 31).to_bytes(4, "little") + b"abc"):
        with pytest.raises(CorruptObjectError, match="context rANS"):
            entropy.decode_plane("rans_ctx", payload, 100, "p", ctx)
    stream = np.zeros(64, np.uint8)
    freqs = np.zeros((rans_ctx.K, 256), np.int64)
    freqs[:, 0] = 4096
    assert rans_ctx.rans_ctx_decode(stream, np.full(8, 200, np.uint8), freqs, np.empty(8, np.uint8)) == -1


def test_object_names_never_leave_the_objects_folder(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    store = ObjectStore(Location(tmp_path / "repo"))
    for name in ("../../secret", "../" * 10 + "etc/passwd", "A" * 64, "a" * 63, "", "a" * 62 + "/x"):
        with pytest.raises(FormatError, match="not an object id"):
            store.get(name)
        with pytest.raises(FormatError, match="not an object id"):
            store.get_ranges(name, [(0, 1)])
    oid = store.put(b"hello")
    (tmp_path / "repo" / ObjectStore.rel(oid)).write_bytes(b"hellp")
    with pytest.raises(CorruptObjectError, match="no longer hash"):
        store.get(oid)
    with pytest.raises(CorruptObjectError, match="truncated"):  # a range far past the end
        store.get_ranges(oid, [(1 << 40, 1 << 30)])


def test_switch_journal_must_map_version_ids_to_object_ids(tmp_path: Path) -> None:
    loc = Location(tmp_path)
    good = {"what": "archive", "manifests": {"a" * 32: "b" * 64}}
    (tmp_path / SWITCH_FILE).write_text(json.dumps(good))
    assert read_switch(loc) == {"a" * 32: "b" * 64}
    for doc in [
        {"what": "archive", "manifests": {"../../x": "b" * 64}},  # was accepted
        {"what": "archive", "manifests": {"a" * 32: "../objects"}},
        {"what": "archive", "manifests": {"a" * 32: 5}},  # was str(5)
        {"what": "archive", "manifests": []},
        {"what": "prune", "manifests": {}},
        ["not", "a", "journal"],
    ]:
        (tmp_path / SWITCH_FILE).write_text(json.dumps(doc))
        with pytest.raises(FormatError, match=r"switch\.json .* delete it if no archive was running"):
            read_switch(loc)
    (tmp_path / SWITCH_FILE).write_bytes(b"\xff" * 10)  # was UnicodeDecodeError
    with pytest.raises(FormatError, match="unreadable"):
        read_switch(loc)


def test_a_link_to_a_shorter_base_is_refused_not_read_past(corpus: ft.Corpus) -> None:
    """A delta whose base link names a smaller tensor of the same dtype: the kernels
    would read past the base (was: a read out of bounds, garbage or a crash)."""
    doc = _doc(corpus, "m@v1")
    rec = next(t for t in doc["tensors"] if t["data"].get("base"))
    small = next(j for j, t in enumerate(_doc(corpus, "m@v4")["tensors"])
                 if t.get("dtype") == rec["dtype"] and t.get("nbytes", 0) < rec["nbytes"] and t["data"]["kind"] == "planes")
    rec["data"]["base"] = {"version": corpus.ids["m@v4"], "index": small}
    root = ft.fresh_repo(corpus)
    oid = ft.put_object(root, ft.json_bytes(doc, compressed=True))
    (root / "refs" / "versions" / corpus.ids["m@v1"]).write_text(oid + "\n")
    with pytest.raises(FormatError, match="base tensor holds"):
        Repository(root).load("m@v1")
    assert ft.same_object(Repository(root).load("m@v4"), corpus.committed["m@v4"])



def test_a_same_link_never_returns_another_tensors_bits(corpus: ft.Corpus) -> None:
    """A ``same`` record (digest D) linking to a tensor decoded earlier in the load (digest
    D'): the reader's cache answered before the digests were compared, so the load
    returned the other tensor's bits under this record (was: a wrong tensor, or a
    RuntimeError where the sizes differed)."""
    doc = _doc(corpus)
    first, second = [t for t in doc["tensors"] if t["data"]["kind"] == "planes"][:2]
    i = doc["tensors"].index(first)
    second.update(dtype=first["dtype"], shape=first["shape"], nbytes=first["nbytes"])
    second["data"] = {"kind": "same", "version": doc["id"], "index": i}
    root = ft.fresh_repo(corpus)
    oid = ft.put_object(root, ft.json_bytes(doc, compressed=True))
    (root / "refs" / "versions" / corpus.ids["m@v4"]).write_text(oid + "\n")
    with pytest.raises(CorruptObjectError, match="links to data with another digest"):
        Repository(root).load("m@v4")
