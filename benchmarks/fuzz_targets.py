"""Fuzz targets: every decoder of repository bytes fed random and mutated input.

Shared by ``tests/test_fuzz.py`` (hypothesis draws the mutations, a few hundred cases)
and ``benchmarks/fuzz.py`` (a seeded RNG draws them, 100,000+ cases). A repository is
untrusted input, so each target holds one decoder to the same contract: it either
raises ``ModelHubError`` (the target returns ``REJECTED``) or returns data that is
bit-identical to what was committed (``EXACT``). Anything else — another exception
type, a tensor whose bits were never committed — propagates out of the target
(``AssertionError`` for wrong data), and the callers count or fail on it.

Mutations come from a :class:`Source` (``integer``/``raw`` draws), so hypothesis can
shrink a failing case and the benchmark can replay one from its seed.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3
import numpy as np
import torch
import zstandard

from modelhub_torch import Repository
from modelhub_torch.errors import CorruptObjectError, ModelHubError
from modelhub_torch.kernels import rans
from modelhub_torch.manifest import MAX_MANIFEST_BYTES, Manifest
from modelhub_torch.pas import entropy
from modelhub_torch.pas.codec import CodecConfig, ExponentContext, decode_tensor, encode_tensor
from modelhub_torch.reader import digest_bits
from modelhub_torch.skeleton import flatten, unflatten
from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import MappedObjects, ObjectStore
from modelhub_torch.store.switch import SWITCH_FILE, read_switch
from modelhub_torch.validate import is_object_id, is_version_id

REJECTED = "rejected"
EXACT = "exact"


class Source(Protocol):
    """Where a target's choices come from (hypothesis draws or a seeded RNG)."""

    def integer(self, lo: int, hi: int) -> int: ...

    def raw(self, n: int) -> bytes: ...


class RandomSource:
    """A :class:`Source` over ``random.Random`` (the benchmark's)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def raw(self, n: int) -> bytes:
        return self.rng.randbytes(n)


def pick(src: Source, seq: list[Any] | tuple[Any, ...]) -> Any:
    return seq[src.integer(0, len(seq) - 1)]


# ------------------------------------------------------------------ mutations

NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 2, 7, 255, 4096, 2**31, 2**32 + 5, 2**53 + 1, 2**63, -(2**63) - 1, 10**30,
    0.5, -0.0, 1e308, "", "x", "nan", "none", "sub", "rans8", "rans_ctx", "float32", "object", "O", "V8",
    "../../../etc/passwd", "objects/../x", "0" * 64, "F" * 64, "f" * 32, "0" * 31, "m", "latest",
    "torch", "Tensor", "load", "os.system", "AAAA", "!!!", [], {}, [0], [-1], [[0, 1, "raw"]],
    {"$t": 0}, {"$t": -1}, {"$t": 10**6}, {"$dtype": "Tensor"}, {"$dtype": "load"}, {"$np": "O", "v": ""},
    {"$np": "V8", "v": "AAAAAAAAAAA="}, {"$np": "<f4", "v": "!!"}, {"$pickle": "gASVAAAAAAAAAAA="},
    {"$set": [[1]]}, {"$dict": [[[1], 2]]}, {"$dict": [[{"$bytes": "", "mutable": True}, 1]]},
    {"$device": "nope:99"}, {"$float": "1e5"}, {"$bytes": "####"}, {"$size": [2**70]},
    {"version": "f" * 32, "index": 0}, {"version": "0" * 32, "index": -1},
    {"kind": "planes"}, {"kind": "dropped"}, {"n": 10**12, "frames": []},
]


def mutate_bytes(src: Source, data: bytes, pool: list[bytes]) -> bytes:
    """One of: bit flips, truncation, extension, a splice from ``pool`` or random
    bytes, a range deleted or repeated, or wholly random bytes."""
    op = src.integer(0, 7)
    n = len(data)
    if op == 0 and n:  # a few bit flips
        out = bytearray(data)
        for _ in range(src.integer(1, 8)):
            i = src.integer(0, n - 1)
            out[i] ^= 1 << src.integer(0, 7)
        return bytes(out)
    if op == 1:
        return data[: src.integer(0, n)]
    if op == 2:
        return data + src.raw(src.integer(1, 64))
    if op in (3, 4) and n:  # splice: a range replaced by a piece of another sample or noise
        i = src.integer(0, n - 1)
        j = src.integer(i, min(n, i + 256))
        if op == 3 and pool:
            other = pick(src, pool)
            k = src.integer(0, len(other))
            piece = other[k : k + src.integer(0, 256)]
        else:
            piece = src.raw(src.integer(0, 32))
        return data[:i] + piece + data[j:]
    if op == 5 and n:  # a range deleted or doubled
        i = src.integer(0, n - 1)
        j = src.integer(i, n)
        return data[:i] + data[j:] if src.integer(0, 1) else data[:j] + data[i:j] + data[j:]
    if op == 6 and n:  # a byte set to an extreme
        out = bytearray(data)
        out[src.integer(0, n - 1)] = pick(src, (0, 0xFF, 0x7F, 0x80))
        return bytes(out)
    return src.raw(src.integer(0, max(8, 2 * n)))


def _slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) of a JSON document, iteratively."""
    stack = [doc]
    while stack:
        node = stack.pop()
        keys = range(len(node)) if isinstance(node, list) else list(node) if isinstance(node, dict) else ()
        for k in keys:
            yield node, k
            if isinstance(node[k], (list, dict)):
                stack.append(node[k])


