"""One manifest per version: what it is (identity, metadata, skeleton, tensor list)
and where its bytes are (per-tensor records pointing into plane packs).

A version's identity never changes; ``archive`` and the commit of a child may replace
its manifest with one that stores the same tensors differently (see FORMAT.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import zstandard

from modelhub_torch.errors import FormatError, ModelHubError
from modelhub_torch.pas.codec import CodecConfig, ExponentContext
from modelhub_torch.pas.dtypes import ITEMSIZE
from modelhub_torch.pas.entropy import PLANE_CODERS
from modelhub_torch.pas.registry import NewerFormatError, is_id, newer
from modelhub_torch.skeleton_check import Leaf, check_skeleton
from modelhub_torch.store.refs import MODEL_NAME
from modelhub_torch.validate import check_object_id, check_version_id, is_object_id, is_version_id

FORMAT_VERSION = 1
# record kind of a tensor whose data was removed (trainer state pruned): it keeps its
# index so the records of other versions that point into this manifest stay valid
DROPPED = "dropped"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Manifest:
    id: str
    model: str
    number: int
    parent: str | None
    created_at: str
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    message: str
    skeleton: Any
    tensors: list[dict[str, Any]]
    packs: list[str | None] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # plane packs in the cold tier: frames of records with ``cold_from`` live here for
    # planes >= cold_from (archive --cold); empty for every manifest a commit writes
    cold_packs: list[str | None] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.model}@v{self.number}"

    @property
    def raw_bytes(self) -> int:
        return sum(int(t["nbytes"]) for t in self.live_tensors())

    @property
    def info(self) -> dict[str, Any]:
        """Free-form facts about the version (epoch, step, module class, versions)."""
        return self.extra.get("info", {})

    def copy_records(self) -> list[dict[str, Any]]:
        """Tensor records to edit into a replacement manifest: each record and its
        ``data`` are copied (edits replace values there), the rest is shared."""
        return [{**t, "data": dict(t["data"])} for t in self.tensors]

    def live_tensors(self) -> list[dict[str, Any]]:
        """Records that still hold data (not dropped)."""
        return [t for t in self.tensors if t["data"]["kind"] != DROPPED]

    def objects(self) -> set[str]:
        """The pack objects this manifest references (both tiers)."""
        return {oid for oid in (*self.packs, *self.cold_packs) if oid}

    @property
    def partial(self) -> bool:
        """Pulled with only its top byte planes (``pull --planes K``): the frames of its
        lower planes are named in ``cold_packs`` but held by the source, not here."""
        return bool(self.extra.get("partial"))

    def local_objects(self) -> set[str]:
        """The objects this repository must hold for this manifest."""
        return {oid for oid in self.packs if oid} if self.partial else self.objects()

    def cold_bytes(self) -> int:
        """Bytes of this manifest's frames that live in the cold tier."""
        total = 0
        for t in self.tensors:
            data = t["data"]
            k = data.get("cold_from")
            if data["kind"] == "planes" and k is not None:
                total += sum(int(f[1]) for c in data["chunks"] for f in c["frames"][k:])
        return total

    def plane_bytes(self) -> list[int]:
        """Bytes this manifest's own packs hold, per plane (both tiers)."""
        sizes = [0] * max(len(self.packs), len(self.cold_packs))
        for t in self.tensors:
            data = t["data"]
            if data["kind"] == "planes":
                for chunk in data["chunks"]:
                    for p, frame in enumerate(chunk["frames"]):
                        sizes[p] += int(frame[1])
        return sizes

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "id": self.id,
            "model": self.model,
            "number": self.number,
            "parent": self.parent,
            "created_at": self.created_at,
            "metrics": self.metrics,
            "hparams": self.hparams,
            "message": self.message,
            "skeleton": self.skeleton,
            "tensors": self.tensors,
            "packs": self.packs,
            "extra": self.extra,
        }
        if self.cold_packs:
            doc["cold_packs"] = self.cold_packs
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        # stored as one zstd frame: per-tensor records (digests, frame tables) are
        # repetitive JSON, 14 KiB -> ~3 KiB for a small CNN checkpoint
        return zstandard.ZstdCompressor(level=9).compress(text)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> Manifest:
        """Parse and check a stored manifest (:func:`validate_manifest`): every byte of a
        repository is untrusted, so anything but a well-formed manifest is a FormatError."""
        doc = _parse(data, where)
        validate_manifest(doc, where)
        return cls(**{k: doc[k] for k in _REQUIRED}, extra=doc.get("extra", {}), cold_packs=doc.get("cold_packs", []))


