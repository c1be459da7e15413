"""Repository: versions of models stored compactly, loaded back bit for bit.

Storage policy at commit (see ARCHITECTURE.md): the newest version of a model is
stored whole (so restoring the latest costs one decode) and its parent is re-encoded
as a delta against it — git's reverse deltas. Every ``keyframe_interval``-th version
stays whole, which bounds every delta chain. A version whose parent belongs to another
model (a fine-tune) is stored as forward deltas where they are smaller.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import threading
import uuid
from collections.abc import Iterable
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
    RefNotFoundError,
    RepositoryExistsError,
    RepositoryNotFoundError,
)
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.pas.codec import CodecConfig
from modelhub_torch.pas.dtypes import bits_to_tensor
from modelhub_torch.progress import byte_bar
from modelhub_torch.reader import TensorReader
from modelhub_torch.skeleton import flatten, state_dict_paths, unflatten
from modelhub_torch.store.catalog import Catalog, catalog_path
from modelhub_torch.store.location import Location
from modelhub_torch.store.lock import RepoLock
from modelhub_torch.store.objects import ObjectStore, hash_bytes
from modelhub_torch.store.refs import RefStore, check_name

CONFIG_FILE = "modelhub.json"
INLINE_BYTES = 1 << 20  # tensors smaller than this are coded by the calling thread
REPO_FORMAT = 1

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
LAYOUTS = ("exp-first", "ieee")


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

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`Repository.verify`."""

    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}"


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
        try:
            self.settings = {**DEFAULT_SETTINGS, **json.loads(self.loc.read(CONFIG_FILE))}
        except json.JSONDecodeError as exc:
            raise FormatError(f"{self.loc.path(CONFIG_FILE)} is not valid JSON: {exc}") from exc
        if self.settings.get("format") != REPO_FORMAT:
            raise FormatError(
                f"repository format {self.settings.get('format')} is not supported by this "
                f"modelhub_torch (reads {REPO_FORMAT})"
            )
        cold = self.settings.get("cold")
        self.objects = ObjectStore(self.loc, Location(cold) if cold else None)
        self.refs = RefStore(self.loc)
        self._lock = RepoLock(self.loc)
        self._manifests: dict[str, tuple[str, Manifest]] = {}
        self._mlock = threading.Lock()
        # manifests of an unfinished archive this process could not roll forward itself
        # (a read-only location): they are the current ones
        self._pending: dict[str, str] = {}
        self.catalog = Catalog(catalog_path(self.loc))
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
        for part in ("objects", "refs", "tmp"):
            loc.makedirs(part)
        for key in ("materialize", "delta"):
            if key in settings and isinstance(settings[key], CodecConfig):
                settings[key] = settings[key].to_json()
        unknown = set(settings) - set(DEFAULT_SETTINGS)
        if unknown:
            raise ModelHubError(f"unknown repository settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
        config = {**DEFAULT_SETTINGS, **settings}
        if config["layout"] not in LAYOUTS:
            raise ModelHubError(f"layout must be one of {LAYOUTS}, got {config['layout']!r}")
        loc.write_atomic(CONFIG_FILE, json.dumps(config, indent=2).encode())
        return cls(path_or_url)

    @property
    def url(self) -> str:
        return self.loc.url

    def __repr__(self) -> str:
        return f"Repository({self.loc.url!r})"

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
                    vid = self.refs.version_at(model, n)
                    if vid:
                        self._index(vid)
        stale = {vid for key, vid in known.items() if key not in live}
        if stale:
            self.catalog.remove(stale)

    def _index(self, vid: str) -> None:
        m = self.manifest(vid)
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
        )

    def version(self, ref: str) -> Version:
        vid = self.resolve(ref)
        row = self.catalog.row(vid)
        if row is None:
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
        if which[:1] in ("v", "V") and which[1:].isdigit():
            n = int(which[1:])
            if n in listed:
                return self._version_at(ref, model, n)
            self._no_such(ref, model, [f"{model}@v{k}" for k in listed])
        tags = self.refs.tags(model)
        if which in tags:
            return tags[which]
        # an empty suffix ("m@") is no id prefix: it would match every version
        numbers = self.refs.numbers(model) if which else {}
        ids = {vid for vid in numbers.values() if vid.startswith(which.lower())}
        if len(ids) == 1:
            return ids.pop()
        if len(ids) > 1:
            raise AmbiguousRefError(f"{ref!r} matches {len(ids)} versions; give more of the id")
        self._no_such(
            ref, model, [f"{model}@{t}" for t in tags] + [f"{model}@v{k}" for k in listed] + [f"{model}@latest"]
        )
        raise AssertionError("unreachable")

    def _version_at(self, ref: str, model: str, number: int) -> str:
        vid = self.refs.version_at(model, number)
        if vid is None:  # removed between the listing and the read
            raise RefNotFoundError(f"{ref!r} disappeared while it was being resolved; retry")
        return vid

    def _by_prefix(self, ref: str, prefix: str) -> str:
        ids = self.catalog.ids_with_prefix(prefix.lower()) if len(prefix) >= 4 else []
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
        check_name("alias", alias)
        if alias.startswith(("v", "V")) and alias[1:].isdigit():
            raise ModelHubError(f"alias {alias!r} would shadow version numbers; pick another name")
        with self._lock:
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
        with self._lock:
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
        self.catalog.upsert(m, moid, self._stored_bytes(m, moid))
        self._switch(replaced, new_oids, {moid, *m.objects()})
        return self.version(m.id)

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

        with self._lock:
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
        live = [i for i, t in enumerate(m.tensors) if t["data"]["kind"] != DROPPED]
        tensors: list[Any] = [None] * len(m.tensors)
        for i, t in zip(live, self._decode_all(vid, m, live, map_location, progress)):
            tensors[i] = t
        return unflatten(m.skeleton, tensors, weights_only=weights_only)

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

    def verify(self, rebuild_index: bool = False, progress: bool = False) -> list[Problem]:
        """Re-hash every object and decode every version; optionally rebuild the index."""
        problems: list[Problem] = []
        from tqdm.auto import tqdm

        live: dict[str, str] = {}
        for model in self.refs.models():
            for n, vid in self.refs.numbers(model).items():
                live[vid] = f"{model}@v{n}"
        referenced: set[str] = set()
        for vid in live:
            moid = self.refs.manifest_of(vid)
            if moid is None:
                problems.append(Problem("missing-manifest-ref", live[vid], "refs/versions entry missing"))
                continue
            referenced.add(moid)
            try:
                referenced.update(self.manifest(vid).objects())
            except ModelHubError as exc:
                problems.append(Problem("bad-manifest", live[vid], str(exc)))
        for oid in tqdm(sorted(referenced), desc="objects", disable=not progress, unit="obj"):
            if not self.objects.exists(oid):
                problems.append(Problem("missing-object", oid, "referenced but absent"))
            elif not self.objects.check(oid):
                problems.append(Problem("corrupt-object", oid, "bytes do not hash to the name"))
        # newest first, through one reader: reverse deltas point at newer versions, so
        # each base is decoded (and its digest checked) once and found in the cache
        reader = self.reader()

        def newest_first(kv: tuple[str, str]) -> tuple[str, int]:
            model, _, n = kv[1].rpartition("@v")
            return model, -int(n)

        for vid, ref in tqdm(sorted(live.items(), key=newest_first), desc="versions", disable=not progress, unit="ver"):
            try:
                m = self.manifest(vid)
                for i, rec in enumerate(m.tensors):
                    if rec["data"]["kind"] != DROPPED:
                        reader.decode(vid, i)
            except ModelHubError as exc:
                problems.append(Problem("undecodable-version", ref, str(exc)))
        if rebuild_index:
            self.catalog.clear()
            for vid in live:
                try:
                    self._index(vid)
                except ModelHubError as exc:
                    problems.append(Problem("unindexable-version", live[vid], str(exc)))
        return problems

    def gc(self, dry_run: bool = False) -> dict[str, int]:
        """Delete objects no live version references, temp files and orphan version refs."""
        with self._lock:
            live = {vid for m in self.refs.models() for vid in self.refs.numbers(m).values()}
            keep: set[str] = set()
            for vid in live:
                moid = self.refs.manifest_of(vid)
                if moid:
                    keep.add(moid)
                    keep.update(self.manifest(vid).objects())
            removed = freed = 0
            for oid in list(self.objects):
                if oid not in keep:
                    freed += self.objects.size(oid)
                    removed += 1
                    if not dry_run:
                        self.objects.delete(oid)
            orphans = [v for v in self.refs.version_ids() if v not in live]
            temps = self.loc.listdir("tmp")
            if not dry_run:
                for v in orphans:
                    self.loc.delete(f"refs/versions/{v}")
                for t in temps:
                    self.loc.delete(f"tmp/{t}")
            return {"objects_removed": removed, "bytes_freed": freed, "orphan_refs": len(orphans), "temp_files": len(temps)}


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
