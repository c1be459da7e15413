"""Repository: versions of models stored compactly, loaded back bit for bit.

The one public facade. Each method hands its work to the module that owns that
concern, all of them built on :class:`~modelhub_torch.store.repo.RepoStore`:
ref resolution (resolution.py), commit and publishing (commit.py, publish.py),
the load path (reader.py), prune, archive, and maintenance (verify, gc, stats).

Storage policy at commit (see ARCHITECTURE.md): the newest version of a model is
stored whole (so restoring the latest costs one decode) and its parent is re-encoded
as a delta against it — git's reverse deltas. Every ``keyframe_interval``-th version
stays whole, which bounds every delta chain. A version whose parent belongs to another
model (a fine-tune) is stored as forward deltas where they are smaller.

Importing this module imports neither torch nor numba: commands that only read the
index (list, desc, query, tag, stats) start fast.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from modelhub_torch.errors import ModelHubError
from modelhub_torch.manifest import Manifest
from modelhub_torch.publish import open_store
from modelhub_torch.records import Problem, Version, jsonable
from modelhub_torch.resolution import MIN_ID_PREFIX, resolve
from modelhub_torch.store.catalog import Catalog, is_busy
from modelhub_torch.store.config import (  # noqa: F401 - re-exported for callers
    CONFIG_FILE,
    DEFAULT_SETTINGS,
    LAYOUTS,
    REPO_FORMAT,
    parse_settings,
    validate_settings,
)
from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.store.refs import ANY, RefStore, check_alias, check_name
from modelhub_torch.store.repo import RepoStore

if TYPE_CHECKING:
    import torch

    from modelhub_torch.archive import ArchiveReport
    from modelhub_torch.diffing import VersionDiff
    from modelhub_torch.dql.engine import QueryResult
    from modelhub_torch.exchange import ExportResult, ImportedFile
    from modelhub_torch.inspection import VersionContents
    from modelhub_torch.reader import TensorReader
    from modelhub_torch.repack import RepackReport
    from modelhub_torch.sync.report import SyncReport

__all__ = ["MIN_ID_PREFIX", "Problem", "Repository", "Version", "storage_options_for"]

# remote URL -> the storage options this process last opened it with: a modelhub://
# URL (which has no room for options) reopens that repository with them
_OPENED_WITH: dict[str, dict[str, Any]] = {}


def storage_options_for(url: str) -> dict[str, Any] | None:
    """The storage options a ``Repository`` of ``url`` was opened with in this process
    (None if none): what ``modelhub://`` URLs and the Lightning callbacks reopen it
    with. Other processes (DDP ranks, the CLI) use fsspec's configuration, e.g. the
    ``FSSPEC_S3_*`` environment variables."""
    return _OPENED_WITH.get(url)


class Repository:
    """A model repository on a local path or any fsspec URL.

    ``storage_options``: fsspec's options for a remote location (``key``, ``secret``,
    ``endpoint_url``, ``client_kwargs``...), over fsspec's configuration (the
    ``FSSPEC_S3_*`` environment variables); a cold tier on the same kind of store
    uses them too."""

    last_sync: SyncReport | None = None  # what made a repository returned by clone()

    def __init__(self, path_or_url: str | Any, storage_options: dict[str, Any] | None = None):
        self._store = open_store(path_or_url, storage_options)
        if storage_options:
            _OPENED_WITH[self._store.url] = dict(storage_options)
        self._store.complete_partial = self._complete_partial

    def _complete_partial(self, vid: str) -> bool:
        from modelhub_torch.sync.complete import complete_version

        return complete_version(self._store, vid, storage_options_for)

    @property
    def store(self) -> RepoStore:
        """The store under this repository, once the repacks this process scheduled on
        it have run (background.py): callers never see a half-done layout."""
        from modelhub_torch.background import wait

        wait(self._store.url)
        return self._store

    def wait(self) -> None:
        """Block until this process's background repacks of the repository finished
        (every other method waits for them by itself)."""
        _ = self.store

    @classmethod
    def init(
        cls,
        path_or_url: str | Any,
        *,
        exist_ok: bool = False,
        storage_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Repository:
        """Create a repository (``settings`` override codec defaults, see FORMAT.md)."""
        from modelhub_torch.errors import RepositoryExistsError
        from modelhub_torch.pas.codec import CodecConfig

        for key in ("materialize", "delta"):
            if key in settings and isinstance(settings[key], CodecConfig):
                settings[key] = settings[key].to_json()
        try:
            RepoStore.create(path_or_url, settings, storage_options)
        except RepositoryExistsError:
            if not exist_ok:
                raise
        return cls(path_or_url, storage_options)

    # the parts of the store callers use directly
    @property
    def url(self) -> str:
        return self.store.url

    @property
    def loc(self) -> Location:
        return self.store.loc

    @property
    def settings(self) -> dict[str, Any]:
        return self.store.settings

    @property
    def objects(self) -> ObjectStore:
        return self.store.objects

    @property
    def refs(self) -> RefStore:
        return self.store.refs

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    @property
    def damaged(self) -> dict[str, str]:
        """Versions this process found damaged (ref -> why), left out of listings."""
        return self.store.damaged

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    # --------------------------------------------------------------- manifests
    def manifest(self, version_id: str) -> Manifest:
        """The current manifest of a version id (its stored layout and metadata)."""
        return self.store.manifest(version_id)

    def reader(self, cache_bytes: int = 1 << 30) -> TensorReader:
        """A fresh decoder (its base cache lives as long as it does)."""
        from modelhub_torch.reader import open_reader

        return open_reader(self.store, cache_bytes)

    # -------------------------------------------------------------------- refs
    def models(self) -> list[str]:
        return sorted({r["model"] for r in self.catalog.rows()})

    def versions(self, model: str | None = None) -> list[Version]:
        self.store.sync_index()
        return [self.store.version_of_row(r) for r in self.catalog.rows(model)]

    def version(self, ref: str | Version) -> Version:
        """One version's metadata, checked against its manifest (the index is a cache:
        a row that disagrees is re-indexed, with a warning)."""
        return self.store.checked_version(self.resolve(ref))

    def resolve(self, ref: str | Version) -> str:
        """Version id of ``model@vN``, ``model@latest``, ``model@<alias>``, ``model@<id
        prefix>``, a bare model name (its latest) or a bare id prefix."""
        return resolve(self.store, ref)

    def tag(self, ref: str | Version, alias: str, *, expect: str | Version | object | None = ANY) -> Version:
        """Point ``model@alias`` at a version (moves an existing alias).

        The move is a compare-and-swap on what the alias held (its ETag on S3), so two
        writers moving one alias never interleave unseen; by default the last one
        wins. ``expect``: the ref the alias must point at now (None: it must not exist
        yet); if another writer moved it, ``ConflictError`` and nothing changes."""
        vid = self.resolve(ref)
        model = self.store.cached_manifest(vid).model
        check_alias(alias)
        if expect is not ANY and expect is not None:
            expect = self.resolve(expect)  # type: ignore[arg-type]
        with self.store.lock, self.store.writes(f"tagging {model}@{alias}"):
            self.refs.set_tag(model, alias, vid, expect)
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
        architecture: dict[str, Any] | None = None,
    ) -> Version:
        """Store ``obj`` (state_dict, checkpoint dict or nn.Module) as a new version
        (``progress=True`` shows a tqdm bar of tensor bytes on stderr).

        ``info``: JSON facts kept with the version (the Lightning callback records epoch,
        step, module class and library versions there). ``expect_number``: the number
        the caller already announced for this version (e.g. to other DDP ranks); the
        commit fails instead of taking another number if someone else committed first.
        ``graph``: the network (an ``nn.Module`` to capture, or a graph already captured
        by ``modelhub_torch.graph.capture_graph``) for structural queries; committing an
        ``nn.Module`` records its graph by itself, and its rebuildable architecture
        (``load_module``; ``architecture``: one already captured by
        ``modelhub_torch.architecture.capture_architecture``). NaN and infinite metrics
        are kept.
        """
        import torch

        from modelhub_torch.commit import CommitRequest, commit_version
        from modelhub_torch.skeleton import flatten

        check_name("model", model)
        if isinstance(obj, torch.nn.Module):
            graph = obj if graph is None else graph
            obj = obj.state_dict()
        if isinstance(graph, torch.nn.Module):
            from modelhub_torch.architecture import capture_architecture
            from modelhub_torch.graph import capture_graph

            architecture = architecture or capture_architecture(graph)
            graph = capture_graph(graph)
        request = CommitRequest(
            flat=flatten(obj, allow_pickle=allow_pickle), model=model,
            parent=parent,
            metrics=jsonable(metrics, "metrics"), hparams=jsonable(hparams, "hparams"),
            message=message, info=jsonable(info, "info"), graph=graph or None,
            expect_number=expect_number, progress=progress, architecture=architecture,
        )
        store = self.store
        version = commit_version(store, request)
        from modelhub_torch.background import after_commit

        after_commit(store, [model])
        return version

    # ------------------------------------------------------------------ query
    def query(
        self,
        text: str,
        *,
        executor: str = "embedded",
        workers: int = 1,
        imports: Iterable[str] = (),
        dry_run: bool = False,
    ) -> QueryResult:
        """Run a DQL statement (docs/DQL.md): ``select`` finds versions (network
        predicates use the recorded graphs, never the weights); ``slice`` and
        ``construct`` commit derived networks as new versions; ``evaluate`` trains
        trials over a grid and keeps the best (``executor`` "embedded", on ``workers``
        processes, or "ray"; ``imports``: modules a config's ``class_path`` may name;
        ``dry_run``: list the trials, train nothing). On a hub URL the hub runs it
        (select only)."""
        from modelhub_torch.dql.run import Options, run_statement
        from modelhub_torch.hub.fs import is_hub
        from modelhub_torch.hub.remote_query import query_hub

        if is_hub(self.store):  # runs on the hub's own catalog
            return query_hub(self.store, text)  # type: ignore[return-value]
        self.store.sync_index()

        def tags() -> Iterable[tuple[str, str]]:
            for model in self.refs.models():
                for alias, vid in self.refs.tags(model).items():
                    yield vid, alias

        options = Options(executor, int(workers), tuple(imports), bool(dry_run))

        def run() -> QueryResult:
            return run_statement(self.store, text, tags, options)

        try:
            return run()
        except sqlite3.DatabaseError as exc:  # the index file itself is damaged
            damage: BaseException = exc
        except ModelHubError as exc:
            if not isinstance(exc.__cause__, sqlite3.DatabaseError) or is_busy(exc.__cause__):
                raise
            damage = exc.__cause__
        self.catalog.recover(damage)  # set aside, re-indexed from the refs: ask again
        return run()

    def save_query(self, name: str, text: str) -> None:
        """Save a DQL statement as ``name`` (checked first), so other statements can run on
        its results: ``evaluate m from "name" ...``."""
        from modelhub_torch.dql.saved import save_query

        save_query(self.store, name, text)

    def saved_queries(self) -> dict[str, str]:
        """The statements saved in this repository, by name."""
        from modelhub_torch.dql.saved import load_query, saved_queries

        return {name: load_query(self.store, name) for name in saved_queries(self.store)}

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
            architecture=self.manifest(src.id).extra.get("architecture"),
        )

    # ------------------------------------------------------------------ prune
    def prune(self, ref: str | Version, keys: Iterable[str]) -> Version:
        """Remove top-level entries of a version's checkpoint dict (e.g. its optimizer
        state), keeping its identity, number, metadata and every other entry bit-exact.

        Other versions whose stored data leans on a removed tensor (a delta base, a
        context, a shared copy) are re-encoded first, so no chain breaks; a crash at any
        point leaves every version loadable.
        """
        from modelhub_torch.prune import prune

        return prune(self.store, ref, set(keys))

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

        partial = [r["model"] + "@v" + str(r["number"]) for r in self.catalog.rows()
                   if self.store.manifest(r["id"]).partial]
        if partial:
            raise ModelHubError(
                f"archive re-plans every version, but {', '.join(partial[:5])} hold only their top byte "
                "planes here (pulled with planes=K); fetch the rest first (repo.complete(ref), or "
                "'modelhub pull SOURCE REF' without --planes)"
            )
        with self.store.writes("archive"):
            return archive(
                self.store, alpha=alpha, scheme=scheme, algorithm=algorithm, lossy=lossy, cold=cold,
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
        from modelhub_torch.reader import load_version

        return load_version(self.store, self.resolve(ref), map_location, weights_only, progress)

    def load_module(self, ref: str | Version) -> torch.nn.Module:
        """The network of version ``ref`` rebuilt from its recorded architecture, with its
        weights, in eval mode — without the user's class and without unpickling or
        running anything stored: only allow-listed ``torch.nn`` layers, torch functions
        and tensor methods are built (modelhub_torch/architecture.py)."""
        from modelhub_torch.architecture import build_module

        v = self.version(ref)
        arch = self.manifest(v.id).extra.get("architecture")
        if arch is None:
            raise ModelHubError(
                f"{v.ref} was committed without its network (a state_dict or a checkpoint file): "
                "commit the nn.Module itself (or pass graph=module) to record one, or load its "
                "weights into your own class with load_state_dict"
            )
        module = build_module(arch)
        module.load_state_dict(self.load_state_dict(v.ref))
        return module.eval()

    def load_tensors(self, ref: str | Version, progress: bool = False) -> list[torch.Tensor]:
        """Every tensor a version stores, decoded and checked, without its skeleton: what
        a load costs, and safe on versions holding pickles (nothing is unpickled)."""
        from modelhub_torch.reader import load_all_tensors

        return load_all_tensors(self.store, self.resolve(ref), progress)

    def load_state_dict(
        self, ref: str | Version, map_location: Any = None, progress: bool = False
    ) -> dict[str, torch.Tensor]:
        """Only the model weights of a version (``state_dict`` of a checkpoint)."""
        from modelhub_torch.reader import load_weights

        return load_weights(self.store, self.resolve(ref), map_location, progress)

    # ------------------------------------------------- files, diff, inspection
    def export(self, ref: str | Version, path: str | Any, *, force: bool = False, allow_pickle: bool = False,
               progress: bool = False) -> ExportResult:
        """Write a version as a file torch.load (``.pt``/``.ckpt``) or safetensors reads
        (``.safetensors``: the state_dict only; what it leaves out is listed)."""
        from modelhub_torch.exchange import export_version

        return export_version(self, ref, path, force=force, allow_pickle=allow_pickle, progress=progress)

    def import_files(self, paths: Iterable[str | Any], model: str, *, base: str | Any | None = None,
                     allow_pickle: bool = False, progress: bool = False) -> list[ImportedFile]:
        """Commit checkpoint files (``.pt/.ckpt/.pth/.safetensors``) as the next versions
        of ``model``, in the order given, with the metrics and hparams a Lightning
        checkpoint carries (``base``: the folder their messages name them relative to)."""
        from modelhub_torch.exchange import import_files

        return import_files(self, list(paths), model, base=base, allow_pickle=allow_pickle, progress=progress)

    def diff(self, a: str | Version, b: str | Version, *, allow_pickle: bool = False,
             progress: bool = False) -> VersionDiff:
        """What differs between two versions: metadata, network and tensor by tensor
        (weights matched by state-dict name when the two nest them differently)."""
        from modelhub_torch.diffing import diff_versions

        return diff_versions(self, a, b, allow_pickle=allow_pickle, progress=progress)

    def describe(self, ref: str | Version) -> VersionContents:
        """How a version is stored, tensor by tensor and plane by plane."""
        from modelhub_torch.inspection import describe_version

        return describe_version(self, ref)

    # ------------------------------------------------------------ maintenance
    def stats(self) -> dict[str, Any]:
        """Raw vs stored bytes for the whole repository, per model and per plane."""
        from modelhub_torch.maintenance import stats

        return stats(self.store)

    def verify(self, rebuild_index: bool = False, progress: bool = False, repair: bool = False) -> list[Problem]:
        """Every problem: damaged or missing refs, manifests and objects (re-hashed),
        undecodable versions, unlisted versions, leftover temp files, an index that
        disagrees with the refs (re-indexed on the spot). ``repair`` restores refs from
        manifests and quarantines what cannot be restored (see maintenance.py)."""
        from modelhub_torch.maintenance import verify

        with self.store.writes("verify --repair" if repair else "verify"):
            return verify(self.store, rebuild_index=rebuild_index, repair=repair, progress=progress)

    def gc(self, dry_run: bool = False, repack: bool = False, grace: float | None = None) -> dict[str, Any]:
        """Delete objects no kept version needs, temp files and orphan version refs that
        no kept version leans on; refuses (DamagedRepositoryError) while damaged.
        ``repack=True`` first does what commits defer (see :meth:`repack`).
        ``grace``: seconds; what was written more recently stays (default: 0 on a
        local disk, an hour on remote stores, where other processes may be committing
        while gc runs)."""
        from modelhub_torch.maintenance import gc
        from modelhub_torch.repack import RepackReport

        report: dict[str, Any] = {}
        if repack:
            r = self.repack() if not dry_run else RepackReport()
            report = {"repacked_deltas": r.deltas, "repacked_versions": r.versions, "repacked_tensors": r.tensors,
                      "repack_bytes_before": r.bytes_before, "repack_bytes_after": r.bytes_after}
        with self.store.writes("gc"):
            window = None if grace is None else datetime.timedelta(seconds=grace)
            return {**report, **gc(self.store, dry_run=dry_run, grace=window)}

    def repack(self, models: list[str] | None = None) -> RepackReport:
        """The coding commits leave out for speed (a background thread does it after
        each commit by default): versions still stored whole become reverse deltas of
        their child, and plain deltas are re-coded with the neighbouring delta as
        context where smaller — all keeping every version within ``max_load_factor``.
        Safe to interrupt; ``gc`` reclaims what an interrupted repack wrote."""
        from modelhub_torch.repack import repack

        return repack(self.store, models)

    # -------------------------------------------------------------------- sync
    def push(self, remote: str | Any | Repository, refs: Iterable[str] | None = None, *,
             storage_options: dict[str, Any] | None = None, progress: bool = False) -> SyncReport:
        """Send the versions ``refs`` names (model names, ``m@v3``, ``m@best``; default:
        everything) to another repository — a path, an fsspec URL (``storage_options``
        for it) or a Repository; created with this one's settings when missing — moving
        only what it lacks, as deltas against versions it holds. Aliases follow as with
        git's remote-tracking refs; a divergence raises DivergedError, nothing written."""
        from modelhub_torch.sync.transfer import transfer

        dst = _other_store(remote, storage_options, like=self.store)
        report = transfer(self.store, dst, _refs(refs), progress=progress, local=self.store)
        _after_receive(dst, report)
        return report

    def pull(self, remote: str | Any | Repository, refs: Iterable[str] | None = None, *,
             planes: int | None = None, storage_options: dict[str, Any] | None = None,
             progress: bool = False) -> SyncReport:
        """Fetch versions from another repository (see :meth:`push`). ``planes=K`` fetches
        only the top K byte planes of each float tensor: enough for progressive
        inference; a full load fetches the rest from ``remote`` when first needed."""
        from modelhub_torch.sync.transfer import transfer

        report = transfer(_other_store(remote, storage_options), self.store, _refs(refs), planes=planes,
                          progress=progress)
        _after_receive(self.store, report)
        return report

    @classmethod
    def clone(cls, src: str | Any | Repository, dst: str | Any, refs: Iterable[str] | None = None, *,
              planes: int | None = None, storage_options: dict[str, Any] | None = None,
              progress: bool = False) -> Repository:
        """A new repository at ``dst`` with the source's settings and its versions
        (those ``refs`` names; all by default). Refuses an existing repository at ``dst``.
        ``storage_options`` apply to whichever side is a remote URL."""
        from modelhub_torch.errors import RepositoryExistsError

        source = _other_store(src, storage_options)
        if Location(dst, storage_options).exists(CONFIG_FILE):
            raise RepositoryExistsError(f"a modelhub repository already exists at {dst}; use pull to add versions to it")
        repo = cls.init(dst, storage_options=storage_options, **_settings_of(source))
        repo.last_sync = repo.pull(source, refs, planes=planes, progress=progress)
        return repo

    def complete(self, ref: str | Version) -> bool:
        """Fetch the planes a version pulled with ``planes=K`` lacks from the repository it
        came from (loads do this by themselves); False when it was complete."""
        from modelhub_torch.sync.complete import complete_version

        return complete_version(self.store, self.resolve(ref), storage_options_for)


