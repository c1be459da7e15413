"""Refs to version ids: ``model@vN``, ``@latest``, aliases, id prefixes — and, when a
ref names nothing, an error that names the closest thing that exists."""

from __future__ import annotations

import difflib
from typing import NoReturn

from modelhub_torch.errors import AmbiguousRefError, FormatError, RefNotFoundError
from modelhub_torch.records import Version
from modelhub_torch.store.repo import RepoStore

MIN_ID_PREFIX = 6  # hex digits an id prefix needs: shorter ones read like numbers or words


def resolve(store: RepoStore, ref: str | Version) -> str:
    """Version id of ``model@vN``, ``model@latest``, ``model@<alias>``, ``model@<id
    prefix>``, a bare model name (its latest), a bare id prefix or a ``modelhub://``
    checkpoint URL."""
    if isinstance(ref, Version):
        return ref.id
    if not isinstance(ref, str) or not ref:
        raise RefNotFoundError(f"a ref must be a non-empty string like 'model@v3', got {ref!r}")
    if ref.startswith("modelhub://"):  # a checkpoint URL (ModelHubCheckpoint's paths)
        _, sep, fragment = ref.rpartition("#")
        if not sep or not fragment:
            raise RefNotFoundError(f"{ref!r} names no version: end it with '#model@vN'")
        ref = fragment
    model, sep, which = ref.partition("@")
    if not sep:
        if model not in store.refs.models():
            return _by_prefix(store, ref)
        which = "latest"
    listed = store.refs.listed_numbers(model)
    if not listed and model not in store.refs.models():
        _no_such(store, ref, model, None)
    if which == "latest":
        if not listed:
            _no_such(store, ref, model, None)
        return _version_at(store, ref, model, listed[-1])
    if which[:1] in ("v", "V") and _is_number(which[1:]):
        n = int(which[1:])
        if n in listed:
            return _version_at(store, ref, model, n)
        _no_such(store, ref, model, [f"{model}@v{k}" for k in listed])
    if _is_number(which):  # never an id prefix: 'm@4' reads as version 4
        _bare_number(store, ref, model, which, listed)
    damaged: dict[str, str] = {}
    tags = store.refs.tags(model, damaged)
    if which in tags:
        return tags[which]
    if f"refs/tags/{model}/{which}" in damaged:
        raise FormatError(damaged[f"refs/tags/{model}/{which}"])
    ids = _ids_with_prefix(store, model, which)
    if len(ids) == 1:
        return ids.pop()
    if len(ids) > 1:
        raise AmbiguousRefError(f"{ref!r} matches {len(ids)} versions of {model}; give more of the id")
    _no_such(store, ref, model, [f"{model}@{t}" for t in tags] + [f"{model}@v{k}" for k in listed] + [f"{model}@latest"])


def _bare_number(store: RepoStore, ref: str, model: str, which: str, listed: list[int]) -> NoReturn:
    n = int(which)
    hint = f"did you mean {model}@v{n}?" if n in listed else (
        f"{model} has v{listed[0]}..v{listed[-1]}" if listed else f"{model} has no versions")
    starts = sorted(_ids_with_prefix(store, model, which))
    if len(starts) == 1:  # an id that begins with digits: name its version
        hint += f" ({which} also begins the id of {store.manifest(starts[0]).ref})"
    raise RefNotFoundError(f"{ref!r} names no version: version numbers are written with a 'v' ({model}@v{n}); {hint}")


def _ids_with_prefix(store: RepoStore, model: str, prefix: str) -> set[str]:
    """Ids of ``model``'s versions starting with ``prefix`` (at least 6 hex digits,
    so a short word or number never picks a version by accident)."""
    prefix = prefix.lower()
    if len(prefix) < MIN_ID_PREFIX or not _is_hex(prefix):
        return set()
    return {vid for vid in store.refs.numbers(model).values() if vid.startswith(prefix)}


def _version_at(store: RepoStore, ref: str, model: str, number: int) -> str:
    vid = store.refs.version_at(model, number)
    if vid is None:  # removed between the listing and the read
        raise RefNotFoundError(f"{ref!r} disappeared while it was being resolved; retry")
    return vid


def _by_prefix(store: RepoStore, ref: str) -> str:
    ok = len(ref) >= MIN_ID_PREFIX and _is_hex(ref.lower())
    ids = store.catalog.ids_with_prefix(ref.lower()) if ok else []
    if len(ids) == 1:
        return ids[0]
    if len(ids) > 1:
        raise AmbiguousRefError(f"{ref!r} matches {len(ids)} versions; give more of the id")
    _no_such(store, ref, None, None)


def _no_such(store: RepoStore, ref: str, model: str | None, candidates: list[str] | None) -> NoReturn:
    """Raise RefNotFoundError naming the closest refs that exist."""
    models = store.refs.models()
    if candidates is None:
        candidates = list(models)
        for m in models:
            candidates += [f"{m}@latest"] + [f"{m}@{t}" for t in store.refs.tags(m)]
    if model and model not in models:
        close = difflib.get_close_matches(model, models, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"models here: {', '.join(models[:5]) or 'none yet'}"
        raise RefNotFoundError(f"no version matches {ref!r}: there is no model {model!r}; {hint} (see 'modelhub list')")
    close = difflib.get_close_matches(ref, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    what = f"model {model!r} has no version {ref!r}" if model else f"no version matches {ref!r}"
    numbers = store.refs.listed_numbers(model) if model else []
    if numbers:
        what += f" (it has v{numbers[0]}..v{numbers[-1]}; latest is {model}@v{numbers[-1]})"
    raise RefNotFoundError(f"{what}{hint} (see 'modelhub list')")


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
