"""The repository's settings file, ``modelhub.json``: defaults and validation.

The file travels with the repository, so it is untrusted input like every other byte
of it: each setting is checked on open, and a bad one is refused with a message that
names it, the value found and what is allowed (it never reaches a codec or a loop).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelhub_torch.errors import FormatError, ModelHubError
from modelhub_torch.pas.codec import CodecConfig
from modelhub_torch.pas.entropy import PLANE_CODERS
from modelhub_torch.pas.registry import is_id, newer
from modelhub_torch.skeleton_check import uses_views

CONFIG_FILE = "modelhub.json"
REPO_FORMAT = 1
LAYOUTS = ("exp-first", "ieee")
MAX_CONFIG_BYTES = 1 << 20
MAX_LOAD_FACTOR = 1e6
REPACK_MODES = ("background", "commit", "manual")

DEFAULT_SETTINGS: dict[str, Any] = {
    "format": REPO_FORMAT,
    "keyframe_interval": 16,
    "materialize": CodecConfig(op="none", group_from=8).to_json(),
    "delta": CodecConfig(op="sub", lane=4, group_from=8).to_json(),
    "layout": "exp-first",  # of whole float tensors: "exp-first" or "ieee" (FORMAT.md)
    # the recreation budget: every version's estimated restore stays within this factor
    # of restoring it stored whole (budget.py); None: unbounded chains (up to keyframes)
    "max_load_factor": 2.5,
    # when older versions become reverse deltas: "background" (a thread of the
    # committing process, after the commit returns), "commit" (inside the commit) or
    # "manual" (only by repack / gc --repack)
    "repack": "background",
    # repack re-codes plain deltas with their neighbour delta as context
    # where the budget allows: ~5% smaller on fine-tune trajectories, slower to decode
    "context_coding": True,
    # the cold tier (any fsspec URL) archive --cold moved low-order planes to, or None
    "cold": None,
}

# Format features: parts of format 1 a reader must know to read a repository's objects
# (FORMAT.md, "Features"). modelhub.json's optional "features" names those its versions
# use; a reader refuses one it does not know before it reads a byte of data.
KNOWN_FEATURES = (
    "rans0", "rans8", "rans_ctx", "exponent_context", "cold_packs", "lossy", "dropped", "views", "partial",
)
# what a repository without "features" may use: everything format 1 had when the
# setting was introduced (so existing repositories open unchanged); a feature added
# since is always named once a version uses it
BASELINE_FEATURES = frozenset(KNOWN_FEATURES) - {"views", "partial"}
FEATURES_KEY = "features"

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
    unknown = sorted(set(found) - set(DEFAULT_SETTINGS) - {FEATURES_KEY})
    if unknown:
        raise FormatError(
            f"{CONFIG_FILE}: unknown settings {unknown}; known: {sorted(DEFAULT_SETTINGS)} "
            "(a newer modelhub_torch may have written them: upgrade, or remove them)"
        )
    if FEATURES_KEY in found:
        _check_features(found[FEATURES_KEY])
    s = {**DEFAULT_SETTINGS, **found}
    _int_in("keyframe_interval", s["keyframe_interval"], 1, 1 << 20)
    if s["layout"] not in LAYOUTS:
        raise _bad("layout", s["layout"], f"one of {list(LAYOUTS)}")
    factor = s["max_load_factor"]
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not 1.0 <= factor <= MAX_LOAD_FACTOR):
        raise _bad("max_load_factor", factor, f"null or a number from 1 to {MAX_LOAD_FACTOR:g}")
    if s["repack"] not in REPACK_MODES:
        raise _bad("repack", s["repack"], f"one of {list(REPACK_MODES)}")
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


def _check_features(value: Any) -> None:
    if not isinstance(value, list) or not all(is_id(f) for f in value):
        raise _bad(FEATURES_KEY, value, f"a list of feature names (known: {', '.join(KNOWN_FEATURES)})")
    unknown = [f for f in value if f not in KNOWN_FEATURES]
    if unknown:
        raise newer(
            CONFIG_FILE,
            f"the repository uses features {unknown} this version does not know "
            f"(it knows {', '.join(KNOWN_FEATURES)})",
        )


def declared_features(settings: Mapping[str, Any]) -> frozenset[str]:
    """The features a repository's settings say its versions may use."""
    found = settings.get(FEATURES_KEY)
    return BASELINE_FEATURES if found is None else frozenset(found)


def manifest_features(manifest: Any) -> frozenset[str]:
    """The format features a manifest uses: its parsed JSON document or a Manifest.

    Pure (reads nothing): the frame coders of its records (``rans0``/``rans8``/
    ``rans_ctx``; a neighbour ``context`` is ``rans_ctx`` too), ``exponent_context``,
    ``lossy`` records, ``dropped`` records, ``cold_packs`` when frames live in the
    cold tier, and ``views`` when a skeleton node uses a field added with views."""
    if isinstance(manifest, Mapping):
        tensors, cold_packs = manifest.get("tensors", []), manifest.get("cold_packs", [])
        skeleton = manifest.get("skeleton")
    else:
        tensors, cold_packs, skeleton = manifest.tensors, manifest.cold_packs, manifest.skeleton
    used: set[str] = set()
    if uses_views(skeleton):
        used.add("views")
    coders: set[str] = set()
    for rec in tensors:
        data = rec["data"]
        if data["kind"] == "dropped":
            used.add("dropped")
        if data["kind"] != "planes":
            continue
        for key, feature in _RECORD_FEATURES:
            if data.get(key) is not None:
                used.add(feature)
        for chunk in data["chunks"]:
            coders.update(frame[2] for frame in chunk["frames"])
    used.update(c.feature for c in PLANE_CODERS if c.id in coders and c.feature)
    if any(cold_packs):
        used.add("cold_packs")
    extra = manifest.get("extra", {}) if isinstance(manifest, Mapping) else manifest.extra
    if isinstance(extra, Mapping) and extra.get("partial"):
        used.add("partial")
    return frozenset(used)


# optional keys of a planes record -> the feature a reader needs to decode them
_RECORD_FEATURES = (("context", "rans_ctx"), ("exponent_context", "exponent_context"),
                    ("cold_from", "cold_packs"), ("lossy", "lossy"))


def features_to_record(settings: Mapping[str, Any], manifest: Any) -> list[str] | None:
    """The new value of ``settings["features"]`` once ``manifest`` is published, or None
    when the settings already cover every feature it uses (nothing to write).

    Call it before the version becomes visible, and write modelhub.json first when it
    returns a list: a reader must never find a version using a feature the file does
    not name. It returns None for repositories without the setting unless the
    manifest uses a feature added since (``views``)."""
    have = declared_features(settings)
    used = manifest_features(manifest)
    if used <= have:
        return None
    return sorted(have | used, key=KNOWN_FEATURES.index)


def parse_settings(data: bytes) -> dict[str, Any]:
    """Validated settings from the bytes of ``modelhub.json``."""
    if len(data) > MAX_CONFIG_BYTES:
        raise FormatError(f"{CONFIG_FILE} is {len(data)} bytes, not a settings file")
    try:
        found = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    return validate_settings(found)