# ------------------------------------------------------------------ parsing

# a manifest's JSON is a few KiB per hundred tensors: this bounds what a zstd bomb (or a
# huge bare object) can make a reader allocate
MAX_MANIFEST_BYTES = 256 << 20


def _parse(data: bytes, where: str) -> Any:
    """Bytes -> JSON document: one zstd frame (or bare JSON), strict JSON (no NaN)."""
    if data[:4] == ZSTD_MAGIC:
        data = _decompress(data, where)
    elif len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{where} is {len(data)} bytes of JSON, more than any manifest ({MAX_MANIFEST_BYTES})")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise FormatError(f"{where} is nested too deeply to be a manifest") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise FormatError(f"{where} is not valid JSON: {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not strict JSON")


def _decompress(data: bytes, where: str) -> bytes:
    """The manifest's zstd frame, refused past MAX_MANIFEST_BYTES before it is inflated
    (the declared size is checked first; frames that declare none are read in steps)."""
    try:
        size = zstandard.frame_content_size(data)
        if size > MAX_MANIFEST_BYTES:
            raise FormatError(
                f"{where} would decompress to {size} bytes, more than any manifest "
                f"({MAX_MANIFEST_BYTES}); it is damaged or hostile — run 'modelhub verify'"
            )
        if size >= 0:
            return zstandard.ZstdDecompressor().decompress(data)
        out = bytearray()
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
        while chunk := reader.read(1 << 20):
            out += chunk
            if len(out) > MAX_MANIFEST_BYTES:
                raise FormatError(f"{where} decompresses to more than {MAX_MANIFEST_BYTES} bytes; it is damaged or hostile")
        return bytes(out)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{where} is not a valid zstd frame: {exc}") from None


# --------------------------------------------------------------- validation

_REQUIRED = ("id", "model", "number", "parent", "created_at", "metrics", "hparams", "message",
             "skeleton", "tensors", "packs")
KINDS = ("same", "planes", DROPPED)
# sizes, offsets and lengths above this are damage (and would overflow int64 indexes)
MAX_SIZE = 1 << 48
# A record's bytes must be backed by stored bytes: plane 0 of a chunk decodes to at most
# ~32768x its size (zstd's best case, a run), so a tensor of W-byte elements is at most
# W * 32768 (<= 2^18) times its plane-0 frames; twice that margin, plus a floor for small
# tensors. A manifest declaring more is refused before anything is allocated for it.
MAX_EXPANSION = 1 << 19
EXPANSION_FLOOR = 64 << 20
# a frame never exceeds its raw bytes by much (rANS header, zstd block overhead)
FRAME_SLACK = 1 << 14


def _fail(where: str, what: str) -> FormatError:
    return FormatError(f"{where}: {what}; the manifest is damaged — run 'modelhub verify'")


def _is_int(v: Any, lo: int = 0, hi: int = MAX_SIZE) -> bool:
    return type(v) is int and lo <= v <= hi


def _short(v: Any) -> str:
    return repr(v)[:80] if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__


def validate_manifest(doc: Any, where: str = "manifest") -> None:
    """Check a parsed manifest document against FORMAT.md before anything uses it.

    Every id, name, size, frame range and link is checked here, so readers and the
    index can index, allocate and build paths from a manifest without further checks;
    the first problem raises FormatError naming where it is
    (``manifest <oid>: tensor 3 (state_dict/fc.weight): shape ...``)."""
    _check_header(doc, where)
    live = [_check_record(doc, i, rec, where) for i, rec in enumerate(doc["tensors"])]
    if sum(int(rec["nbytes"]) for rec, ok in zip(doc["tensors"], live) if ok) > MAX_SIZE:
        raise _fail(where, "its tensors add up to more bytes than any version holds")
    leaves = [Leaf(tuple(rec["shape"]), rec["dtype"]) if ok else None for rec, ok in zip(doc["tensors"], live)]
    check_skeleton(doc["skeleton"], leaves, f"{where}: skeleton")


def _check_header(doc: Any, where: str) -> None:
    version = doc.get("format") if isinstance(doc, dict) else None
    if not _is_int(version) or version != FORMAT_VERSION:
        raise FormatError(
            f"{where} has format {_short(version) if isinstance(doc, dict) else '?'}; "
            f"this modelhub_torch reads format {FORMAT_VERSION} — upgrade the package"
        )
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise _fail(where, f"it lacks the field(s) {', '.join(missing)}")
    check_version_id(doc["id"], f"{where}: id")
    model = doc["model"]
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model) or model == "latest":
        raise _fail(where, f"model name {_short(model)} is not a valid model name")
    if not _is_int(doc["number"], 1):
        raise _fail(where, f"version number {_short(doc['number'])} is not a positive integer")
    if doc["parent"] is not None:
        check_version_id(doc["parent"], f"{where}: parent")
    for key, kind in (("created_at", str), ("message", str), ("metrics", dict), ("hparams", dict),
                      ("tensors", list), ("packs", list), ("cold_packs", list), ("extra", dict)):
        if key in doc and not isinstance(doc[key], kind):
            raise _fail(where, f"{key} is a {type(doc[key]).__name__}, not a {kind.__name__}")
    for key in ("packs", "cold_packs"):
        for p, oid in enumerate(doc.get(key, [])):
            if oid is not None:
                check_object_id(oid, f"{where}: {key}[{p}]")
    _check_extra(doc.get("extra", {}), f"{where}: extra")


