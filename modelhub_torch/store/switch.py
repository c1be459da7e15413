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

SWITCH_FILE = "switch.json"


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
        doc = json.loads(raw)
        manifests = doc["manifests"]
        if not isinstance(manifests, dict):
            raise TypeError("manifests is not a mapping")
        return {str(k): str(v) for k, v in manifests.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(
            f"{loc.path(SWITCH_FILE)} (an unfinished archive's journal) is unreadable: {exc}; "
            "it is written atomically, so this is outside damage — restore it from a backup"
        ) from exc


def clear_switch(loc: Location) -> None:
    loc.delete(SWITCH_FILE)