def _tweak(src: Source, v: Any) -> Any:
    """A nearby value of the same type (the edits a careless or hostile writer makes)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + pick(src, (-1, 1, -v - 1, v + 1, 1 << 31, 1 << 62, -(1 << 40)))
    if isinstance(v, float):
        return pick(src, (-v, v * 2, math.nan, math.inf, 0.0, v + 1))
    if isinstance(v, str):
        return pick(src, (v[:-1], v.upper(), v + "0", "", v[::-1], v * 2, v + "\n", "/" + v))
    if isinstance(v, list):
        return pick(src, ([], v * 2, v[:-1], v[::-1], [v]))
    if isinstance(v, dict):
        if v and src.integer(0, 1):  # one key dropped
            drop = pick(src, list(v))
            return {k: x for k, x in v.items() if k != drop}
        return [v]
    return 0


def mutate_json(src: Source, doc: Any, pool: list[Any]) -> Any:
    """A copy of ``doc`` with 1-3 edits: a value replaced (nasty constant, a value from
    ``pool``, a nearby value), a key or item removed, an item duplicated or an unknown
    key added, two values of one container swapped."""
    doc = copy.deepcopy(doc)
    for _ in range(src.integer(1, 3)):
        slots = list(_slots(doc))
        if not slots:
            return pick(src, NASTY)
        container, key = pick(src, slots)
        op = src.integer(0, 5)
        if op == 0:
            container[key] = copy.deepcopy(pick(src, NASTY))
        elif op == 1 and pool:
            container[key] = copy.deepcopy(pick(src, pool))
        elif op == 2:
            container[key] = _tweak(src, container[key])
        elif op == 3:
            del container[key]
        elif op == 4:
            if isinstance(container, list):
                container.insert(key, copy.deepcopy(container[key]))
            else:
                container[pick(src, ("bogus", "$t", "$dict", "np", "cls", "cold_from", "lossy"))] = container[key]
        else:
            keys = list(range(len(container))) if isinstance(container, list) else list(container)
            other = pick(src, keys)
            container[key], container[other] = container[other], container[key]
    return doc


def json_bytes(doc: Any, compressed: bool) -> bytes:
    """Serialised as a manifest is (NaN allowed through: the parser must refuse it)."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
    return zstandard.ZstdCompressor(level=1).compress(text) if compressed else text


def _scalars(doc: Any) -> list[Any]:
    return [c[k] for c, k in _slots(doc) if not isinstance(c[k], (list, dict))]


# ------------------------------------------------------------------- corpus


@dataclass
class FrameCase:
    """One coded tensor at the codec level: its chunks and what they decode to."""

    chunks: list[tuple[int, list[tuple[str, bytes]]]]
    cfg: CodecConfig
    base: np.ndarray | None
    context: np.ndarray | ExponentContext | None
    bits: np.ndarray
    digest: str


