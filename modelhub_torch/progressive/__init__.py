"""Progressive (exact) inference: predict from the high-order byte planes of stored
weights and read the low planes only for inputs the bounds cannot decide.

``intervals.py`` bounds a network whose weights are intervals (sound under float32
and float64 rounding, docs/PROGRESSIVE.md), ``planes.py`` reads stored weights plane
by plane and counts the bytes, ``model.py`` runs the tiers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressiveModel", "ProgressiveResult", "progressive_predict"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from modelhub_torch.progressive import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
