"""Repository: versions of models stored compactly, loaded back bit for bit.

Storage policy at commit (see ARCHITECTURE.md): the newest version of a model is
stored whole (so restoring the latest costs one decode) and its parent is re-encoded
as a delta against it — git's reverse deltas. Every ``keyframe_interval``-th version
stays whole, which bounds every delta chain. A version whose parent belongs to another
model (a fine-tune) is stored as forward deltas where they are smaller.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import math
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from modelhub_torch.commit import CommitJob

if TYPE_CHECKING:
    from modelhub_torch.archive import ArchiveReport
    from modelhub_torch.dql.engine import QueryResult
from modelhub_torch.errors import (
    AmbiguousRefError,
    CorruptObjectError,
    FormatError,
    ModelHubError,
    ModelHubWarning,
    RefNotFoundError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    WriteFailedError,
)
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas.codec import CodecConfig
from modelhub_torch.pas.dtypes import bits_to_tensor
from modelhub_torch.progress import byte_bar
from modelhub_torch.reader import TensorReader
from modelhub_torch.resumable import trainer_state
from modelhub_torch.skeleton import flatten, state_dict_paths, unflatten
from modelhub_torch.store.catalog import Catalog, catalog_path, is_busy, row_disagreements
from modelhub_torch.store.config import (  # noqa: F401 - re-exported for callers
    CONFIG_FILE,
    DEFAULT_SETTINGS,
    LAYOUTS,
    REPO_FORMAT,
    parse_settings,
    validate_settings,
)
from modelhub_torch.store.location import Location
from modelhub_torch.store.lock import RepoLock
from modelhub_torch.store.objects import ObjectStore, hash_bytes
from modelhub_torch.store.refs import RefStore, check_alias, check_name

INLINE_BYTES = 1 << 20  # tensors smaller than this are coded by the calling thread
MIN_ID_PREFIX = 6  # hex digits an id prefix needs: shorter ones read like numbers or words


@dataclass(frozen=True)
class Version:
    """One stored version of a model (immutable metadata; weights via ``load``)."""

    model: str
    number: int
    id: str
    ref: str
    parent: str | None
    created_at: str
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    message: str
    raw_bytes: int
    stored_bytes: int
    info: dict[str, Any] = field(default_factory=dict)
    # holds objects only pickle can restore (committed with allow_pickle=True): loading
    # them in full needs weights_only=False, which runs code the repository chose
    holds_pickle: bool = False
    # True: a trainer checkpoint that can resume; False: one whose trainer state was
    # pruned (weights only); None: not a trainer checkpoint (a plain state_dict)
    resumable: bool | None = None

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`Repository.verify`. ``damage``: data is missing or wrong
    (gc refuses to run); otherwise leftovers or a stale index, harmless to the data.
    ``action``: what to do about it (empty when verify already fixed it)."""

    kind: str
    subject: str
    detail: str
    damage: bool = True
    action: str = ""

    def __str__(self) -> str:
        text = f"{self.kind}: {self.subject}: {self.detail}"
        return f"{text} ({self.action})" if self.action else text


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _finite(v: Any) -> Any:
    """NaN/inf (a diverged loss) become null, as in the CLI's JSON: manifests are strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _jsonable(d: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if d is None:
        return {}
    out = {}
    for k, v in dict(d).items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        elif hasattr(v, "item") and callable(v.item):
            try:
                v = v.item()
            except (TypeError, ValueError):
                pass
        out[str(k)] = _finite(v)
    try:
        json.dumps(out, allow_nan=False)  # manifests are strict JSON
    except (TypeError, ValueError) as exc:
        raise ModelHubError(f"{what} must be JSON-serialisable (numbers, strings, lists): {exc}") from exc
    return out


class Repository:
    """A model repository on a local path or any fsspec URL."""

    def __init__(self, path_or_url: str | Any):
        self.loc = Location(path_or_url)
        if not self.loc.exists(CONFIG_FILE):
            raise RepositoryNotFoundError(
                f"no modelhub repository at {self.loc.url}; create one with "
                f"Repository.init({str(path_or_url)!r}) or 'modelhub init'"
            )
        self.settings = parse_settings(self.loc.read(CONFIG_FILE))
        cold = self.settings.get("cold")
        self.objects = ObjectStore(self.loc, Location(cold) if cold else None)
        self.refs = RefStore(self.loc)
        self._lock = RepoLock(self.loc)
        self._manifests: dict[str, tuple[str, Manifest]] = {}
        self._mlock = threading.Lock()
        # manifests of an unfinished archive this process could not roll forward itself
        # (a read-only location): they are the current ones
        self._pending: dict[str, str] = {}
        # versions found damaged by this process (ref -> why): left out of listings,
        # reported once as a warning; 'modelhub verify' says more
        self.damaged: dict[str, str] = {}
        self.catalog = Catalog(catalog_path(self.loc), on_reset=self._sync_index)
        self._finish_switch()
        self._sync_index()

    # ---------------------------------------------------------------- creation
    @classmethod
    def init(cls, path_or_url: str | Any, *, exist_ok: bool = False, **settings: Any) -> Repository:
        """Create a repository (``settings`` override codec defaults, see FORMAT.md)."""
        loc = Location(path_or_url)
        if loc.exists(CONFIG_FILE):
            if exist_ok:
                return cls(path_or_url)
            raise RepositoryExistsError(f"a modelhub repository already exists at {loc.url}")
        for key in ("materialize", "delta"):
            if key in settings and isinstance(settings[key], CodecConfig):
                settings[key] = settings[key].to_json()
        unknown = set(settings) - set(DEFAULT_SETTINGS)
        if unknown:
            raise ModelHubError(f"unknown repository settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
        config = validate_settings({**DEFAULT_SETTINGS, **settings})
        for part in ("objects", "refs", "tmp"):
            loc.makedirs(part)
        loc.write_atomic(CONFIG_FILE, json.dumps(config, indent=2).encode())
        return cls(path_or_url)

    @property
    def url(self) -> str:
        return self.loc.url

    def __repr__(self) -> str:
        return f"Repository({self.loc.url!r})"

    @contextlib.contextmanager
    def _writes(self, what: str) -> Iterator[None]:
        """Turn a failed write (disk full, quota, file size limit, permissions) into one
        clear error. Writers clean up their temp files and publish last, so the
        repository holds what it held before."""
        try:
            yield
        except ModelHubError:
            raise
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise WriteFailedError(
                f"{what} failed: cannot write to {self.loc.url}{where}: "
                f"{exc.strerror or exc}; nothing was changed — free space (or fix the quota "
                "or permissions) and retry"
            ) from exc

    # --------------------------------------------------------------- manifests
    def manifest(self, version_id: str) -> Manifest:
        moid = self._pending.get(version_id) or self.refs.manifest_of(version_id)
        if moid is None:
            raise RefNotFoundError(f"version {version_id} has no manifest ref")
        with self._mlock:
            hit = self._manifests.get(version_id)
            if hit is not None and hit[0] == moid:
                return hit[1]
        m = Manifest.from_bytes(self.objects.get(moid), where=f"manifest {moid}")
        if m.id != version_id:
            raise FormatError(
                f"manifest {moid} (referenced by refs/versions/{version_id}) describes version "
                f"{m.id}, not {version_id}: the ref is damaged; run 'modelhub verify --repair'"
            )
        with self._mlock:
            self._manifests[version_id] = (moid, m)
        return m

    def _cached_manifest(self, version_id: str) -> Manifest:
        with self._mlock:
            hit = self._manifests.get(version_id)
        return hit[1] if hit is not None else self.manifest(version_id)

    def _invalidate(self, version_id: str) -> None:
        with self._mlock:
            self._manifests.pop(version_id, None)

    def reader(self, cache_bytes: int = 1 << 30) -> TensorReader:
        """A fresh decoder (its base cache lives as long as it does)."""
        return TensorReader(self.objects, self._cached_manifest, self._invalidate, cache_bytes)

    # --------------------------------------------------------------- the index
    def _sync_index(self) -> None:
        """Index versions that refs know and the catalog does not (after a crash or a
        concurrent commit), and drop rows whose versions are gone. Costs one directory
        listing per model; ref files are read only for versions the index lacks."""
        known = self.catalog.numbered()
        live: set[tuple[str, int]] = set()
        for model in self.refs.models():
            for n in self.refs.listed_numbers(model):
                live.add((model, n))
                if (model, n) not in known:
                    self._index_numbered(model, n)
        stale = {vid for key, vid in known.items() if key not in live}
        if stale:
            self.catalog.remove(stale)

    def _index_numbered(self, model: str, number: int) -> None:
        """Index ``model@vN``; a damaged version is left out and reported once, so it
        never makes the rest of the repository unusable."""
        try:
            vid = self.refs.version_at(model, number)
            if vid:
                self._index(vid, slot=(model, number))
        except ModelHubError as exc:
            self._note_damage(f"{model}@v{number}", str(exc))

    def _note_damage(self, ref: str, why: str) -> None:
        if ref not in self.damaged:
            self.damaged[ref] = why
            warnings.warn(
                f"{ref} is damaged and left out ({' '.join(why.split())[:200]}); "
                "'modelhub verify' says what is affected, 'modelhub verify --repair' restores "
                "or quarantines it",
                ModelHubWarning,
                stacklevel=3,
            )

    def _index(self, vid: str, slot: tuple[str, int] | None = None) -> None:
        """Index ``vid`` once its manifest and its ref agree; ``slot`` is the ref it
        was just read from, so that ref is not read twice."""
        m = self.manifest(vid)
        claimed = (m.model, m.number)
        if claimed != slot and self.refs.version_at(m.model, m.number) != vid:
            raise FormatError(
                f"version {vid}'s manifest claims to be {m.ref}, which is another version "
                "(or none): its ref is damaged; run 'modelhub verify --repair'"
            )
        moid = self.refs.manifest_of(vid)
        self.catalog.upsert(m, moid or "", self._stored_bytes(m, moid))

    def _stored_bytes(self, m: Manifest, moid: str | None) -> int:
        size = sum(m.plane_bytes())
        if moid:
            try:
                size += self.objects.size(moid)
            except CorruptObjectError:
                pass
        return size

    # -------------------------------------------------------------------- refs
    def models(self) -> list[str]:
        return sorted({r["model"] for r in self.catalog.rows()})

    def versions(self, model: str | None = None) -> list[Version]:
        self._sync_index()
        return [self._version(r) for r in self.catalog.rows(model)]

    def _version(self, row: Any) -> Version:
        d = Catalog.decode_row(row)
        parent = None
        if d["parent"]:
            prow = self.catalog.row(d["parent"])
            parent = f"{prow['model']}@v{prow['number']}" if prow else d["parent"]
        return Version(
            model=d["model"],
            number=d["number"],
            id=d["id"],
            ref=f"{d['model']}@v{d['number']}",
            parent=parent,
            created_at=d["created_at"],
            metrics=d["metrics"],
            hparams=d["hparams"],
            message=d["message"],
            raw_bytes=d["raw_bytes"],
            stored_bytes=d["stored_bytes"],
            info=d["info"],
            holds_pickle=bool(d["pickle"]),
            resumable=None if d["resumable"] is None else bool(d["resumable"]),
        )

    def version(self, ref: str | Version) -> Version:
        """One version's metadata, checked against its manifest (the index is a cache:
        a row that disagrees is re-indexed, with a warning)."""
        vid = self.resolve(ref)
        m = self.manifest(vid)
        moid = self.refs.manifest_of(vid)
        row = self.catalog.row(vid)
        wrong = row_disagreements(row, m, moid) if row is not None else []
        if row is None or wrong:
            if wrong:
                warnings.warn(
                    f"the index disagreed with {m.ref}'s manifest ({', '.join(wrong)}); re-indexed it",
                    ModelHubWarning,
                    stacklevel=2,
                )
            self._index(vid)
            row = self.catalog.row(vid)
        return self._version(row)

    def resolve(self, ref: str | Version) -> str:
        """Version id of ``model@vN``, ``model@latest``, ``model@<alias>``, ``model@<id
        prefix>``, a bare model name (its latest) or a bare id prefix."""
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
            if model in self.refs.models():
                which = "latest"
            else:
                return self._by_prefix(ref, ref)
        listed = self.refs.listed_numbers(model)
        if not listed and model not in self.refs.models():
            self._no_such(ref, model, None)
        if which == "latest":
            if not listed:
                self._no_such(ref, model, None)
            return self._version_at(ref, model, listed[-1])
        if which[:1] in ("v", "V") and _is_number(which[1:]):
            n = int(which[1:])
            if n in listed:
                return self._version_at(ref, model, n)
            self._no_such(ref, model, [f"{model}@v{k}" for k in listed])
        if _is_number(which):  # never an id prefix: 'm@4' reads as version 4
            n = int(which)
            hint = f"did you mean {model}@v{n}?" if n in listed else (
                f"{model} has v{listed[0]}..v{listed[-1]}" if listed else f"{model} has no versions")
            starts = sorted(self._ids_with_prefix(model, which))
            if len(starts) == 1:  # an id that begins with digits: name its version
                hint += f" ({which} also begins the id of {self.manifest(starts[0]).ref})"
            raise RefNotFoundError(
                f"{ref!r} names no version: version numbers are written with a 'v' ({model}@v{n}); {hint}"
            )
        damaged: dict[str, str] = {}
        tags = self.refs.tags(model, damaged)
        if which in tags:
            return tags[which]
        if f"refs/tags/{model}/{which}" in damaged:
            raise FormatError(damaged[f"refs/tags/{model}/{which}"])
        ids = self._ids_with_prefix(model, which)
        if len(ids) == 1:
            return ids.pop()
        if len(ids) > 1:
            raise AmbiguousRefError(
                f"{ref!r} matches {len(ids)} versions of {model}; give more of the id"
            )
        self._no_such(
            ref, model, [f"{model}@{t}" for t in tags] + [f"{model}@v{k}" for k in listed] + [f"{model}@latest"]
        )
        raise AssertionError("unreachable")

    def _ids_with_prefix(self, model: str, prefix: str) -> set[str]:
        """Ids of ``model``'s versions starting with ``prefix`` (at least 6 hex digits,
        so a short word or number never picks a version by accident)."""
        prefix = prefix.lower()
        if len(prefix) < MIN_ID_PREFIX or not _is_hex(prefix):
            return set()
        return {vid for vid in self.refs.numbers(model).values() if vid.startswith(prefix)}

    def _version_at(self, ref: str, model: str, number: int) -> str:
        vid = self.refs.version_at(model, number)
        if vid is None:  # removed between the listing and the read
            raise RefNotFoundError(f"{ref!r} disappeared while it was being resolved; retry")
        return vid

    def _by_prefix(self, ref: str, prefix: str) -> str:
        ok = len(prefix) >= MIN_ID_PREFIX and _is_hex(prefix.lower())
        ids = self.catalog.ids_with_prefix(prefix.lower()) if ok else []
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise AmbiguousRefError(f"{ref!r} matches {len(ids)} versions; give more of the id")
        self._no_such(ref, None, None)
        raise AssertionError("unreachable")

    def _no_such(self, ref: str, model: str | None, candidates: list[str] | None) -> None:
        if candidates is None:
            candidates = list(self.refs.models())
            for m in candidates[:]:
                candidates += [f"{m}@latest"] + [f"{m}@{t}" for t in self.refs.tags(m)]
        models = self.refs.models()
        if model and model not in models:
            close = difflib.get_close_matches(model, models, n=3, cutoff=0.5)
            if close:
                hint = f"did you mean {', '.join(close)}?"
            else:
                hint = f"models here: {', '.join(models[:5]) or 'none yet'}"
            raise RefNotFoundError(
                f"no version matches {ref!r}: there is no model {model!r}; {hint} (see 'modelhub list')"
            )
        close = difflib.get_close_matches(ref, candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        what = f"model {model!r} has no version {ref!r}" if model else f"no version matches {ref!r}"
        numbers = self.refs.listed_numbers(model) if model else []
        if numbers:
            what += f" (it has v{numbers[0]}..v{numbers[-1]}; latest is {model}@v{numbers[-1]})"
        raise RefNotFoundError(f"{what}{hint} (see 'modelhub list')")

    def tag(self, ref: str | Version, alias: str) -> Version:
        """Point ``model@alias`` at a version (moves an existing alias)."""
        vid = self.resolve(ref)
        model = self._cached_manifest(vid).model
        check_alias(alias)
        with self._lock, self._writes(f"tagging {model}@{alias}"):
            self.refs.set_tag(model, alias, vid)
        return self.version(vid)

    def tags(self, model: str) -> dict[str, str]:
        """Aliases of one model and the refs they point at."""
        out = {}
        for alias, vid in self.refs.tags(model).items():
            row = self.catalog.row(vid)
            out[alias] = f"{row['model']}@v{row['number']}" if row else vid
        return out

    # ------------------------------------------------------------------ commit
    def commit(
        self,
        obj: Any,
        model: str,
        *,
        parent: str | Version | None = None,
        metrics: dict[str, Any] | None = None,
        hparams: dict[str, Any] | None = None,
        message: str = "",
        info: dict[str, Any] | None = None,
        graph: dict[str, Any] | torch.nn.Module | None = None,
        allow_pickle: bool = False,
        progress: bool = False,
        expect_number: int | None = None,
    ) -> Version:
        """Store ``obj`` (state_dict, checkpoint dict or nn.Module) as a new version
        (``progress=True`` shows a tqdm bar of tensor bytes on stderr).

        ``info``: JSON facts kept with the version (the Lightning callback records epoch,
        step, module class and library versions there). ``expect_number``: the number
        the caller already announced for this version (e.g. to other DDP ranks); the
        commit fails instead of taking another number if someone else committed first.
        ``graph``: the network (an ``nn.Module`` to capture, or a graph already captured
        by ``modelhub_torch.graph.capture_graph``) for structural queries; committing an
        ``nn.Module`` records its graph by itself.
        """
        check_name("model", model)
        if isinstance(obj, torch.nn.Module):
            graph = obj if graph is None else graph
            obj = obj.state_dict()
        if isinstance(graph, torch.nn.Module):
            from modelhub_torch.graph import capture_graph

            graph = capture_graph(graph)
        flat = flatten(obj, allow_pickle=allow_pickle)
        metrics = _jsonable(metrics, "metrics")
        hparams = _jsonable(hparams, "hparams")
        info = _jsonable(info, "info")
        with self._lock, self._writes(f"commit to {model!r}"):
            self._sync_index()  # deletions below trust the index to know every version
            listed = self.refs.listed_numbers(model)
            number = (listed[-1] if listed else 0) + 1
            if expect_number is not None and number != expect_number:
                why = (
                    f"another process committed to {model!r} meanwhile; give each run its own model name"
                    if number > expect_number
                    else f"an earlier commit meant as {model}@v{number} did not complete"
                )
                raise ModelHubError(
                    f"expected to commit {model}@v{expect_number} but the next version is {model}@v{number}: {why}"
                )
            if parent is not None:
                parent_vid: str | None = self.resolve(parent)
            else:
                parent_vid = self.refs.version_at(model, listed[-1]) if listed else None
            created = _now()
            vid = _new_version_id(model, number, created)
            job = CommitJob(self, flat, model, number, vid, parent_vid, progress=progress)
            manifest, replaced = job.run(metrics, hparams, message, created)
            if info:
                manifest.extra["info"] = info
            if graph:
                manifest.extra["graph"] = graph
            return self._publish(manifest, replaced)

    def _publish(self, m: Manifest, replaced: list[tuple[Manifest, Manifest]]) -> Version:
        """Make the new version visible, then switch each re-encoded older version to its
        new manifest. Every switch is atomic and every mixture of old and new manifests
        decodes to the same bits, so a crash between any two steps is harmless."""
        moid = self.objects.put(m.to_bytes())
        new_oids = [self.objects.put(new.to_bytes()) for new, _ in replaced]
        self.refs.set_manifest(m.id, moid)
        self.refs.set_number(m.model, m.number, m.id)  # the commit point
        # the version has landed: what follows only tidies (index, the parent's re-encode),
        # so a failure here is a warning, never a failed commit
        try:
            self.catalog.upsert(m, moid, self._stored_bytes(m, moid))
            self._switch(replaced, new_oids, {moid, *m.objects()})
        except (ModelHubError, OSError) as exc:
            warnings.warn(
                f"{m.ref} was committed, but tidying up after it failed ({exc}); its parent "
                "stays stored whole and 'modelhub gc' reclaims what is left over",
                ModelHubWarning,
                stacklevel=3,
            )
        try:
            return self.version(m.id)
        except ModelHubError:
            return self._version_of(m, moid)

    def _version_of(self, m: Manifest, moid: str) -> Version:
        """A Version straight from its manifest (when the index cannot give it)."""
        return Version(
            model=m.model, number=m.number, id=m.id, ref=m.ref, parent=m.parent,
            created_at=m.created_at, metrics=m.metrics, hparams=m.hparams, message=m.message,
            raw_bytes=m.raw_bytes, stored_bytes=self._stored_bytes(m, moid), info=m.info,
            holds_pickle=bool(m.extra.get("pickle")), resumable=trainer_state(m.skeleton),
        )

    def _switch(self, replaced: list[tuple[Manifest, Manifest]], new_oids: list[str], keep: set[str]) -> None:
        """Point each version at its new manifest, in order, and delete the objects only
        its old manifest used (``keep``: objects that must survive regardless)."""
        for (new, old), new_oid in zip(replaced, new_oids):
            old_moid = self.refs.manifest_of(old.id)
            self.refs.set_manifest(new.id, new_oid)
            self._invalidate(new.id)
            self.catalog.upsert(new, new_oid, self._stored_bytes(new, new_oid))
            # objects are content-addressed: never delete what the new manifests use, nor
            # what any other version's current manifest shares (packs are salted, so that
            # is a second line of defence; gc reclaims whatever is kept needlessly)
            survive = {new_oid, *new.objects(), *keep}
            for oid in [*old.objects(), old_moid]:
                if oid and oid not in survive and not (self.catalog.object_users(oid) - {old.id}):
                    self.objects.delete(oid)

    def _finish_switch(self) -> None:
        """Roll an interrupted archive forward (its journal is its commit point)."""
        from modelhub_torch.store.switch import read_switch

        if not read_switch(self.loc):
            return
        try:
            with self._lock:
                pending = read_switch(self.loc)
                if pending:
                    self._apply_switch(pending)
        except OSError:
            self._pending = read_switch(self.loc)  # cannot write here: read through the journal

    def _apply_switch(self, manifests: dict[str, str]) -> None:
        """Point every journalled version at its new manifest, re-index, drop the journal,
        then delete what no current manifest uses. Idempotent: safe to repeat after a crash."""
        from modelhub_torch.store.switch import clear_switch

        live = {vid for m in self.refs.models() for vid in self.refs.numbers(m).values()}
        for vid, moid in manifests.items():
            if vid in live and self.refs.manifest_of(vid) != moid:
                self.refs.set_manifest(vid, moid)
            self._invalidate(vid)
        rows = []
        for vid, moid in manifests.items():
            if vid in live:
                m = self.manifest(vid)
                rows.append((m, moid, self._stored_bytes(m, moid)))
        self.catalog.upsert_many(rows)
        clear_switch(self.loc)
        self._pending = {}
        self.gc()

    # ------------------------------------------------------------------ query
    def query(self, text: str) -> QueryResult:
        """Run a DQL statement (``select m where ...``, see docs/DQL.md) on the catalog;
        network predicates use the recorded graphs, never the weights."""
        from modelhub_torch.dql.engine import execute

        self._sync_index()

        def tags() -> Iterable[tuple[str, str]]:
            for model in self.refs.models():
                for alias, vid in self.refs.tags(model).items():
                    yield vid, alias

        try:
            return execute(self.catalog.connection(), text, self.resolve, tags, self._version)
        except sqlite3.DatabaseError as exc:  # the index file itself is damaged
            damage: BaseException = exc
        except ModelHubError as exc:
            if not isinstance(exc.__cause__, sqlite3.DatabaseError) or is_busy(exc.__cause__):
                raise
            damage = exc.__cause__
        self.catalog.recover(damage)  # set aside, re-indexed from the refs: ask again
        return execute(self.catalog.connection(), text, self.resolve, tags, self._version)

    def _possible_dependents(self, vid: str) -> set[str]:
        """Versions whose manifests may point into ``vid`` under the commit policy: the
        other versions of its model (reverse deltas, contexts, keyframe chains) and its
        children in other models (forward deltas, copies)."""
        row = self.catalog.row(vid)
        out = {r["id"] for r in self.catalog.rows(row["model"])} if row else set()
        out |= self.catalog.children(vid)
        return out - {vid}

    def _refresh_rows(self, vids: Iterable[str]) -> None:
        """Re-index versions whose manifest was switched since their row was written (by
        another machine on a shared remote, or a crash between switch and index): prune
        must see every current link."""
        for v in vids:
            moid = self.refs.manifest_of(v)
            row = self.catalog.row(v)
            if moid and (row is None or row["manifest"] != moid):
                self._index(v)

    # ------------------------------------------------------------------- copy
    def copy(self, ref: str | Version, new_model: str, message: str = "") -> Version:
        """Start a new model from a version's weights (the paper's ``dlv copy``): its
        first version holds ``ref``'s state_dict, records ``ref`` as its parent, and
        shares the unchanged tensors' bytes with it, so a fine-tune starts from there."""
        check_name("model", new_model)
        src = self.version(ref)
        if new_model in self.refs.models():
            raise ModelHubError(
                f"model {new_model!r} already exists; copy starts a new model, pick another name "
                "(or commit to the existing one)"
            )
        weights = self.load_state_dict(src.ref)
        return self.commit(
            weights, new_model, parent=src.id, hparams=src.hparams,
            message=message or f"copy of {src.ref}", info={"copied_from": src.ref},
            graph=self.manifest(src.id).extra.get("graph"), expect_number=1,
        )

    # ------------------------------------------------------------------ prune
    def prune(self, ref: str | Version, keys: Iterable[str]) -> Version:
        """Remove top-level entries of a version's checkpoint dict (e.g. its optimizer
        state), keeping its identity, number, metadata and every other entry bit-exact.

        Other versions whose stored data leans on a removed tensor (a delta base, a
        context, a shared copy) are re-encoded first, so no chain breaks; a crash at any
        point leaves every version loadable.
        """
        from modelhub_torch.prune import Pruner

        with self._lock, self._writes("prune"):
            self._sync_index()
            vid = self.resolve(ref)
            self._refresh_rows(self._possible_dependents(vid))
            replaced = Pruner(self, vid, sorted(self.catalog.dependents(vid))).run(set(keys))
            if replaced:
                new_oids = [self.objects.put(new.to_bytes()) for new, _ in replaced]
                self._switch(replaced, new_oids, set())
            return self.version(vid)

    # ---------------------------------------------------------------- archive
    def archive(
        self,
        alpha: float = 2.0,
        *,
        scheme: str = "independent",
        algorithm: str = "pas-mt",
        lossy: dict[str, str] | None = None,
        cold: str | None = None,
        hot_planes: int = 2,
        cold_price: float = 0.25,
        sample_bytes: int = 4 << 20,
        dry_run: bool = False,
    ) -> ArchiveReport:
        """Re-plan how every version is stored: smallest storage such that each snapshot
        recreates within ``alpha`` x its fastest possible time (the paper's PAS plan).

        ``scheme``: a snapshot's recreation cost is the sum ("independent") or the max
        ("parallel") of its tensors' path costs. ``algorithm``: "pas-mt", "pas-pt", "mst",
        "spt" or "last". ``lossy``: ``{ref: "fp16"|"bf16"|"fixed:K"|"quant:K"}`` stores those
        versions' float tensors lossily (opt-in; they load as the rounded values from then
        on). ``cold``: an fsspec URL for a second storage tier; a tensor's planes from
        ``hot_planes`` on may be placed there (its bytes priced at ``cold_price``).
        Every other version loads bit-identical before and after; a crash at any point
        leaves the old or the new layout. ``dry_run`` plans and reports without writing.
        """
        from modelhub_torch.archive import archive

        with self._writes("archive"):
            return archive(
                self, alpha=alpha, scheme=scheme, algorithm=algorithm, lossy=lossy, cold=cold,
                hot_planes=hot_planes, cold_price=cold_price, sample_bytes=sample_bytes, dry_run=dry_run,
            )

    # -------------------------------------------------------------------- load
    def load(
        self,
        ref: str | Version,
        map_location: Any = None,
        weights_only: bool = True,
        progress: bool = False,
    ) -> Any:
        """What ``torch.load`` of the committed object would return, bit for bit
        (``progress=True`` shows a tqdm bar of tensor bytes on stderr)."""
        vid = self.resolve(ref)
        m = self.manifest(vid)
        if not weights_only and m.extra.get("pickle"):
            from modelhub_torch.trust import describe, skeleton_pickle_globals

            warnings.warn(
                f"weights_only=False: unpickling {m.ref} runs code stored in the repository at "
                f"{self.loc.url}; its pickles import {describe(skeleton_pickle_globals(m.skeleton))}",
                ModelHubWarning,
                stacklevel=2,
            )
        live = [i for i, t in enumerate(m.tensors) if t["data"]["kind"] != DROPPED]
        tensors: list[Any] = [None] * len(m.tensors)
        for i, t in zip(live, self._decode_all(vid, m, live, map_location, progress)):
            tensors[i] = t
        return unflatten(m.skeleton, tensors, weights_only=weights_only)

    def load_tensors(self, ref: str | Version, progress: bool = False) -> list[torch.Tensor]:
        """Every tensor a version stores, decoded and checked, without its skeleton: what
        a load costs, and safe on versions holding pickles (nothing is unpickled)."""
        vid = self.resolve(ref)
        m = self.manifest(vid)
        live = [i for i, t in enumerate(m.tensors) if t["data"]["kind"] != DROPPED]
        return self._decode_all(vid, m, live, None, progress)

    def load_state_dict(
        self, ref: str | Version, map_location: Any = None, progress: bool = False
    ) -> dict[str, torch.Tensor]:
        """Only the model weights of a version (``state_dict`` of a checkpoint)."""
        vid = self.resolve(ref)
        m = self.manifest(vid)
        paths = state_dict_paths(m.skeleton)
        if not paths:
            raise ModelHubError(f"{m.ref} holds no state_dict (it is not a model checkpoint)")
        wanted = sorted(set(paths.values()))
        decoded = dict(zip(wanted, self._decode_all(vid, m, wanted, map_location, progress)))
        return {k: decoded[i] for k, i in paths.items()}

    def _decode_all(
        self, vid: str, m: Manifest, indices: Iterable[int], map_location: Any, progress: bool = False
    ) -> list[torch.Tensor]:
        from modelhub_torch.pas.codec import shared_pool

        reader = self.reader()
        indices = list(indices)
        # big tensors are jobs on the tensor pool (reads, decode and checksum overlap, and
        # their chunks spread over the chunk pool); small ones cost less than a thread
        # hand-off, so this thread decodes them meanwhile
        big = sorted(
            (i for i in indices if m.tensors[i]["nbytes"] >= INLINE_BYTES),
            key=lambda i: -m.tensors[i]["nbytes"],
        )
        futures = {i: shared_pool("tensor").submit(reader.decode, vid, i) for i in big}
        with byte_bar(sum(m.tensors[i]["nbytes"] for i in indices), f"load {m.ref}", progress) as bar:
            bits = {}
            for i in indices:
                if i not in futures:
                    bits[i] = reader.decode(vid, i)
                    bar.update(m.tensors[i]["nbytes"])
            for i, f in futures.items():
                bits[i] = f.result()
                bar.update(m.tensors[i]["nbytes"])
        out, used = [], set()
        for i in indices:
            b = bits[i]
            if id(b) in used:  # two records resolved to the same data: give each its own
                b = b.copy()
            used.add(id(b))
            rec = m.tensors[i]
            t = bits_to_tensor(b, rec["dtype"], rec["shape"])
            out.append(_map_location(t, map_location))
        return out

    # ------------------------------------------------------------ maintenance
    def stats(self) -> dict[str, Any]:
        """Raw vs stored bytes for the whole repository, per model and per plane."""
        self._sync_index()
        rows = [Catalog.decode_row(r) for r in self.catalog.rows()]
        per_model: dict[str, dict[str, int]] = {}
        for r in rows:
            pm = per_model.setdefault(r["model"], {"versions": 0, "raw_bytes": 0, "stored_bytes": 0})
            pm["versions"] += 1
            pm["raw_bytes"] += r["raw_bytes"]
            pm["stored_bytes"] += r["stored_bytes"]
        raw = sum(r["raw_bytes"] for r in rows)
        stored = sum(r["stored_bytes"] for r in rows)
        return {
            "versions": len(rows),
            "models": len(per_model),
            "raw_bytes": raw,
            "stored_bytes": stored,
            "ratio": raw / stored if stored else None,
            "planes": self.catalog.plane_totals(),
            "per_model": per_model,
        }

    def verify(self, rebuild_index: bool = False, progress: bool = False, repair: bool = False) -> list[Problem]:
        """Every problem: damaged or missing refs, manifests and objects (re-hashed),
        undecodable versions, unlisted versions, leftover temp files, an index that
        disagrees with the refs (re-indexed on the spot). ``repair`` restores refs from
        manifests and quarantines what cannot be restored (see maintenance.py)."""
        from modelhub_torch.maintenance import verify

        with self._writes("verify --repair" if repair else "verify"):
            return verify(self, rebuild_index=rebuild_index, repair=repair, progress=progress)

    def gc(self, dry_run: bool = False) -> dict[str, int]:
        """Delete objects no kept version needs, temp files and orphan version refs that
        no kept version leans on; refuses (DamagedRepositoryError) while damaged."""
        from modelhub_torch.maintenance import gc

        with self._writes("gc"):
            return gc(self, dry_run=dry_run)

    def _invalidate_all(self) -> None:
        with self._mlock:
            self._manifests.clear()


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _new_version_id(model: str, number: int, created: str) -> str:
    """Stable identity of a version: never derived from its (replaceable) manifest."""
    return hash_bytes(f"{model}\0{number}\0{created}\0{uuid.uuid4().hex}".encode())[:32]


def _map_location(t: torch.Tensor, map_location: Any) -> torch.Tensor:
    if map_location is None:
        return t
    if isinstance(map_location, dict):
        target = map_location.get("cpu")
        return t if target is None else t.to(target)
    if callable(map_location):
        result = map_location(t, "cpu")
        return t if result is None else result
    return t.to(map_location)
