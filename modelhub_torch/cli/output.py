"""How the ``modelhub`` command prints: sizes, numbers, aligned tables, readable
tensor paths, and one JSON document for ``--json``."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from typing import Any

PROG = "modelhub"


def human_size(n: int | float | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB`` ... (binary units)."""
    if n is None:
        return "-"
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_ratio(r: float | None) -> str:
    if r is None or (isinstance(r, float) and not math.isfinite(r)):
        return "-"
    return f"{r:.2f}x"


def fmt_value(v: Any) -> str:
    """A metric / hparam value, compact."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"


def fmt_cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt_num(v)
    return str(v)


def fmt_shape(shape: list[int]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def fmt_kv(d: dict[str, Any], limit: int | None = None) -> str:
    items = list(d.items())
    text = "  ".join(f"{k}={fmt_value(v)}" for k, v in items[:limit])
    if limit is not None and len(items) > limit:
        text += f"  (+{len(items) - limit})"
    return text


def table(headers: list[str], rows: list[list[str]], right: set[int] | frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell; ``right`` columns are right-aligned."""
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def elide(text: str, width: int = 72) -> str:
    """``text`` cut in the middle to ``width`` characters (for text with no structure;
    tensor paths go through :func:`readable_path`)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


# an absolute location inside a path: a URL (scheme://...), or a key that is an absolute
# file path (it starts the text, or follows a '/', quote, space or '='); up to a quote,
# comma, brace or '#' (a modelhub URL's ref)
_LOCATION = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<url>[^\s'\",{}#]*)"
                       r"|(?:^|(?<=[/\s'\"=]))(?P<path>/[^\s'\",{}#]+)")
# a callback's state key: Name{'monitor': 'val_acc', 'mode': 'max', ...}
_STATE_KEY = re.compile(r"\{'[^{}]*\}")
# places a path may be cut: after a '/', a ', ' or a space
_CUT = re.compile(r"(?<=/)|(?<=, )")


def readable_path(path: str, width: int = 80) -> str:
    """A tensor path shortened for a table without cutting words: absolute locations
    baked into callback state (``modelhub:///home/me/hub#m@v1``) keep their last part
    (``modelhub://…/hub#m@v1``), a callback's state key keeps its first setting, and
    what is still too long loses whole middle segments (``a/…/z``)."""
    text = _LOCATION.sub(_last_part, path)
    if len(text) > width:
        text = _STATE_KEY.sub(_first_setting, text)
    if len(text) > width:
        text = _STATE_KEY.sub("{…}", text)
    return text if len(text) <= width else _drop_middle(text, width)


def _last_part(m: re.Match[str]) -> str:
    """``scheme://…/last`` or ``…/last`` for a location of more than one segment."""
    scheme, where = m["scheme"] or "", m["url"] if m["scheme"] else m["path"]
    parts = [p for p in where.split("/") if p]
    return f"{scheme}…/{parts[-1]}" if len(parts) > 1 else m.group(0)


def _first_setting(m: re.Match[str]) -> str:
    first, sep, _ = m.group(0)[1:-1].partition(", ")
    return "{" + first + (", …}" if sep else "}")


def _drop_middle(text: str, width: int) -> str:
    """Whole segments from both ends around one ``…``; characters only when a single
    segment is wider than ``width``."""
    parts = [p for p in _CUT.split(text) if p]
    head, tail = [], []
    room = width - 1
    while parts:
        take_tail = len(tail) < len(head)
        piece = parts[-1] if take_tail else parts[0]
        if len(piece) > room:
            break
        room -= len(piece)
        if take_tail:
            tail.insert(0, parts.pop())
        else:
            head.append(parts.pop(0))
    if not head and not tail:
        return elide(text, width)
    dropped = "".join(parts)
    mark = "…/" if dropped.endswith("/") and len(dropped) > 1 and room >= 1 else "…"
    joined = "".join(head) + mark + "".join(tail)
    return joined.replace("…/…", "…").replace("……", "…")


def summarize_paths(paths: list[str], limit: int = 6) -> str:
    """A few paths in full, many as counts per top-level entry."""
    if len(paths) <= limit:
        return ", ".join(readable_path(p, 60) for p in paths)
    groups: dict[str, int] = {}
    for p in paths:
        head = p.split("/", 1)[0]
        groups[head] = groups.get(head, 0) + 1
    return f"{len(paths)} tensors: " + ", ".join(f"{readable_path(h, 40)}/… ({n})" for h, n in groups.items())


def json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class Output:
    """Where a command's results go: human text or one JSON document on stdout."""

    def __init__(self, as_json: bool):
        self.json = as_json

    def emit(self, doc: Any, text: str | None = None) -> None:
        if self.json:
            print(json.dumps(json_safe(doc), indent=2, allow_nan=False))
        elif text is not None:
            print(text)

    def progress(self) -> bool:
        """Progress bars only for a person watching a terminal."""
        return not self.json and sys.stderr.isatty()


def version_flags(v: Any) -> list[str]:
    """Marks a person needs before using a version: it cannot resume training, loading
    it in full unpickles (runs code), or its weights are rounded (archived lossily)."""
    from modelhub_torch.inspection import lossy_schemes

    flags = []
    if v.resumable is False:
        flags.append("weights-only")
    if v.holds_pickle:
        flags.append("pickle")
    if lossy_schemes(v):
        flags.append("lossy")
    return flags


def version_doc(v: Any, aliases: list[str] | None = None) -> dict[str, Any]:
    """A version as JSON: its fields, ``ratio``, ``lossy`` (schemes or null), aliases."""
    from modelhub_torch.inspection import lossy_schemes

    d = dataclasses.asdict(v)
    d["ratio"] = v.ratio if v.stored_bytes else None
    d["lossy"] = lossy_schemes(v) or None
    if aliases is not None:
        d["aliases"] = aliases
    return d


def warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def error(message: str) -> None:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {text}", file=sys.stderr)
