"""The commit point of a many-version rewrite (``archive``): one journal file.

An archive replaces the manifests of many versions at once, and a mixture of old and
new manifests could be inconsistent (old A deltas against B while new B deltas against
A). So the new manifests are written first, then ``switch.json`` — mapping every
version id to its new manifest — is written atomically: that single rename is the
commit point. The refs are switched afterwards; whoever opens the repository next
while the journal exists finishes the switch (roll forward), and readers that cannot
write use the journal's mapping directly. Before the journal exists, nothing changed.
"""

from __future__ import annotations

import json

from modelhub_torch.errors import FormatError
from modelhub_torch.store.location import Location
from modelhub_torch.validate import is_object_id, is_version_id

SWITCH_FILE = "switch.json"
# a journal names each version once: ~110 bytes an entry, far below this for any repository
MAX_SWITCH_BYTES = 256 << 20


def write_switch(loc: Location, manifests: dict[str, str], what: str) -> None:
    """Atomically record the new manifest of every version being switched."""
    loc.write_atomic(SWITCH_FILE, json.dumps({"what": what, "manifests": manifests}, indent=1).encode())


def read_switch(loc: Location) -> dict[str, str]:
    """Version id -> new manifest id of an unfinished switch ({} when none)."""
    try:
        raw = loc.read(SWITCH_FILE)
    except FileNotFoundError:
        return {}
    try:
        return parse_switch(raw)
    except ValueError as exc:  # FormatError, JSON and UTF-8 errors are ValueErrors
        raise FormatError(
            f"{loc.path(SWITCH_FILE)} (an unfinished archive's journal) is unreadable: {exc}. "
            "It is written atomically, so this is outside damage: restore it from a backup, or "
            "delete it if no archive was running (the old manifests then stay current) and "
            "run 'modelhub verify'"
        ) from None


def parse_switch(raw: bytes) -> dict[str, str]:
    """The journal's mapping, checked: ``{"what": "archive", "manifests": {version id:
    manifest object id}}``; anything else raises ValueError saying what is wrong."""
    if len(raw) > MAX_SWITCH_BYTES:
        raise ValueError(f"{len(raw)} bytes, more than a journal ever holds")
    try:
        doc = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("what") != "archive":
        raise ValueError('not a {"what": "archive", "manifests": {...}} document')
    manifests = doc.get("manifests")
    if not isinstance(manifests, dict):
        raise ValueError("'manifests' is not a mapping of version ids to manifest ids")
    for vid, moid in manifests.items():
        if not is_version_id(vid) or not is_object_id(moid):
            raise ValueError(f"entry {str(vid)[:40]!r}: {str(moid)[:80]!r} is not a version id -> object id pair")
    return dict(manifests)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def clear_switch(loc: Location) -> None:
    loc.delete(SWITCH_FILE)
