"""Whether a stored version can resume training, read from its manifest's skeleton.

One answer shared by the catalog (``versions.resumable``), ``list``/``desc`` and the
Lightning integration (callbacks/resume.py), so "weights-only" means the same everywhere. The skeleton is
enough (no tensor is decoded): Lightning needs ``optimizer_states`` to resume ``fit``,
and ``trainer_state="latest"`` prunes it (with the scheduler and callback state) from
older versions.
"""

from __future__ import annotations

from typing import Any

# keys that mark a top-level dict as a Lightning (trainer) checkpoint
_TRAINER_MARKERS = ("optimizer_states", "loops", "pytorch-lightning_version", "epoch")


def top_level_keys(skeleton: Any) -> set[str] | None:
    """The string keys of a skeleton's top-level dict (None when the object committed
    was not a dict), without decoding anything."""
    if not isinstance(skeleton, dict) or "$dict" not in skeleton:
        return None
    try:
        return {k for k, _ in skeleton["$dict"] if isinstance(k, str)}
    except (TypeError, ValueError):  # a damaged skeleton: no trainer checkpoint we know
        return None


def trainer_state(skeleton: Any) -> bool | None:
    """True when the version can resume training (its ``optimizer_states`` are there),
    False for a trainer checkpoint without them (weights-only: pruned or saved with
    ``save_weights_only``), None when it is no trainer checkpoint at all."""
    keys = top_level_keys(skeleton)
    if not keys or not keys.intersection(_TRAINER_MARKERS):
        return None
    return "optimizer_states" in keys
