"""modelhub_torch: model lifecycle management for PyTorch and Lightning.

Versions of models stored compactly (byte planes + deltas + entropy coding) in a
repository, restored bit for bit. ``import modelhub_torch`` stays cheap: numba and
Lightning load only when a codec runs or a callback is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelhub_torch.errors import ModelHubError

__version__ = "0.1.0"
__all__ = ["ModelHubError", "Repository", "Version", "__version__", "load"]

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository, Version


def __getattr__(name: str) -> Any:
    if name in ("Repository", "Version"):
        from modelhub_torch import repository

        return getattr(repository, name)
    raise AttributeError(f"module 'modelhub_torch' has no attribute {name!r}")


def load(path_or_url: str, ref: str, map_location: Any = None, weights_only: bool = True) -> Any:
    """``torch.load``-style restore of one version from a repository."""
    from modelhub_torch.repository import Repository

    return Repository(path_or_url).load(ref, map_location=map_location, weights_only=weights_only)