def _check_extra(extra: dict[str, Any], where: str) -> None:
    if not isinstance(extra.get("info", {}), dict):
        raise _fail(where, "info is not a JSON object")
    if not isinstance(extra.get("pickle", False), bool):
        raise _fail(where, "pickle is not true or false")
    lossy = extra.get("lossy", [])
    if not isinstance(lossy, list) or not all(isinstance(x, str) for x in lossy):
        raise _fail(where, "lossy is not a list of scheme names")
    if extra.get("graph") is not None:
        _check_graph(extra["graph"], f"{where}.graph")
    if not isinstance(extra.get("architecture", {}), dict):  # checked in full when built
        raise _fail(where, "architecture is not a JSON object")


_NODE_FIELDS = (("name", str), ("op", str), ("type", str), ("category", str))


def _check_graph(graph: Any, where: str) -> None:
    """The recorded network: what the index stores of it must have the right types."""
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list) or not isinstance(graph.get("edges"), list):
        raise _fail(where, "a graph needs 'nodes' and 'edges' lists")
    for i, node in enumerate(graph["nodes"]):
        ok = isinstance(node, dict) and all(isinstance(node.get(k), t) for k, t in _NODE_FIELDS)
        ok = ok and isinstance(node.get("kind"), (str, type(None))) and isinstance(node.get("attrs", {}), dict)
        if not ok or not _is_int(node.get("params", 0)):
            raise _fail(where, f"node {i} is not a {{name, op, type, category, kind, attrs, params}} object")
    for i, edge in enumerate(graph["edges"]):
        if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(x, str) for x in edge)):
            raise _fail(where, f"edge {i} is not a [source, destination] pair of names")


