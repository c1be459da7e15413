"""modelhub_torch: model lifecycle management for PyTorch and Lightning.

Versions of models stored compactly (byte planes + deltas + entropy coding) in a
repository, restored bit for bit. ``import modelhub_torch`` stays cheap: the public
names load their modules on first use; torch comes with the first commit or load
(listing and querying never need it), numba with the first coded tensor and
Lightning with ``ModelHubCheckpoint``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelhub_torch.errors import ModelHubError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelhub_torch.callbacks.checkpoint import ModelHubCheckpoint
    from modelhub_torch.repository import Repository, Version

__all__ = ["ModelHubCheckpoint", "ModelHubError", "Repository", "Version", "__version__", "load"]


def __getattr__(name: str) -> Any:
    # imported on first access (Lightning only with the callback)
    if name in ("Repository", "Version"):
        from modelhub_torch import repository

        return getattr(repository, name)
    if name == "ModelHubCheckpoint":
        from modelhub_torch.callbacks import ModelHubCheckpoint

        return ModelHubCheckpoint
    raise AttributeError(f"module 'modelhub_torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def load(path_or_url: str, ref: str, map_location: Any = None, weights_only: bool = True) -> Any:
    """``torch.load``-style restore of one version from a repository."""
    from modelhub_torch.repository import Repository

    return Repository(path_or_url).load(ref, map_location=map_location, weights_only=weights_only)
