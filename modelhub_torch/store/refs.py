"""Small mutable pointers: which versions exist and which manifest each one uses.

``refs/versions/<id>``          -> manifest object id (archive may switch it)
``refs/models/<model>/<N>``     -> version id (the commit point of version N)
``refs/tags/<model>/<alias>``   -> version id (``model@best`` and user aliases)

Every ref is untrusted text: a value that is not an id raises ``FormatError`` naming
the file (never becomes a path), and listings skip names no commit could have made,
so one damaged ref affects the version it names and nothing else.

Numbered refs are created, never overwritten (``create_number``: create-if-absent,
the commit point on stores without a cross-process lock), and tags move by
compare-and-swap (``set_tag``), so two writers never silently undo each other.
"""

from __future__ import annotations

import re
from typing import Any

from modelhub_torch.errors import ConflictError, FormatError, ModelHubError
from modelhub_torch.store.location import Location
from modelhub_torch.validate import is_object_id, is_version_id

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# aliases the ref syntax gives a meaning of its own (model@latest, model@v3, model@3)
RESERVED_ALIAS = re.compile(r"^(latest|[vV]?[0-9]+)$")
MAX_REF_BYTES = 256  # a ref holds one id and a newline; anything longer is damage
# how often a conditional write is retried after losing to another writer
CONFLICT_ATTEMPTS = 16
ANY = object()  # set_tag's ``expect`` when the alias may point anywhere (or nowhere)


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name in ("latest",):
        raise ModelHubError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


def check_alias(alias: str) -> str:
    """An alias a user may set: a valid name that the ref syntax does not claim."""
    if isinstance(alias, str) and RESERVED_ALIAS.match(alias):
        raise ModelHubError(
            f"alias {alias!r} is reserved: it would shadow version numbers ('latest', 'vN' and "
            "plain numbers already mean versions in a ref: model@latest, model@v3); pick another "
            "name such as 'best' or 'prod'"
        )
    return check_name("alias", alias)


def is_number_name(name: str) -> bool:
    """A file name under refs/models/<model>/ that a commit writes: 1, 2, ... (no 007)."""
    return name.isascii() and name.isdigit() and name[0] != "0"


