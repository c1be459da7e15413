"""The repository's settings file, ``modelhub.json``: defaults and validation.

The file travels with the repository, so it is untrusted input like every other byte
of it: each setting is checked on open, and a bad one is refused with a message that
names it, the value found and what is allowed (it never reaches a codec or a loop).
"""

from __future__ import annotations

import json
from typing import Any

from modelhub_torch.errors import FormatError, ModelHubError
from modelhub_torch.pas.codec import CodecConfig

CONFIG_FILE = "modelhub.json"
REPO_FORMAT = 1
LAYOUTS = ("exp-first", "ieee")
MAX_CONFIG_BYTES = 1 << 20

DEFAULT_SETTINGS: dict[str, Any] = {
    "format": REPO_FORMAT,
    "keyframe_interval": 16,
    "materialize": CodecConfig(op="none", group_from=8).to_json(),
    "delta": CodecConfig(op="sub", lane=4, group_from=8).to_json(),
    "layout": "exp-first",  # of whole float tensors: "exp-first" or "ieee" (FORMAT.md)
    # re-code the grandparent's deltas with neighbour-delta context at each commit:
    # ~5% smaller on fine-tune trajectories, at the cost of about half the commit speed
    "context_coding": True,
    # the cold tier (any fsspec URL) archive --cold moved low-order planes to, or None
    "cold": None,
}

# bounds of the codec fields a settings file may choose
_CODEC_BOUNDS = {"lane": (1, 8), "group_from": (0, 8), "level": (1, 22),
                 "chunk_elems": (1024, 1 << 26), "exp_bits": (0, 11)}


def _bad(key: str, value: Any, allowed: str) -> FormatError:
    return FormatError(
        f"{CONFIG_FILE}: setting {key!r} is {json.dumps(value)[:60]}, but it must be {allowed}; "
        f"fix the file (the defaults are in FORMAT.md)"
    )


def _int_in(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(key, value, f"an integer from {lo} to {hi}")
    return value


def _codec(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(key, value, "a codec object like " + json.dumps(DEFAULT_SETTINGS[key]))
    for field, (lo, hi) in _CODEC_BOUNDS.items():
        if field in value:
            _int_in(f"{key}.{field}", value[field], lo, hi)
    try:
        CodecConfig.from_json(value)
    except ModelHubError as exc:
        raise _bad(key, value, f"a valid codec ({exc})") from None
    return value


def validate_settings(found: Any) -> dict[str, Any]:
    """Settings with defaults filled in, or FormatError naming the first bad one."""
    if not isinstance(found, dict):
        raise FormatError(f"{CONFIG_FILE} must hold a JSON object, not {type(found).__name__}")
    if found.get("format") != REPO_FORMAT:
        raise FormatError(
            f"repository format {json.dumps(found.get('format'))[:20]} is not supported by this "
            f"modelhub_torch (reads {REPO_FORMAT})"
        )
    unknown = sorted(set(found) - set(DEFAULT_SETTINGS))
    if unknown:
        raise FormatError(
            f"{CONFIG_FILE}: unknown settings {unknown}; known: {sorted(DEFAULT_SETTINGS)} "
            "(a newer modelhub_torch may have written them: upgrade, or remove them)"
        )
    s = {**DEFAULT_SETTINGS, **found}
    _int_in("keyframe_interval", s["keyframe_interval"], 1, 1 << 20)
    if s["layout"] not in LAYOUTS:
        raise _bad("layout", s["layout"], f"one of {list(LAYOUTS)}")
    if not isinstance(s["context_coding"], bool):
        raise _bad("context_coding", s["context_coding"], "true or false")
    for key in ("materialize", "delta"):
        _codec(key, s[key])
    if s["materialize"].get("op", "none") != "none":
        raise _bad("materialize.op", s["materialize"].get("op"), '"none" (whole tensors are not deltas)')
    if s["delta"].get("op") not in ("xor", "sub"):
        raise _bad("delta.op", s["delta"].get("op"), '"sub" or "xor"')
    cold = s["cold"]
    # one plain fsspec URL or path: no '::' chains, which would pull in other
    # filesystems with options of the repository's choosing
    if cold is not None and (not isinstance(cold, str) or not cold or "::" in cold
                             or "\x00" in cold or len(cold) > 4096):
        raise _bad("cold", cold, "null or one fsspec URL or path (no '::' chains)")
    return s


def parse_settings(data: bytes) -> dict[str, Any]:
    """Validated settings from the bytes of ``modelhub.json``."""
    if len(data) > MAX_CONFIG_BYTES:
        raise FormatError(f"{CONFIG_FILE} is {len(data)} bytes, not a settings file")
    try:
        found = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    return validate_settings(found)