@dataclass
class Corpus:
    """A small repository (whole, delta, same, context-coded records; a fine-tune and
    an alias) plus codec-level cases of every frame coder, built once per run."""

    root: Path  # pristine repository, no index: every copy re-reads every manifest
    scratch: Path  # where targets build their throw-away copies
    committed: dict[str, Any]  # ref -> the object committed there
    ids: dict[str, str]  # ref -> version id
    manifests: dict[str, bytes]  # ref -> stored manifest bytes
    docs: dict[str, Any]  # ref -> manifest JSON
    digests: set[str]  # every committed tensor's BLAKE3
    frames: dict[str, list[FrameCase]]  # coder -> cases holding frames of it
    skeletons: list[tuple[Any, list[torch.Tensor], Any]]  # (skeleton, tensors, object)
    objects: list[str]  # every object id
    refs: list[str]  # ref files (relative paths)
    switch: bytes  # a valid archive journal
    json_pool: list[Any] = field(default_factory=list)
    byte_pool: list[bytes] = field(default_factory=list)
    bombs: list[bytes] = field(default_factory=list)
    baseline: dict[str, tuple[int, int]] = field(default_factory=dict)  # the working copy's files


def _trajectory(n: int, versions: int, seed: int = 0) -> list[np.ndarray]:
    """Adam-like weights: each element has its own step size, stable over versions (so
    neighbouring deltas predict each other and context-coded frames get chosen)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n) * 0.05).astype(np.float32)
    step = np.exp(rng.uniform(np.log(1e-6), np.log(1e-3), n)).astype(np.float32)
    out = [w]
    for _ in range(versions - 1):
        out.append((out[-1] + step * rng.choice([-1.0, 1.0], n).astype(np.float32)).astype(np.float32))
    return out


def checkpoint(k: int, w: np.ndarray) -> dict[str, Any]:
    """Version ``k`` of a small training checkpoint: every skeleton tag, several dtypes,
    a tied tensor, a numpy array, tensors that change and tensors that do not."""
    g = torch.Generator().manual_seed(k)
    weight = torch.from_numpy(w.copy()).reshape(128, 128)
    sd = collections.OrderedDict(
        [
            ("fc.weight", weight),
            ("fc.bias", (torch.randn(64, generator=g) * 0.1).half()),
            ("emb", torch.randn(32, 8, generator=g).bfloat16()),
            ("mask", torch.arange(50) % 3 == 0),
            ("steps", torch.tensor(1000 + k)),
            ("cplx", torch.arange(16.0).view(torch.complex64)),
            ("empty", torch.empty(0, 3)),
        ]
    )
    return {
        "state_dict": sd,
        "tied": weight,
        "epoch": k,
        "meta": (k, float("nan"), "x", -0.0),
        "arr": np.arange(5, dtype=np.int16) + k,
        "scalar": np.float32(0.25 * k),
        "size": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "bytes": b"\x00\xff" * k,
        "buf": bytearray(b"ab"),
        "set": {1, 2, "a"},
        "frozen": frozenset({3}),
        (1, "k"): "tuple key",
        "inf": float("-inf"),
        "param": torch.nn.Parameter(torch.ones(3), requires_grad=False),
    }


def build_corpus(work: Path) -> Corpus:
    """Commit the histories, copy out what each target mutates, and code the frame cases."""
    root = work / "corpus"
    # one delta chain, coded at commit, then repacked: deltas with and without context
    repo = Repository.init(root, max_load_factor=None, repack="commit")
    traj = _trajectory(128 * 128, 5)
    committed: dict[str, Any] = {}
    for k in range(4):
        committed[f"m@v{k + 1}"] = obj = checkpoint(k, traj[k])
        repo.commit(obj, "m", metrics={"loss": 1.0 / (k + 1)}, info={"epoch": k})
    committed["ft@v1"] = obj = checkpoint(9, traj[4])
    repo.commit(obj, "ft", parent="m@v2")
    repo.repack()
    repo.tag("m@v2", "best")
    ids = {ref: repo.resolve(ref) for ref in committed}
    manifests = {ref: repo.objects.get(repo.refs.manifest_of(vid)) for ref, vid in ids.items()}
    docs = {ref: json.loads(zstandard.ZstdDecompressor().decompress(b)) for ref, b in manifests.items()}
    digests = {t["digest"] for d in docs.values() for t in d["tensors"] if "digest" in t}
    shutil.rmtree(root / "index", ignore_errors=True)
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    objects = sorted(ObjectStore(Location(root)))
    refs = sorted(str(p.relative_to(root)) for p in (root / "refs").rglob("*") if p.is_file())
    skeletons = []
    for obj in committed.values():
        flat = flatten(obj)
        skeletons.append((json.loads(json.dumps(flat.skeleton)), flat.tensors, obj))
    switch = json.dumps({"what": "archive", "manifests": {ids["m@v1"]: objects[0], ids["m@v2"]: objects[1]}}).encode()
    corpus = Corpus(root, scratch, committed, ids, manifests, docs, digests, frame_cases(), skeletons,
                    objects, refs, switch)
    corpus.json_pool = [json.loads(v) for v in sorted({json.dumps(v) for d in docs.values() for v in _scalars(d)})]
    corpus.byte_pool = [*manifests.values(), *((root / r).read_bytes() for r in refs)]
    corpus.bombs = _bombs()
    _check_corpus(corpus)
    return corpus


def _check_corpus(c: Corpus) -> None:
    """The histories must exercise what the fuzzing is for: every record kind and link."""
    recs = [t["data"] for d in c.docs.values() for t in d["tensors"]]
    coders = {f[2] for r in recs if r["kind"] == "planes" for ch in r["chunks"] for f in ch["frames"]}
    have = {
        "same": any(r["kind"] == "same" for r in recs),
        "delta": any(r.get("base") for r in recs),
        "context": any(r.get("context") for r in recs),
        # (exponent contexts are no longer written: the mutations add them, and the
        # golden fixture features-v1 holds valid ones)
        "rans_ctx": "rans_ctx" in coders,
        "rans8": "rans8" in coders,
    }
    missing = [k for k, ok in have.items() if not ok]
    if missing or set(c.frames) != set(entropy.CODERS):
        raise RuntimeError(f"fuzz corpus lacks {missing} / coders {set(entropy.CODERS) - set(c.frames)}")


def _bombs() -> list[bytes]:
    """zstd frames that inflate past any manifest (one declaring its size, one not) and
    one whose header lies (declares 1 TiB for two bytes)."""
    zeros = bytes(MAX_MANIFEST_BYTES + (1 << 20))
    declared = zstandard.ZstdCompressor(level=1).compress(zeros)
    blind = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(zeros)
    return [declared, blind, forge_content_size(b"{}", 1 << 40)]


def forge_content_size(payload: bytes, size: int) -> bytes:
    """A zstd frame of ``payload`` whose header declares ``size`` bytes (zstandard
    allocates what a header declares, whatever ``max_output_size`` says)."""
    frame = zstandard.ZstdCompressor(level=1).compress(payload)
    if frame[4] != 0x20:  # single segment with a one-byte size: rewritten as eight bytes
        raise ValueError("payload too large to forge a header for")
    return frame[:4] + bytes([0xE0]) + size.to_bytes(8, "little") + frame[6:]


def _case(bits: np.ndarray, base: np.ndarray | None, cfg: CodecConfig, context: Any = None) -> FrameCase:
    chunks = [(n, [(c, bytes(p)) for c, p in frames]) for n, frames in encode_tensor(bits, base, cfg, context=context)]
    return FrameCase(chunks, cfg, base, context, bits, digest_bits(bits))


def _as_rans0(case: FrameCase) -> FrameCase:
    """The same tensor with its rans8 frames re-coded as four-state rans0 (the frames
    versions before rans8 wrote)."""
    chunks = []
    for n, frames in case.chunks:
        out = []
        for c, p in frames:
            if c == entropy.RANS8:
                plane = np.empty(n, np.uint8)
                rans.rans_decode8(np.frombuffer(p, np.uint8), plane)
                buf = np.empty(rans.HEADER_BYTES + 2 * n + 64, np.uint8)
                used = rans.rans_encode(plane, rans.normalize_freqs(rans.histogram(plane)), buf, rans.STATES)
                c, p = entropy.RANS, buf[:used].tobytes()
            out.append((c, p))
        chunks.append((n, out))
    return FrameCase(chunks, case.cfg, case.base, case.context, case.bits, case.digest)


def frame_cases() -> dict[str, list[FrameCase]]:
    """Codec-level tensors whose frames use each coder: noise (raw), runs (zstd),
    whole weights (rans8, and rans0 re-coded), deltas with a neighbour or exponent
    context (rans_ctx), in two chunks so chunk bookkeeping is exercised too."""
    rng = np.random.default_rng(1)
    whole = CodecConfig(op="none", group_from=8, chunk_elems=12_000, exp_bits=8)
    delta = CodecConfig(op="sub", lane=4, group_from=8, chunk_elems=12_000)
    g, p, nb = (x.view(np.uint32) for x in _trajectory(24_000, 3, seed=2))
    cases = [
        _case(rng.integers(0, 2**32, 3000, dtype=np.uint32), None, CodecConfig(op="none", chunk_elems=2000)),
        _case((np.arange(9000) // 700).astype(np.uint32), None, CodecConfig(op="xor", chunk_elems=5000)),
        _case(nb, None, whole),
        _case(g, p, delta, nb),
        _case(g, p, delta, ExponentContext.for_base(p, "float32")),
        _case(rng.integers(0, 2**16, 5000, dtype=np.uint16), rng.integers(0, 2**16, 5000, dtype=np.uint16),
              CodecConfig(op="sub", lane=1, group_from=0, chunk_elems=3000)),
    ]
    cases.append(_as_rans0(cases[2]))
    out: dict[str, list[FrameCase]] = {}
    for case in cases:
        for coder in {c for _, frames in case.chunks for c, _ in frames}:
            out.setdefault(coder, []).append(case)
    return out


# ------------------------------------------------------------------- oracles


def leaves(obj: Any) -> Iterator[Any]:
    """Tensors and numpy arrays anywhere in a loaded object."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, (torch.Tensor, np.ndarray)):
            yield x
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)