class RefStore:
    def __init__(self, loc: Location):
        self.loc = loc

    def _read(self, *parts: str) -> str | None:
        try:
            raw = self.loc.read("refs", *parts)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if len(raw) > MAX_REF_BYTES:
            raise FormatError(self._damaged(parts, f"{len(raw)} bytes, not one id"))
        try:
            return raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise FormatError(self._damaged(parts, "bytes that are not an id")) from None

    @staticmethod
    def _damaged(parts: tuple[str, ...], what: str) -> str:
        return (
            f"ref {'/'.join(('refs', *parts))} is damaged ({what}); run 'modelhub verify' "
            "to see what is affected and 'modelhub verify --repair' to restore it from the manifests"
        )

    def _read_id(self, kind: str, *parts: str) -> str | None:
        value = self._read(*parts)
        if value is None:
            return None
        ok = is_object_id(value) if kind == "object" else is_version_id(value)
        if not ok:
            raise FormatError(self._damaged(parts, f"{value[:40]!r} is not a {kind} id"))
        return value

    def _write(self, value: str, *parts: str) -> None:
        self.loc.write_atomic("/".join(("refs", *parts)), (value + "\n").encode())

    # versions -> manifests
    def manifest_of(self, version_id: str) -> str | None:
        if not is_version_id(version_id):
            return None
        return self._read_id("object", "versions", version_id)

    def set_manifest(self, version_id: str, manifest_oid: str) -> None:
        self._write(manifest_oid, "versions", version_id)

    def create_manifest(self, version_id: str, manifest_oid: str) -> bool:
        """Name the manifest of a version arriving from elsewhere only if no process
        named one first: True if this call did. Two senders of one version each code
        it their own way; the first one's stays (a second, switched in, could link
        into the first's versions in a cycle)."""
        rel = f"refs/versions/{version_id}"
        return self.loc.create_exclusive(rel, (manifest_oid + "\n").encode()) is not None

    def version_ids(self) -> list[str]:
        return [n for n in self.loc.listdir("refs", "versions") if is_version_id(n)]

    def delete_version(self, version_id: str) -> None:
        self.loc.delete(f"refs/versions/{version_id}")

    # models -> numbered versions
    def models(self) -> list[str]:
        return [m for m in self.loc.listdir("refs", "models") if MODEL_NAME.fullmatch(m) and m != "latest"]

    def listed_numbers(self, model: str) -> list[int]:
        """Version numbers of a model from one directory listing (no file reads)."""
        return sorted(int(n) for n in self.loc.listdir("refs", "models", model) if is_number_name(n))

    def version_at(self, model: str, number: int) -> str | None:
        """Version id of ``model@v<number>``, or None (FormatError when the ref is damaged)."""
        return self._read_id("version", "models", model, str(number))

    def version_at_or_none(self, model: str, number: int) -> str | None:
        """Like ``version_at``, with a damaged ref read as no ref."""
        try:
            return self.version_at(model, number)
        except FormatError:
            return None

    def numbers(self, model: str, damaged: dict[str, str] | None = None) -> dict[int, str]:
        """Every number of a model with its version id (reads one file per version).
        Damaged refs are skipped, and reported into ``damaged`` (ref path -> why)."""
        out: dict[int, str] = {}
        for n in self.listed_numbers(model):
            try:
                vid = self.version_at(model, n)
            except FormatError as exc:
                if damaged is not None:
                    damaged[f"refs/models/{model}/{n}"] = str(exc)
                continue
            if vid:
                out[n] = vid
        return out

    def set_number(self, model: str, number: int, version_id: str) -> None:
        self._write(version_id, "models", model, str(number))

    def create_number(self, model: str, number: int, version_id: str) -> bool:
        """Claim ``model@v<number>`` for a version: True if this call created the ref,
        False if the number was taken (by another writer) first."""
        rel = f"refs/models/{model}/{number}"
        return self.loc.create_exclusive(rel, (version_id + "\n").encode()) is not None

    def delete_number(self, model: str, number: int) -> None:
        self.loc.delete(f"refs/models/{model}/{number}")

    # aliases
    def tags(self, model: str, damaged: dict[str, str] | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        for name in self.loc.listdir("refs", "tags", model):
            if not MODEL_NAME.fullmatch(name):
                continue
            try:
                vid = self._read_id("version", "tags", model, name)
            except FormatError as exc:
                if damaged is not None:
                    damaged[f"refs/tags/{model}/{name}"] = str(exc)
                continue
            if vid:
                out[name] = vid
        return out

    def set_tag(self, model: str, alias: str, version_id: str, expect: Any = ANY) -> None:
        """Point an alias at a version by compare-and-swap: the write is conditional
        on the alias still holding what was just read (its ETag), so a racing move is
        never overwritten unseen. ``expect``: the version id the alias must hold now
        (None: it must not exist yet), else ConflictError; by default the alias moves
        from wherever it is, re-read after each lost race."""
        rel = "/".join(("refs", "tags", model, alias))
        data = (version_id + "\n").encode()
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                raw, etag = self.loc.read_with_etag(rel)
                current: str | None = raw.decode("ascii", "replace").strip()
            except FileNotFoundError:
                etag, current = None, None
            if expect is not ANY and current != expect:
                raise ConflictError(
                    f"{model}@{alias} points at {current or 'nothing'}, not {expect or 'nothing'}: "
                    "another writer moved it; read it again and decide anew"
                )
            if current == version_id:
                return
            if etag is None:
                done = self.loc.create_exclusive(rel, data)
            else:
                done = self.loc.replace_if_match(rel, data, etag)
            if done is not None:
                return
        raise ConflictError(
            f"{model}@{alias} kept moving under this write ({CONFLICT_ATTEMPTS} attempts): other "
            "writers are moving it at the same time; retry"
        )

    def delete_tag(self, model: str, alias: str) -> None:
        self.loc.delete("/".join(("refs", "tags", model, alias)))
