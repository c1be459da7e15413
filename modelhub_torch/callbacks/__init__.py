"""Lightning integration: a checkpoint callback that versions every save, a CheckpointIO
plugin, and the ``modelhub://`` protocol that lets Lightning (and fsspec) open any
stored version.

Names are imported on first use: fsspec loads ``callbacks.fs`` through its entry point
whenever someone opens a ``modelhub://`` URL, and that should not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "ModelHubCheckpoint": "checkpoint",
    "TRAINER_STATE_KEYS": "checkpoint",
    "ModelHubCheckpointIO": "io",
    "ModelHubFileSystem": "fs",
    "make_url": "fs",
    "parse_url": "fs",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
