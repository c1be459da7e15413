"""What an opt-in to unpickling would trust, read without running anything.

Unpickling runs code: every GLOBAL / STACK_GLOBAL opcode imports a callable that the
data then calls. Before a user's ``weights_only=False`` or ``--allow-pickle`` unpickles
anything, the opcodes are scanned (``pickletools.genops`` never executes) and the
imported names are shown, so the opt-in says what it lets in.
"""

from __future__ import annotations

import base64
import binascii
import pickletools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# what torch.save itself writes into every checkpoint's pickle (tensor rebuild helpers,
# storages, OrderedDict): torch.load(weights_only=True) allows these, so they are no news
_TORCH_OWN = re.compile(r"^(torch\._utils\._rebuild_\w+|torch\.\w*Storage|collections\.OrderedDict|torch\.Size)$")


def pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global a pickle imports, in order of first use (a
    pickle that does not parse as opcodes reports ``'<unreadable pickle>'``)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # genops raises many kinds on garbage; it never executes anything
        names.append("<unreadable pickle>")
    return list(dict.fromkeys(names))


def _skeleton_pickles(node: Any) -> Iterator[bytes]:
    if isinstance(node, dict):
        if "$pickle" in node:
            try:
                yield base64.b64decode(node["$pickle"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                yield b""
        for v in node.values():
            yield from _skeleton_pickles(v)
    elif isinstance(node, list):
        for v in node:
            yield from _skeleton_pickles(v)


def skeleton_pickle_globals(skeleton: Any) -> list[str]:
    """Globals the pickled objects of a stored version would import when loaded."""
    out: list[str] = []
    for data in _skeleton_pickles(skeleton):
        out += pickle_globals(data)
    return list(dict.fromkeys(out))


def file_pickle_globals(path: str | Path) -> list[str]:
    """Globals a torch.save file (zip with ``*/data.pkl``) or a plain pickle imports,
    leaving out torch's own rebuild helpers."""
    path = Path(path)
    blobs: list[bytes] = []
    try:
        with zipfile.ZipFile(path) as z:
            blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    except (zipfile.BadZipFile, OSError, KeyError):
        try:
            blobs = [path.read_bytes()]
        except OSError:
            return []
    out: list[str] = []
    for b in blobs:
        out += pickle_globals(b)
    return [n for n in dict.fromkeys(out) if not _TORCH_OWN.match(n)]


def describe(names: list[str], limit: int = 8) -> str:
    """``a.b, c.d (+3 more)``, or a note that nothing beyond plain data is imported."""
    if not names:
        return "no imports beyond torch's own"
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
