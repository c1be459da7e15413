"""What the library hands back about versions: plain records, importable from anywhere.

A leaf module (it imports nothing else of the package), so the query engine, the
maintenance code and the facade share these types without importing each other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelhub_torch.errors import ModelHubError


@dataclass(frozen=True)
class Version:
    """One stored version of a model (immutable metadata; weights via ``load``)."""

    model: str
    number: int
    id: str
    ref: str
    parent: str | None
    created_at: str
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    message: str
    raw_bytes: int
    stored_bytes: int
    info: dict[str, Any] = field(default_factory=dict)
    # holds objects only pickle can restore (committed with allow_pickle=True): loading
    # them in full needs weights_only=False, which runs code the repository chose
    holds_pickle: bool = False
    # True: a trainer checkpoint that can resume; False: one whose trainer state was
    # pruned (weights only); None: not a trainer checkpoint (a plain state_dict)
    resumable: bool | None = None
    # the lossy schemes an archive applied (e.g. ["quant:4"]): it loads as rounded values
    lossy: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")


@dataclass(frozen=True)
class Problem:
    """One finding of ``Repository.verify``. ``damage``: data is missing or wrong
    (gc refuses to run); otherwise leftovers or a stale index, harmless to the data.
    ``action``: what to do about it (empty when verify already fixed it)."""

    kind: str
    subject: str
    detail: str
    damage: bool = True
    action: str = ""

    def __str__(self) -> str:
        text = f"{self.kind}: {self.subject}: {self.detail}"
        return f"{text} ({self.action})" if self.action else text


# --------------------------------------------------------- metadata values
# Manifests and the index are strict JSON, which has no NaN or infinity; a diverged
# loss is still worth keeping, so such floats are stored tagged (as skeletons do).
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return {"$float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(v, dict):
        return {str(k): _encode_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode_value(x) for x in v]
    return v


def decode_values(v: Any) -> Any:
    """Stored metadata (metrics, hparams, info) -> Python values, NaN/inf restored."""
    if isinstance(v, dict):
        if len(v) == 1 and v.get("$float") in _SPECIAL:
            return _SPECIAL[v["$float"]]
        return {k: decode_values(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode_values(x) for x in v]
    return v


def jsonable(d: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """User metadata as stored: scalars of tensors/NumPy become numbers, NaN and inf are
    kept (tagged); anything else that JSON cannot hold is refused with a clear error."""
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ModelHubError(f"{what} must be a dict of names to values, got {type(d).__name__}")
    out = {}
    for k, v in dict(d).items():
        item = getattr(v, "item", None)
        if callable(item) and not isinstance(v, (int, float, str, bool)):
            try:  # a one-element tensor or NumPy scalar (a logged metric)
                v = item()
            except Exception:
                pass
        out[str(k)] = _encode_value(v)
    try:
        json.dumps(out, allow_nan=False)  # manifests are strict JSON
    except (TypeError, ValueError) as exc:
        raise ModelHubError(f"{what} must be JSON-serialisable (numbers, strings, lists): {exc}") from exc
    return out
