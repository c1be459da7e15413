"""What a transfer moves: the versions the destination lacks (have/want by version id),
each with the base it can travel against, and the aliases to create or move.

Everything is decided before anything is written, so a divergence (``m@v3`` is one
version here and another there, or an alias moved on both sides) stops the transfer
with nothing half-written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from modelhub_torch.errors import DivergedError, ModelHubError
from modelhub_torch.resolution import resolve
from modelhub_torch.store.repo import RepoStore


@dataclass
class Want:
    """One version to send: where it is at the source and what it travels against."""

    vid: str
    model: str
    number: int
    base: str | None  # a version the destination holds (or gets earlier), or None: whole


@dataclass
class Plan:
    wants: list[Want] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # (model, alias, vid, what the destination's alias held when planned: None if absent)
    tags: list[tuple[str, str, str, str | None]] = field(default_factory=list)


def select(src: RepoStore, refs: list[str] | None) -> list[str]:
    """Version ids named by ``refs`` at the source: a model name is all its versions,
    anything else one version (``m@v3``, ``m@best``, an id prefix); None: everything."""
    if not refs:
        names = src.refs.models()
        if not names:
            raise ModelHubError(f"{src.url} holds no versions: there is nothing to transfer")
        refs = names
    out: list[str] = []
    models = set(src.refs.models())
    for ref in refs:
        if "@" not in ref and ref in models:
            out.extend(vid for _, vid in sorted(src.refs.numbers(ref).items()))
        else:
            out.append(resolve(src, ref))
    return list(dict.fromkeys(out))


def plan(src: RepoStore, dst: RepoStore, refs: list[str] | None, planes: int | None,
         last_tags: dict[str, str] | None = None) -> Plan:
    """Decide the transfer of ``refs`` from ``src`` to ``dst`` (see the module doc)."""
    state = Destination(dst)
    chosen = [src.manifest(v) for v in select(src, refs)]
    result, diverged = Plan(), []
    for m in chosen:
        if m.extra.get("partial"):
            raise ModelHubError(
                f"{m.ref} holds only its top {m.extra['partial'].get('planes')} byte planes in {src.url}; "
                f"complete it first ('modelhub pull {m.extra['partial'].get('source')} {m.ref}') "
                "or transfer it from the repository that has all of it"
            )
        there = dst.refs.version_at_or_none(m.model, m.number)
        if there is None:
            continue
        if there != m.id:
            diverged.append(f"{m.ref} is {m.id[:12]} in {src.url} but {there[:12]} in {dst.url}")
        elif planes is not None or state.complete(m.id):
            result.skipped.append(m.ref)
    if diverged:
        raise DivergedError(
            "the histories diverged, nothing was transferred: " + "; ".join(diverged[:5])
            + (f" (and {len(diverged) - 5} more)" if len(diverged) > 5 else "")
            + ". Transfer other refs, or copy one side's model under a new name "
            "('modelhub copy REF NEW_MODEL') and transfer that"
        )
    skipped = set(result.skipped)
    sending: set[str] = set()
    usable = state.holds if planes is not None else state.complete  # a base a partial copy may lean on
    for m in _parents_first(chosen):
        if m.ref in skipped:
            continue
        base = m.parent if m.parent is not None and (m.parent in sending or usable(m.parent)) else None
        if base is not None and src.refs.manifest_of(base) is None:
            base = None  # the source no longer has it (pruned): travel whole
        result.wants.append(Want(m.id, m.model, m.number, base))
        sending.add(m.id)
    present = sending | {m.id for m in chosen if m.ref in skipped}
    result.tags = _tags(src, dst, {m.model for m in chosen}, present, last_tags or {})
    return result


def _parents_first(manifests: list) -> list:
    """Versions ordered so a parent sent along comes before its children (then by
    model and number, which is commit order within a model)."""
    by_id = {m.id: m for m in manifests}
    out, done = [], set()

    def visit(m, depth: int = 0) -> None:
        if m.id in done:
            return
        done.add(m.id)
        parent = by_id.get(m.parent) if m.parent else None
        if parent is not None and depth < 10_000:
            visit(parent, depth + 1)
        out.append(m)

    for m in sorted(manifests, key=lambda m: (m.model, m.number)):
        visit(m)
    return out


def _tags(src: RepoStore, dst: RepoStore, models: set[str], present: set[str],
          last: dict[str, str]) -> list[tuple[str, str, str, str | None]]:
    """Aliases of the transferred models to set at the destination, decided as git does
    with remote-tracking refs: ``last`` holds each alias's value at the previous
    transfer between these two repositories. An alias moved only at the source moves;
    one moved only at the destination stays; one moved on both sides to different
    versions is a divergence. Without a previous value, a new alias is created and an
    existing one moves only forward (to a newer version of its model)."""
    out, diverged = [], []
    for model in sorted(models):
        theirs = dst.refs.tags(model)
        for alias, vid in sorted(src.refs.tags(model).items()):
            if vid not in present and not dst.refs.manifest_of(vid):
                continue  # it points at a version that does not travel
            there = theirs.get(alias)
            if there == vid or there is None:
                if there is None:
                    out.append((model, alias, vid, None))
                continue
            before = last.get(f"{model}@{alias}")
            if before is not None:
                if before == vid:
                    continue  # moved at the destination only: it stays
                if before == there:
                    out.append((model, alias, vid, there))
                    continue
            elif _older(src, there, vid):
                out.append((model, alias, vid, there))
                continue
            diverged.append(f"{model}@{alias} is {_name(src, vid)} in {src.url} but {_name(dst, there)} in {dst.url}")
    if diverged:
        raise DivergedError(
            "aliases moved on both sides, nothing was transferred: " + "; ".join(diverged[:5])
            + ". Point the alias at the same version on one side ('modelhub tag REF ALIAS') and retry"
        )
    return out


def _older(src: RepoStore, there: str, vid: str) -> bool:
    """Whether ``there`` is a version the source knows, older than ``vid`` in the same model."""
    try:
        a, b = src.manifest(there), src.manifest(vid)
    except ModelHubError:
        return False
    return a.model == b.model and a.number < b.number


def _name(store: RepoStore, vid: str) -> str:
    try:
        return store.manifest(vid).ref
    except ModelHubError:
        return vid[:12]


class Destination:
    """What the destination holds, read once per version asked about."""

    def __init__(self, dst: RepoStore):
        self.dst = dst
        self.holds = lru_cache(maxsize=None)(self._holds)
        self.complete = lru_cache(maxsize=None)(self._complete)

    def _holds(self, vid: str) -> bool:
        return self.dst.refs.manifest_of(vid) is not None

    def _complete(self, vid: str) -> bool:
        if not self.holds(vid):
            return False
        try:
            return not self.dst.manifest(vid).extra.get("partial")
        except ModelHubError:
            return False
