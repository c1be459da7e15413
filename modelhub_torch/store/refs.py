"""Small mutable pointers: which versions exist and which manifest each one uses.

``refs/versions/<id>``          -> manifest object id (archive may switch it)
``refs/models/<model>/<N>``     -> version id (the commit point of version N)
``refs/tags/<model>/<alias>``   -> version id (``model@best`` and user aliases)
"""

from __future__ import annotations

import re

from modelhub_torch.errors import ModelHubError
from modelhub_torch.store.location import Location

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name) or name in ("latest",):
        raise ModelHubError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


class RefStore:
    def __init__(self, loc: Location):
        self.loc = loc

    def _read(self, *parts: str) -> str | None:
        try:
            return self.loc.read("refs", *parts).decode().strip()
        except FileNotFoundError:
            return None

    def _write(self, value: str, *parts: str) -> None:
        self.loc.write_atomic("/".join(("refs", *parts)), (value + "\n").encode())

    # versions -> manifests
    def manifest_of(self, version_id: str) -> str | None:
        return self._read("versions", version_id)

    def set_manifest(self, version_id: str, manifest_oid: str) -> None:
        self._write(manifest_oid, "versions", version_id)

    def version_ids(self) -> list[str]:
        return [n for n in self.loc.listdir("refs", "versions") if not n.endswith(".tmp")]

    # models -> numbered versions
    def models(self) -> list[str]:
        return self.loc.listdir("refs", "models")

    def listed_numbers(self, model: str) -> list[int]:
        """Version numbers of a model from one directory listing (no file reads)."""
        return sorted(int(n) for n in self.loc.listdir("refs", "models", model) if n.isdigit())

    def version_at(self, model: str, number: int) -> str | None:
        """Version id of ``model@v<number>``, or None."""
        return self._read("models", model, str(number))

    def numbers(self, model: str) -> dict[int, str]:
        """Every number of a model with its version id (reads one file per version)."""
        out: dict[int, str] = {}
        for name in self.loc.listdir("refs", "models", model):
            if name.isdigit():
                vid = self._read("models", model, name)
                if vid:
                    out[int(name)] = vid
        return out

    def set_number(self, model: str, number: int, version_id: str) -> None:
        self._write(version_id, "models", model, str(number))

    # aliases
    def tags(self, model: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in self.loc.listdir("refs", "tags", model):
            vid = self._read("tags", model, name)
            if vid:
                out[name] = vid
        return out

    def set_tag(self, model: str, alias: str, version_id: str) -> None:
        self._write(version_id, "tags", model, alias)

    def delete_tag(self, model: str, alias: str) -> None:
        self.loc.delete("/".join(("refs", "tags", model, alias)))
