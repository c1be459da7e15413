"""``Repository(URL).query(...)`` on a hub: the statement runs on the server (its
catalog, no manifests fetched here) and comes back as the same kind of result."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modelhub_torch.records import Version


class RemoteQueryResult:
    """What a ``select`` found on a hub: iterate for ``Version`` objects; ``columns``
    and ``to_dicts()`` as for a local query."""

    def __init__(self, doc: dict[str, Any]):
        self.columns: list[str] = list(doc["columns"])
        self._rows: list[dict[str, Any]] = list(doc["rows"])
        self._versions = [Version(**{**v, "lossy": tuple(v.get("lossy") or ())}) for v in doc["versions"]]

    def __len__(self) -> int:
        return len(self._versions)

    def __iter__(self) -> Iterator[Version]:
        return iter(self._versions)

    def __getitem__(self, i: int) -> Version:
        return self._versions[i]

    @property
    def refs(self) -> list[str]:
        return [v.ref for v in self._versions]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows]


def query_hub(store: Any, text: str) -> RemoteQueryResult:
    return RemoteQueryResult(store.loc.fs.client.query(text))