def _other_store(remote: Any, storage_options: dict[str, Any] | None = None, like: RepoStore | None = None) -> RepoStore:
    """The store of a transfer's other side: a Repository, a RepoStore, a path or URL
    (opened with ``storage_options``, else those this process opened it with before).
    ``like``: a push creates a missing destination with the sender's settings."""
    if isinstance(remote, Repository):
        return remote.store
    if isinstance(remote, RepoStore):
        return remote
    options = storage_options or storage_options_for(str(remote))
    if like is not None and not Location(remote, options).exists(CONFIG_FILE):
        # exist_ok: another pusher may create it at the same moment (same settings, no harm)
        return Repository.init(remote, exist_ok=True, storage_options=options, **_settings_of(like)).store
    return Repository(remote, options).store


def _settings_of(store: RepoStore) -> dict[str, Any]:
    """Settings a copy of a repository starts with: its codecs and policies (not its
    cold tier, a location of its own, nor the features its versions happen to use)."""
    return {k: v for k, v in store.settings.items() if k in DEFAULT_SETTINGS and k not in ("cold", "features")}


def _refs(refs: Iterable[str] | None) -> list[str] | None:
    if refs is None or isinstance(refs, str):
        return [refs] if isinstance(refs, str) else None
    return list(refs) or None


def _after_receive(store: RepoStore, report: SyncReport) -> None:
    """Received versions get the destination's background repack, like commits — on a
    local destination only: a repack reads back and rewrites what it re-encodes, which
    on a remote store would move each version over the network again (run
    'modelhub gc --repack' on a machine near the store instead)."""
    models = sorted({ref.split("@", 1)[0] for ref in report.versions})
    if models and store.loc.is_local and store.settings.get("repack", "background") == "background":
        from modelhub_torch.background import schedule

        schedule(store, models)