def _raw(x: Any) -> bytes:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).tobytes()
    t = x.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def same_object(a: Any, b: Any) -> bool:
    """Equal bit for bit (types, key order, tensor dtypes/shapes/bytes, float bits)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and _raw(a) == _raw(b)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same_object(ka, kb) and same_object(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_object(x, y) for x, y in zip(a, b))
    return bool(a == b)


def check_committed_bits(c: Corpus, obj: Any, what: str) -> None:
    """Every tensor a load returned holds bits that were committed (by their digest):
    a decoder may refuse, never invent data."""
    for leaf in leaves(obj):
        if blake3.blake3(_raw(leaf)).hexdigest() not in c.digests:
            raise AssertionError(f"{what}: a loaded {type(leaf).__name__} holds bits that were never committed")


def expect_exact(got: Any, want: Any, what: str) -> str:
    if not same_object(got, want):
        raise AssertionError(f"{what}: accepted, but not bit-identical to what was committed")
    return EXACT


def rejected(fn: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, None) when ``fn`` raises ModelHubError, else (False, its result)."""
    try:
        return False, fn()
    except ModelHubError:
        return True, None


# ------------------------------------------------------------------- targets


def target_objects(c: Corpus, src: Source) -> str:
    """An object file with mutated bytes (or a mutated name): ``get`` must refuse what
    no longer hashes to its name; ``get_ranges`` returns exactly the file's bytes."""
    store_dir = c.scratch / "objects-store"
    shutil.rmtree(store_dir, ignore_errors=True)
    oid = pick(src, c.objects)
    original = (c.root / ObjectStore.rel(oid)).read_bytes()
    data = mutate_bytes(src, original, c.byte_pool) if src.integer(0, 5) else original
    path = store_dir / ObjectStore.rel(oid)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    store = ObjectStore(Location(store_dir))
    name = oid if src.integer(0, 4) else pick(src, (oid.upper(), oid[:-1], "../" + oid[3:], oid + "0", "x" * 64, ""))
    if src.integer(0, 1):
        no, got = rejected(lambda: store.get(name))
        if no:
            return REJECTED
        return expect_exact(got, original, f"object {oid}")
    ranges = [(src.integer(0, len(data) + 8), src.integer(0, 64)) for _ in range(src.integer(1, 3))]
    if src.integer(0, 7) == 0:
        ranges.append((src.integer(0, 1 << 62), src.integer(0, 1 << 40)))  # far past the end
    mapped = MappedObjects() if src.integer(0, 1) else None
    no, got = rejected(lambda: store.get_ranges(name, ranges, mapped))
    if no:
        return REJECTED
    return expect_exact([bytes(p) for p in got], [data[o : o + n] for o, n in ranges], f"ranges of {oid}")