def _check_record(doc: dict[str, Any], i: int, rec: Any, where: str) -> bool:
    """Check tensor record ``i``; returns whether it holds data (False: dropped)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
        raise _fail(f"{where}: tensor {i}", "a record needs a string 'path'")
    at = f"{where}: tensor {i} ({rec['path'][:200]})"
    data = rec.get("data")
    if not isinstance(data, dict) or not is_id(data.get("kind")):
        raise _fail(at, f"data must be an object whose kind is one of {', '.join(KINDS)}")
    if data["kind"] not in KINDS:
        raise newer(at, f"record kind {data['kind']!r} is unknown (this version knows {', '.join(KINDS)})")
    if data["kind"] == DROPPED:
        return False
    dtype, shape, nbytes = rec.get("dtype"), rec.get("shape"), rec.get("nbytes")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise _fail(at, f"dtype {_short(dtype)} is not one of {', '.join(sorted(ITEMSIZE))}")
    if not isinstance(shape, list) or len(shape) > 64 or not all(type(d) is int and 0 <= d <= MAX_SIZE for d in shape):
        raise _fail(at, f"shape {str(shape)[:80]} is not a list of non-negative integers")
    count = math.prod(shape)
    if not _is_int(nbytes) or nbytes != count * ITEMSIZE[dtype]:
        raise _fail(at, f"shape {shape} of {dtype} holds {count * ITEMSIZE[dtype]} bytes, but nbytes is {_short(nbytes)}")
    if not is_object_id(rec.get("digest")):
        raise _fail(at, f"digest {_short(rec.get('digest'))} is not 64 hex digits")
    if data["kind"] == "same":
        _check_link(doc, data, at, "same")
    else:
        _check_planes(doc, rec, data, count, at)
    return True


def _check_link(doc: dict[str, Any], link: Any, at: str, what: str) -> None:
    """``{"version": <id>, "index": i}`` (a ``same`` record, a base, a context)."""
    if not isinstance(link, dict) or not is_version_id(link.get("version")) or not _is_int(link.get("index")):
        raise _fail(at, f"{what} link {str(link)[:120]} is not {{version: 32 hex digits, index: integer >= 0}}")
    if link["version"] == doc["id"] and link["index"] >= len(doc["tensors"]):
        raise _fail(at, f"{what} link to tensor {link['index']} of its own version, which has {len(doc['tensors'])}")


def _check_planes(doc: dict[str, Any], rec: dict[str, Any], data: dict[str, Any], count: int, at: str) -> None:
    """A ``planes`` record: codec, links, lossy transform and every chunk and frame."""
    try:
        cfg = CodecConfig.from_json(data.get("codec"))
        ectx = data.get("exponent_context")
        if ectx is not None:
            ExponentContext.from_json(ectx)
    except NewerFormatError as exc:  # a delta op of a newer version: not damage
        raise NewerFormatError(f"{at}: {exc}") from None
    except FormatError as exc:
        raise _fail(at, str(exc)) from None
    transform = data.get("lossy")
    code = rec["dtype"] if transform is None else _check_lossy(transform, rec["dtype"], at)
    width = ITEMSIZE[code] // (2 if code.startswith("complex") else 1)
    cfg.check_width(width, at)
    links = {k: data.get(k) for k in ("base", "context")}
    for key, link in links.items():
        if link is not None:
            _check_link(doc, link, at, key)
    if links["base"] is None and (links["context"] is not None or ectx is not None):
        raise _fail(at, "a context or exponent_context without a delta base")
    if links["context"] is not None and ectx is not None:
        raise _fail(at, "both a context and an exponent_context")
    if transform is not None and links["base"] is not None:
        raise _fail(at, "a lossy record is never a delta")
    cold_from = data.get("cold_from")
    if cold_from is not None and not _is_int(cold_from, 0, width):
        raise _fail(at, f"cold_from {_short(cold_from)} is not a plane index")
    elements = count * (2 if code.startswith("complex") else 1)
    _check_chunks(doc, data.get("chunks"), elements, width, cold_from, at, rec["nbytes"])


def _check_chunks(doc: dict[str, Any], chunks: Any, elements: int, width: int, cold_from: int | None,
                  at: str, nbytes: int) -> None:
    """Chunks hold the tensor's elements in order, one frame per plane each, every frame
    a range of a pack the manifest lists, and enough stored bytes to back the tensor."""
    if not isinstance(chunks, list):
        raise _fail(at, "chunks is not a list")
    total = plane0 = 0
    for c, chunk in enumerate(chunks):
        n = chunk.get("n") if isinstance(chunk, dict) else None
        frames = chunk.get("frames") if isinstance(chunk, dict) else None
        if not _is_int(n) or not isinstance(frames, list) or len(frames) != width:
            raise _fail(at, f"chunk {c} is not {{n: elements, frames: one per each of the {width} planes}}")
        for p, frame in enumerate(frames):
            _check_frame(doc, frame, n, p, cold_from, at, c)
        total += n
        plane0 += frames[0][1] if frames else 0
    if total != elements:
        raise _fail(at, f"chunks hold {total} elements, the shape {elements}")
    if nbytes > MAX_EXPANSION * plane0 + EXPANSION_FLOOR:
        raise _fail(at, f"{nbytes} bytes backed by {plane0} stored bytes of its top plane (a decompression bomb)")


def _check_frame(doc: dict[str, Any], frame: Any, n: int, p: int, cold_from: int | None, at: str, c: int) -> None:
    """``[offset, length, coder]`` in a pack the manifest lists (``at``, ``c``: where)."""
    ok = isinstance(frame, list) and len(frame) == 3 and _is_int(frame[0]) and _is_int(frame[1], 0, 2 * n + FRAME_SLACK)
    if not ok or not is_id(frame[2]):
        raise _fail(f"{at}: chunk {c} plane {p}", f"frame {str(frame)[:120]} is not [offset, length <= 2n + {FRAME_SLACK}, coder]")
    PLANE_CODERS.get(frame[2], f"{at}: chunk {c} plane {p}")  # a coder of a newer version: NewerFormatError
    key = "cold_packs" if cold_from is not None and p >= cold_from else "packs"
    packs = doc.get(key, ())
    if p >= len(packs) or packs[p] is None:
        raise _fail(f"{at}: chunk {c} plane {p}", f"its frame lies in {key}[{p}], which the manifest does not list")


def _check_lossy(transform: Any, dtype: str, at: str) -> str:
    """A lossy record's transform: its scheme, code dtype and table; returns the code dtype."""
    from modelhub_torch.pas import lossy

    scheme = transform.get("scheme") if isinstance(transform, dict) else None
    if is_id(scheme) and scheme.partition(":")[0] not in lossy.SCHEME_NAMES:
        raise newer(at, f"lossy scheme {scheme!r} is unknown (this version knows {', '.join(lossy.SCHEME_NAMES)})")
    try:
        if not isinstance(transform, dict):
            raise FormatError("the transform is not an object")
        if dtype not in lossy.LOSSY_DTYPES:
            raise FormatError(f"lossy schemes do not apply to {dtype}")
        lossy.parse_scheme(transform.get("scheme"))  # type: ignore[arg-type]
        lossy.code_dtype(transform)
        table = transform.get("table", [])
        if not isinstance(table, list) or len(table) > 256 or not all(_finite_number(v) for v in table):
            raise FormatError("its table is not a list of at most 256 finite numbers")
        if not _is_int(transform.get("exp", 0), -(1 << 16), 1 << 16):
            raise FormatError("its exponent is not an integer")
    except ModelHubError as exc:  # LossyError and the above
        raise _fail(at, f"bad lossy transform: {exc}") from None
    return transform["code_dtype"]


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False
