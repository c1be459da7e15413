"""What the library helpers under the facade use of a repository, as Protocols.

exchange.py, diffing.py, inspection.py and evaluation.py take the repository the
:class:`~modelhub_torch.repository.Repository` facade hands them; typing them against
this Protocol keeps them from importing repository.py, which calls them. Versions are
the leaf record type (records.py).
Only public methods are listed: the helpers never touch a repository's private parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from modelhub_torch.manifest import Manifest


class RepositoryLike(Protocol):
    """The public Repository API the helpers call."""

    def version(self, ref: Any) -> Any: ...

    def versions(self, model: str | None = None) -> list[Any]: ...

    def manifest(self, version_id: str) -> Manifest: ...

    def commit(self, obj: Any, model: str, **kwargs: Any) -> Any: ...

    def load(self, ref: Any, map_location: Any = None, weights_only: bool = True,
             progress: bool = False) -> Any: ...

    def load_state_dict(self, ref: Any, map_location: Any = None, progress: bool = False) -> dict[str, Any]: ...

    def load_tensors(self, ref: Any, progress: bool = False) -> list[Any]: ...
