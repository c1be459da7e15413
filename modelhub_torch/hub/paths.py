"""Which files of a repository a hub serves, and the checks every name from the network
goes through before it reaches a path.

Only what a reader of the repository needs is served: ``modelhub.json`` (without
server-side settings), ``switch.json``, ``objects/`` and ``refs/``. Tokens (``hub/``), temporary files,
the index, locks and remote-tracking notes never leave the server.
"""

from __future__ import annotations

import re

from modelhub_torch.errors import ModelHubError

_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
SERVED_TOP = ("objects", "refs")
CONFIG = "modelhub.json"
SWITCH = "switch.json"  # an archive's journal, read through while the server rolls it forward


class BadPathError(ModelHubError, ValueError):
    """A path from a request that is not one a repository could hold."""


def served_path(path: str) -> str:
    """``path`` as a relative repository path the hub serves; BadPathError otherwise
    (``..``, absolute paths, backslashes, empty parts, anything outside objects/ and refs/)."""
    text = path.strip("/")
    if text in ("", CONFIG, SWITCH):
        return text
    parts = text.split("/")
    if parts[0] not in SERVED_TOP or any(not _PART.fullmatch(p) or p in (".", "..") for p in parts):
        raise BadPathError(
            f"invalid path {path!r}: a hub serves modelhub.json and files under objects/ and refs/, "
            "named with letters, digits, '.', '_' and '-'"
        )
    return "/".join(parts)
