"""Comparing two versions: metrics, hparams, every tensor, and the recorded network.

Tensors are matched by their path in the checkpoint; when the two sides keep their
weights at different places (a Lightning checkpoint's ``state_dict/conv1.weight``
against a copy's plain ``conv1.weight``), the weights are matched by state-dict name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhub_torch.exchange import STATE_DICT_KEYS, load_whole

if TYPE_CHECKING:
    from modelhub_torch.repolike import RepositoryLike


@dataclass(frozen=True)
class FieldDiff:
    """One metric or hparam on both sides (``None`` where a side lacks it)."""

    a: Any
    b: Any
    differs: bool


@dataclass(frozen=True)
class TensorDiff:
    """One tensor present on both sides. ``changed`` compares bits; the distances are
    computed in float64 (``None`` when the shapes differ)."""

    path: str  # in A
    path_b: str  # in B (differs from ``path`` when matched by state-dict name)
    changed: bool
    dtype: tuple[str, str]
    shape: tuple[list[int], list[int]]
    max_abs_diff: float | None
    rel_l2: float | None

    @property
    def name(self) -> str:
        """What the two sides have in common: the path, or the state-dict name."""
        return self.path if self.path == self.path_b else _common_tail(self.path, self.path_b)


@dataclass(frozen=True)
class VersionDiff:
    """The result of :func:`diff_versions`; ``to_json()`` is the ``modelhub diff --json`` document."""

    a: str
    b: str
    a_id: str
    b_id: str
    metrics: dict[str, FieldDiff]
    hparams: dict[str, FieldDiff]
    tensors: list[TensorDiff]
    only_in_a: list[str]
    only_in_b: list[str]
    aligned_by: str  # "path", or "state_dict" when the sides nest their weights differently
    lossy_a: list[str] = field(default_factory=list)  # lossy schemes A was archived with
    lossy_b: list[str] = field(default_factory=list)
    network: dict[str, Any] | None = None  # graph.diff_graphs of the recorded networks

    @property
    def changed(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.changed]

    @property
    def unchanged(self) -> list[TensorDiff]:
        return [t for t in self.tensors if not t.changed]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "a": self.a,
            "b": self.b,
            "metrics": {k: _field_json(f) for k, f in self.metrics.items()},
            "hparams": {k: _field_json(f) for k, f in self.hparams.items()},
            "tensors": [_tensor_json(t) for t in self.tensors],
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "changed": len(self.changed),
            "unchanged": len(self.unchanged),
            "aligned_by": self.aligned_by,
            "lossy": {"a": self.lossy_a or None, "b": self.lossy_b or None},
        }
        if self.network is not None:
            doc["network"] = self.network
        return doc


def _field_json(f: FieldDiff) -> dict[str, Any]:
    return {"a": f.a, "b": f.b, "differs": f.differs}


def _tensor_json(t: TensorDiff) -> dict[str, Any]:
    doc = {"path": t.path, "changed": t.changed, "dtype": list(t.dtype), "shape": list(t.shape),
           "max_abs_diff": t.max_abs_diff, "rel_l2": t.rel_l2}
    if t.path_b != t.path:
        doc["path_b"] = t.path_b
    return doc


def diff_versions(repo: RepositoryLike, a: Any, b: Any, *, allow_pickle: bool = False,
                  progress: bool = False) -> VersionDiff:
    """Compare versions ``a`` and ``b`` (refs or Versions). Both are loaded whole; a
    version holding pickles needs ``allow_pickle``."""
    from modelhub_torch.graph_view import diff_graphs

    va, vb = repo.version(a), repo.version(b)
    obj_a = load_whole(repo, va, allow_pickle, "diff it", progress)
    obj_b = load_whole(repo, vb, allow_pickle, "diff it", progress)
    ta, tb = _leaves(obj_a), _leaves(obj_b)
    keys_a, keys_b, aligned_by = align(ta, tb, _weights_prefix(obj_a), _weights_prefix(obj_b))
    tensors = [tensor_diff(pa, keys_b[k], ta[pa], tb[keys_b[k]]) for k, pa in keys_a.items() if k in keys_b]
    ma, mb = repo.manifest(va.id), repo.manifest(vb.id)
    ga, gb = ma.extra.get("graph"), mb.extra.get("graph")
    return VersionDiff(
        a=va.ref, b=vb.ref, a_id=va.id, b_id=vb.id,
        metrics=side_by_side(va.metrics, vb.metrics),
        hparams=side_by_side(va.hparams, vb.hparams),
        tensors=tensors,
        only_in_a=[p for k, p in keys_a.items() if k not in keys_b],
        only_in_b=[p for k, p in keys_b.items() if k not in keys_a],
        aligned_by=aligned_by,
        lossy_a=list(ma.extra.get("lossy") or []),
        lossy_b=list(mb.extra.get("lossy") or []),
        network=diff_graphs(ga, gb) if (ga or gb) else None,
    )


def _leaves(obj: Any) -> dict[str, Any]:
    """A loaded version's tensors by path, each as the checkpoint holds it (a view of
    another tensor is compared as that view; lazy conj/neg bits resolved)."""
    from modelhub_torch.skeleton import flatten

    flat = flatten(obj, allow_pickle=True)
    return {p: t.resolve_conj().resolve_neg() for p, t in flat.named.items()}


def _weights_prefix(obj: Any) -> str | None:
    """Where a checkpoint keeps its state_dict: ``"state_dict/"``, ``""`` for a plain
    state_dict, ``None`` when it has none."""
    import torch

    def all_tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if not isinstance(obj, dict):
        return None
    for key in STATE_DICT_KEYS:
        if all_tensors(obj.get(key)):
            return f"{key}/"
    return "" if all_tensors(obj) else None


def align(ta: dict[str, Any], tb: dict[str, Any], prefix_a: str | None,
          prefix_b: str | None) -> tuple[dict[str, str], dict[str, str], str]:
    """Match keys for both sides (key -> path) and how they were matched. Weights are
    keyed by state-dict name when the two sides keep them under different prefixes."""
    if prefix_a is None or prefix_b is None or prefix_a == prefix_b:
        return {p: p for p in ta}, {p: p for p in tb}, "path"

    def keys(paths: dict[str, Any], prefix: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in paths:
            out.setdefault(p[len(prefix):] if p.startswith(prefix) else p, p)
        return out

    return keys(ta, prefix_a), keys(tb, prefix_b), "state_dict"


def side_by_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, FieldDiff]:
    """Every key of ``a`` then of ``b``, with both values and whether they differ."""
    keys = list(dict.fromkeys([*a, *b]))
    return {k: FieldDiff(a.get(k), b.get(k), k not in a or k not in b or not _same_value(a[k], b[k])) for k in keys}


def _same_value(x: Any, y: Any) -> bool:
    """Equality where a NaN metric equals a NaN metric (a diverged loss in both)."""
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True
    return bool(x == y)


def same_bits(a: Any, b: Any) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and -0.0 included)."""
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def tensor_diff(path_a: str, path_b: str, a: Any, b: Any) -> TensorDiff:
    """Changed (bitwise), max |b-a| and ||b-a|| / ||a||, computed in float64."""
    import torch

    changed = not same_bits(a, b)
    dtypes = (str(a.dtype).removeprefix("torch."), str(b.dtype).removeprefix("torch."))
    shapes = (list(a.shape), list(b.shape))
    if not changed:
        return TensorDiff(path_a, path_b, False, dtypes, shapes, 0.0, 0.0)
    if tuple(a.shape) != tuple(b.shape):
        return TensorDiff(path_a, path_b, True, dtypes, shapes, None, None)
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a64, b64 = a.detach().to(wide), b.detach().to(wide)
    d = b64 - a64
    if d.numel() == 0:
        return TensorDiff(path_a, path_b, True, dtypes, shapes, 0.0, 0.0)
    na, nd = float(torch.linalg.vector_norm(a64)), float(torch.linalg.vector_norm(d))
    rel = nd / na if na else (0.0 if nd == 0 else math.inf)
    return TensorDiff(path_a, path_b, True, dtypes, shapes, float(d.abs().max()), rel)


def _common_tail(a: str, b: str) -> str:
    """The shorter of two paths when it ends the longer (the state-dict name)."""
    short, long = sorted((a, b), key=len)
    return short if long.endswith("/" + short) else a