def _mutate_frames(src: Source, case: FrameCase, coder: str) -> tuple[list, CodecConfig, Any, Any]:
    """1-3 edits of a frame case: a payload's bytes, a frame's coder, a chunk's size,
    the codec, a base or context that no longer fits, planes dropped or repeated."""
    chunks = [(n, list(frames)) for n, frames in case.chunks]
    cfg, base, context = case.cfg, case.base, case.context
    for _ in range(src.integer(1, 3)):
        ci = src.integer(0, len(chunks) - 1)
        n, frames = chunks[ci]
        targets = [i for i, (k, _) in enumerate(frames) if k == coder] or list(range(len(frames)))
        fi = pick(src, targets) if frames else 0
        op = src.integer(0, 9)
        if op <= 4 and frames:  # most edits hit the payload of a frame of this coder
            k, payload = frames[fi]
            frames[fi] = (k, mutate_bytes(src, payload, [p for _, fr in case.chunks for _, p in fr]))
        elif op == 5 and frames:
            frames[fi] = (pick(src, (*sorted(entropy.CODERS), "lz4", "")), frames[fi][1])
        elif op == 6:
            chunks[ci] = (max(0, n + pick(src, (-1, 1, -n, 7, 1 << 20))), frames)
        elif op == 7:
            doc = mutate_json(src, cfg.to_json(), [])
            no, new = rejected(lambda doc=doc: CodecConfig.from_json(doc))
            cfg = cfg if no else new
        elif op == 8:
            arr = case.bits if base is None else base
            bad = pick(src, (arr[:-1], arr[: len(arr) // 2], arr.astype(np.uint64), arr[:0]))
            if src.integer(0, 1) or base is None:
                base = bad
            else:
                context = bad
        elif frames:
            frames[:] = frames[:-1] if src.integer(0, 1) else [*frames, frames[0]]
    return chunks, cfg, base, context


def target_frames(c: Corpus, src: Source, coder: str) -> str:
    """Mutated frames of one coder decoded as the reader does (codec, then the digest
    check): refused, or the committed bits."""
    case = pick(src, c.frames[coder])
    chunks, cfg, base, context = _mutate_frames(src, case, coder)
    out = np.empty_like(case.bits)

    def decode() -> np.ndarray:
        decode_tensor(chunks, out, base, cfg, f"fuzz {coder}", context=context)
        if digest_bits(out) != case.digest:  # what the reader checks after every decode
            raise CorruptObjectError("digest mismatch")
        return out

    no, got = rejected(decode)
    if no:
        return REJECTED
    return expect_exact(got, case.bits, f"{coder} frames")


def fresh_repo(c: Corpus) -> Path:
    """The working copy of the corpus repository, put back as it was: files a target
    or a Repository wrote or changed are restored or removed, and the index is dropped
    (copying the tree anew each time costs ~100 ms in folder creation alone)."""
    dst = c.scratch / "repo"
    if not c.baseline:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(c.root, dst)
        c.baseline.update(_file_stats(dst))
        return dst
    shutil.rmtree(dst / "index", ignore_errors=True)
    now = _file_stats(dst)
    for rel, stat in now.items():
        if rel not in c.baseline:
            os.unlink(dst / rel)
        elif stat != c.baseline[rel]:
            shutil.copy2(c.root / rel, dst / rel)
    for rel in c.baseline.keys() - now.keys():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(c.root / rel, dst / rel)
    return dst


def _file_stats(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            full = os.path.join(dirpath, f)
            st = os.stat(full)
            out[os.path.relpath(full, root)] = (st.st_size, st.st_mtime_ns)
    return out


def put_object(root: Path, data: bytes) -> str:
    """Store ``data`` as an object of the repository at ``root`` (named by its hash)."""
    oid = blake3.blake3(data).hexdigest()
    path = root / ObjectStore.rel(oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return oid


def manifest_bytes(c: Corpus, src: Source, ref: str) -> tuple[bytes, bool]:
    """Mutated bytes of ``ref``'s manifest, and whether its JSON is unchanged."""
    op = src.integer(0, 9)
    if op <= 6:
        doc = mutate_json(src, c.docs[ref], c.json_pool) if op <= 4 else plausible_edit(src, c, c.docs[ref])
        same = json.dumps(doc) == json.dumps(c.docs[ref])
        return json_bytes(doc, compressed=op != 4), same
    if op == 7:
        return mutate_bytes(src, c.manifests[ref], c.byte_pool), False
    if op == 8:
        text = json_bytes(c.docs[ref], compressed=False)
        return mutate_bytes(src, text, c.byte_pool), False
    return pick(src, (*c.bombs, b"[" * 100_000, b'{"format": 1, "id": ' + b"9" * 5000 + b"}")), False


def plausible_edit(src: Source, c: Corpus, doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a manifest with one edit that keeps every value well-formed (so it gets
    past the structural checks and reaches the reader and the kernels): another link,
    coder, codec setting, frame range, pack, dtype of the same width or digest."""
    doc = copy.deepcopy(doc)
    recs = [t for t in doc["tensors"] if t["data"]["kind"] == "planes"]
    rec = pick(src, recs)
    data = rec["data"]
    chunk = pick(src, data["chunks"])
    p = src.integer(0, len(chunk["frames"]) - 1)
    link = {"version": pick(src, list(c.ids.values())), "index": src.integer(0, 12)}
    op = src.integer(0, 9)
    if op == 0:
        data["base"] = link
    elif op == 1:
        data["base"] = data["base"] or link
        data["context"] = {"version": pick(src, list(c.ids.values())), "index": src.integer(0, 12)}
    elif op == 2:
        data["base"] = data["base"] or link
        data["exponent_context"] = {"from": src.integer(-20, 300), "bits": src.integer(1, 11)}
    elif op == 3:
        key, values = pick(src, (("op", ("none", "xor", "sub")), ("lane", (1, 2, 4, 8)),
                                 ("group_from", tuple(range(9))), ("exp_bits", (0, 4, 5, 8, 11))))
        data["codec"][key] = pick(src, values)
    elif op == 4:
        chunk["frames"][p][2] = pick(src, sorted(entropy.CODERS))
    elif op == 5:
        chunk["frames"][p][0] = src.integer(0, 4096)
        chunk["frames"][p][1] = src.integer(0, min(2 * chunk["n"], 4096))
    elif op == 6:
        doc["packs"][p] = pick(src, c.objects)
    elif op == 7:
        same_width = {"float32": "int32", "int32": "float32", "float16": "bfloat16", "bfloat16": "float16"}
        rec["dtype"] = same_width.get(rec["dtype"], rec["dtype"])
    elif op == 8:
        rec["digest"] = pick(src, sorted(c.digests))
    else:
        pick(src, doc["tensors"])["data"] = {"kind": "same", **link}
    return doc


def target_manifest(c: Corpus, src: Source) -> str:
    """A mutated manifest parsed alone, then (when it parses, and for some that do not)
    made a version's current manifest and loaded through a Repository, together with
    another version whose records may link into it."""
    ref = pick(src, list(c.committed))
    data, unchanged = manifest_bytes(c, src, ref)
    no, _ = rejected(lambda: Manifest.from_bytes(data, where="fuzzed manifest"))
    if no and src.integer(0, 3):
        return REJECTED
    root = fresh_repo(c)
    oid = put_object(root, data)
    (root / "refs" / "versions" / c.ids[ref]).write_text(oid + "\n")
    other = pick(src, list(c.committed))
    by_weights = src.integer(0, 3) == 0

    def load() -> tuple[Any, Any]:
        repo = Repository(root)
        get = repo.load_state_dict if by_weights else repo.load
        return get(ref), get(other)

    no, got = rejected(load)
    if no:
        return REJECTED
    mine, theirs = got
    want = (lambda r: c.committed[r]["state_dict"]) if by_weights else (lambda r: c.committed[r])
    if other != ref:  # untouched: every tensor it links into the mutated one is verified
        expect_exact(theirs, want(other), f"{other} next to a mutated {ref}")
    if unchanged:
        return expect_exact(mine, want(ref), f"unchanged manifest of {ref}")
    check_committed_bits(c, mine, f"mutated manifest of {ref}")
    return EXACT


def target_skeleton(c: Corpus, src: Source) -> str:
    """A mutated skeleton rebuilt with ``weights_only=True``: refused, or an object
    whose tensors are the decoded ones (the original object when nothing changed)."""
    skeleton, tensors, obj = pick(src, c.skeletons)
    tensors = list(tensors)
    if src.integer(0, 5) == 0 and tensors:  # a pruned tensor the skeleton still names
        tensors[src.integer(0, len(tensors) - 1)] = None
    nested = src.integer(0, 7) == 0
    mutated = _nested(src) if nested else mutate_json(src, skeleton, NASTY)
    unchanged = not nested and json.dumps(mutated) == json.dumps(skeleton) and None not in tensors
    no, got = rejected(lambda: unflatten(mutated, tensors, weights_only=True))
    if no:
        return REJECTED
    if unchanged:
        return expect_exact(got, obj, "unchanged skeleton")
    ids = {id(t) for t in tensors}
    for leaf in leaves(got):
        if isinstance(leaf, torch.Tensor) and id(leaf) not in ids and not any(
            leaf.data_ptr() == t.data_ptr() for t in tensors if t is not None
        ):
            raise AssertionError("a rebuilt skeleton holds a tensor that was not decoded")
    return EXACT


def _nested(src: Source) -> Any:
    """A deeply nested skeleton (lists, tuples or dicts): must not exhaust the stack."""
    depth = pick(src, (50, 900, 1100, 5000, 50_000))
    node: Any = 0
    for _ in range(depth):
        node = pick(src, ([node], {"$tuple": [node]}, {"$dict": [["k", node]]}))
    return node


def target_switch(c: Corpus, src: Source) -> str:
    """A mutated archive journal: refused, or a mapping of version ids to object ids
    (the original mapping when nothing changed)."""
    op = src.integer(0, 2)
    if op == 0:
        data = mutate_bytes(src, c.switch, c.byte_pool)
    elif op == 1:
        data = json.dumps(mutate_json(src, json.loads(c.switch), c.json_pool), allow_nan=True).encode()
    else:
        data = c.switch
    loc = Location(c.scratch)
    (c.scratch / SWITCH_FILE).write_bytes(data)
    no, got = rejected(lambda: read_switch(loc))
    if no:
        return REJECTED
    if data == c.switch:
        return expect_exact(got, json.loads(c.switch)["manifests"], "unchanged journal")
    if not all(is_version_id(k) and is_object_id(v) for k, v in got.items()):
        raise AssertionError(f"journal accepted with entries that are not ids: {list(got.items())[:2]}")
    return EXACT


def _load_any(c: Corpus, root: Path, src: Source, exact: bool) -> str:
    """Open the repository, list it, load one ref: refused, or bit-exact (``exact``:
    the committed object of that ref; else the object of some committed version)."""
    ref = pick(src, [*c.committed, "m@best", "m@latest"])
    want = {"m@best": "m@v2", "m@latest": "m@v4"}.get(ref, ref)

    def load() -> Any:
        repo = Repository(root)
        for v in repo.versions():
            if v.ref not in c.committed:
                raise AssertionError(f"listing shows {v.ref}, which was never committed")
        return repo.load(ref)

    no, got = rejected(load)
    if no:
        return REJECTED
    if exact:
        return expect_exact(got, c.committed[want], f"{ref} under a mutated file")
    if not any(same_object(got, obj) for obj in c.committed.values()):
        raise AssertionError(f"{ref} loaded as an object that was never committed")
    return EXACT


def target_refs(c: Corpus, src: Source) -> str:
    """A mutated ref file (versions, models, tags)."""
    root = fresh_repo(c)
    rel = pick(src, c.refs)
    path = root / rel
    path.write_bytes(mutate_bytes(src, path.read_bytes(), c.byte_pool))
    return _load_any(c, root, src, exact=False)


def target_config(c: Corpus, src: Source) -> str:
    """A mutated modelhub.json (settings never change what is stored: loads that work
    are exact)."""
    root = fresh_repo(c)
    path = root / "modelhub.json"
    raw = path.read_bytes()
    if src.integer(0, 1):
        data = json.dumps(mutate_json(src, json.loads(raw), NASTY), allow_nan=True).encode()
    else:
        data = mutate_bytes(src, raw, c.byte_pool)
    path.write_bytes(data)
    return _load_any(c, root, src, exact=True)


def _frames_target(coder: str) -> Callable[[Corpus, Source], str]:
    def run(c: Corpus, src: Source) -> str:
        return target_frames(c, src, coder)

    run.__name__ = f"target_frames_{coder}"
    return run


# decoder name -> (target, share of the benchmark's cases: cheap targets get more)
TARGETS: dict[str, tuple[Callable[[Corpus, Source], str], float]] = {
    "objects": (target_objects, 0.14),
    **{f"frames:{k}": (_frames_target(k), 0.08) for k in sorted(entropy.CODERS)},
    "manifest": (target_manifest, 0.08),
    "skeleton": (target_skeleton, 0.18),
    "switch": (target_switch, 0.14),
    "refs": (target_refs, 0.03),
    "config": (target_config, 0.03),
}

