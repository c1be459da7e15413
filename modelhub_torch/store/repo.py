"""What a repository *is* on its location, under the ``Repository`` facade.

``RepoStore`` owns the parts every operation shares — the objects, the refs, the
manifest cache, the writers' lock, the catalog (the index, a cache of the manifests),
the settings in modelhub.json — and the bookkeeping between them (indexing, damage
notes). Commit, prune, archive, maintenance and sync take a ``RepoStore``; none of them
needs the facade, and nothing here imports anything above the store.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from modelhub_torch.errors import (
    ConflictError,
    CorruptObjectError,
    FormatError,
    ModelHubError,
    ModelHubWarning,
    RefNotFoundError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    WriteFailedError,
)
from modelhub_torch.manifest import Manifest
from modelhub_torch.records import Version
from modelhub_torch.store.catalog import Catalog, catalog_path, row_disagreements
from modelhub_torch.store.config import (
    CONFIG_FILE,
    DEFAULT_SETTINGS,
    FEATURES_KEY,
    features_to_record,
    parse_settings,
    validate_settings,
)
from modelhub_torch.store.location import Location
from modelhub_torch.store.lock import RepoLock
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.store.refs import CONFLICT_ATTEMPTS, RefStore


class RepoStore:
    """Objects, refs, manifests, lock, index and settings of one repository location."""

    def __init__(self, path_or_url: str | Any, storage_options: dict[str, Any] | None = None):
        self.loc = Location(path_or_url, storage_options)
        try:  # one read, no existence check first (a request each on an object store)
            raw = self.loc.read(CONFIG_FILE)
        except FileNotFoundError:
            raise RepositoryNotFoundError(
                f"no modelhub repository at {self.loc.url}; create one with "
                f"Repository.init({str(path_or_url)!r}) or 'modelhub init'"
            ) from None
        self.settings = parse_settings(raw)
        cold = self.settings.get("cold")
        self.objects = ObjectStore(self.loc, self.location_for(cold) if cold else None)
        self.objects.find_cold = self._cold_tier_now
        self.refs = RefStore(self.loc)
        self.lock = RepoLock(self.loc)
        self._manifests: dict[str, tuple[str, Manifest]] = {}
        self._mlock = threading.Lock()
        self._pins = threading.local()  # see pinned()
        # manifests of an unfinished archive this process could not roll forward itself
        # (a read-only location): they are the current ones
        self.pending: dict[str, str] = {}
        # versions found damaged by this process (ref -> why): left out of listings,
        # reported once as a warning; 'modelhub verify' says more
        self.damaged: dict[str, str] = {}
        self.catalog = Catalog(catalog_path(self.loc), on_reset=self.sync_index)
        # fetches the rest of a version pulled with only its top planes (set by the
        # facade to sync/complete.py; readers raise PartialVersionError without it)
        self.complete_partial: Any = None

    @staticmethod
    def create(path_or_url: str | Any, settings: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
        """Lay out a new repository (``settings`` over the defaults, checked first).
        modelhub.json is created only if absent, so two racing inits make one."""
        loc = Location(path_or_url, storage_options)
        if loc.exists(CONFIG_FILE):
            raise RepositoryExistsError(f"a modelhub repository already exists at {loc.url}")
        unknown = set(settings) - set(DEFAULT_SETTINGS)
        if unknown:
            raise ModelHubError(f"unknown repository settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
        config = validate_settings({**DEFAULT_SETTINGS, **settings})
        for part in ("objects", "refs", "tmp"):
            loc.makedirs(part)
        if loc.create_exclusive(CONFIG_FILE, json.dumps(config, indent=2).encode()) is None:
            raise RepositoryExistsError(f"a modelhub repository already exists at {loc.url}")

    def _cold_tier_now(self) -> Location | None:
        """The cold tier modelhub.json names now (None if none, or unreadable)."""
        try:
            cold = parse_settings(self.loc.read(CONFIG_FILE)).get("cold")
        except (OSError, ModelHubError):
            return None
        return self.location_for(cold) if cold else None

    def location_for(self, url: str) -> Location:
        """Another location (the cold tier) with this one's storage options when it is
        on the same kind of store."""
        return Location(url, self.loc.options_for(url))

    @property
    def url(self) -> str:
        return self.loc.url

    def update_settings(self, **changes: Any) -> None:
        """Change keys of modelhub.json (validated first: a bad value never reaches the
        file); other keys stay as the file has them. The file is replaced only if
        nobody changed it since it was read (another process on a shared remote may be
        recording a feature too); on a conflict it is read again and the change redone."""
        for _ in range(CONFLICT_ATTEMPTS):
            raw, etag = self.loc.read_with_etag(CONFIG_FILE)
            config = validate_settings({**json.loads(raw), **changes})
            if self.loc.replace_if_match(CONFIG_FILE, json.dumps(config, indent=2).encode(), etag) is not None:
                break
        else:
            raise ConflictError(
                f"{CONFIG_FILE} of {self.loc.url} kept changing under this write "
                f"({CONFLICT_ATTEMPTS} attempts); retry"
            )
        self.settings = parse_settings(self.loc.read(CONFIG_FILE))

    def record_features(self, manifests: Iterable[Manifest]) -> None:
        """Name in modelhub.json the format features these manifests use that it does
        not name yet — before they become visible, so an older reader refuses the
        repository clearly instead of meeting an unknown frame."""
        for m in manifests:
            new = features_to_record(self.settings, m)
            if new is not None:
                self.update_settings(**{FEATURES_KEY: new})

    @contextlib.contextmanager
    def writes(self, what: str) -> Iterator[None]:
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
    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Within this block, on this thread, a manifest is read once and then used
        without reading its ref again (a request each on a remote store): for a
        rewrite holding the lock or the model's lease, which switches those refs itself
        (``switch`` invalidates them). The cache starts empty, so nothing switched
        before the block is trusted; one switched by someone else meanwhile (another
        model's) makes a read miss a pack, and the reader's retry forgets the cache."""
        depth = getattr(self._pins, "depth", 0)
        if not depth:
            self.invalidate_all()
        self._pins.depth = depth + 1
        try:
            yield
        finally:
            self._pins.depth = depth

    def manifest(self, version_id: str) -> Manifest:
        """The current manifest of a version (cached while its ref is unchanged)."""
        if getattr(self._pins, "depth", 0) and version_id not in self.pending:
            with self._mlock:
                hit = self._manifests.get(version_id)
            if hit is not None:
                return hit[1]
        moid = self.pending.get(version_id) or self.refs.manifest_of(version_id)
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

    def cached_manifest(self, version_id: str) -> Manifest:
        """The cached manifest without re-reading the ref (a reader's hot path; a reader
        that finds a pack gone invalidates and asks again)."""
        with self._mlock:
            hit = self._manifests.get(version_id)
        return hit[1] if hit is not None else self.manifest(version_id)

    def invalidate(self, version_id: str) -> None:
        with self._mlock:
            self._manifests.pop(version_id, None)

    def invalidate_all(self) -> None:
        with self._mlock:
            self._manifests.clear()

    def remember(self, version_id: str, moid: str, m: Manifest) -> None:
        """Cache a manifest this process just wrote (no read back of what it holds)."""
        with self._mlock:
            self._manifests[version_id] = (moid, m)

    def stored_bytes(self, m: Manifest, moid: str | None, manifest_size: int | None = None) -> int:
        """Bytes a version's own objects take: its packs and its manifest (``manifest_size``
        when the caller knows it, else asked of the store)."""
        size = sum(m.plane_bytes())
        if manifest_size is not None:
            size += manifest_size
        elif moid:
            try:
                size += self.objects.size(moid)
            except CorruptObjectError:
                pass
        return size

    # --------------------------------------------------------------- the index
    def sync_index(self) -> dict[str, list[int]]:
        """Index versions that refs know and the catalog does not (after a crash or a
        concurrent commit), and drop rows whose versions are gone. Costs one directory
        listing per model; ref files are read only for versions the index lacks.
        Returns what was listed: each model's version numbers."""
        known = self.catalog.numbered()
        live: set[tuple[str, int]] = set()
        listed: dict[str, list[int]] = {}
        for model in self.refs.models():
            listed[model] = self.refs.listed_numbers(model)
            for n in listed[model]:
                live.add((model, n))
                if (model, n) not in known:
                    self._index_numbered(model, n)
        stale = {vid for key, vid in known.items() if key not in live}
        if stale:
            self.catalog.remove(stale)
        return listed

    def _index_numbered(self, model: str, number: int) -> None:
        """Index ``model@vN``; a damaged version is left out and reported once, so it
        never makes the rest of the repository unusable."""
        try:
            vid = self.refs.version_at(model, number)
            if vid:
                self.index(vid, slot=(model, number))
        except ModelHubError as exc:
            self.note_damage(f"{model}@v{number}", str(exc))

    def note_damage(self, ref: str, why: str) -> None:
        """Remember a damaged version and warn once about it."""
        if ref not in self.damaged:
            self.damaged[ref] = why
            warnings.warn(
                f"{ref} is damaged and left out ({' '.join(why.split())[:200]}); "
                "'modelhub verify' says what is affected, 'modelhub verify --repair' restores "
                "or quarantines it",
                ModelHubWarning,
                stacklevel=4,
            )

    def index(self, vid: str, slot: tuple[str, int] | None = None) -> None:
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
        self.catalog.upsert(m, moid or "", self.stored_bytes(m, moid))

    def refresh_rows(self, vids: Iterable[str]) -> None:
        """Re-index versions whose manifest was switched since their row was written (by
        another machine on a shared remote, or a crash between switch and index)."""
        for v in vids:
            moid = self.refs.manifest_of(v)
            row = self.catalog.row(v)
            if moid and (row is None or row["manifest"] != moid):
                self.index(v)

    def possible_dependents(self, vid: str) -> set[str]:
        """Versions whose manifests may point into ``vid`` under the commit policy: the
        other versions of its model (reverse deltas, contexts, keyframe chains) and its
        children in other models (forward deltas, copies)."""
        row = self.catalog.row(vid)
        out = {r["id"] for r in self.catalog.rows(row["model"])} if row else set()
        out |= self.catalog.children(vid)
        return out - {vid}

    # ---------------------------------------------------------------- versions
    def version_of_row(self, row: Any) -> Version:
        """A Version from its index row."""
        d = Catalog.decode_row(row)
        parent = None
        if d["parent"]:
            prow = self.catalog.row(d["parent"])
            parent = f"{prow['model']}@v{prow['number']}" if prow else d["parent"]
        return Version(
            model=d["model"], number=d["number"], id=d["id"], ref=f"{d['model']}@v{d['number']}",
            parent=parent, created_at=d["created_at"], metrics=d["metrics"], hparams=d["hparams"],
            message=d["message"], raw_bytes=d["raw_bytes"], stored_bytes=d["stored_bytes"],
            info=d["info"], holds_pickle=bool(d["pickle"]),
            resumable=None if d["resumable"] is None else bool(d["resumable"]), lossy=d["lossy"],
        )

    def checked_version(self, vid: str) -> Version:
        """One version's metadata, checked against its manifest (the index is a cache:
        a row that disagrees is re-indexed, with a warning)."""
        m = self.manifest(vid)
        moid = self.refs.manifest_of(vid)
        row = self.catalog.row(vid)
        wrong = row_disagreements(row, m, moid) if row is not None else []
        if row is None or wrong:
            if wrong:
                warnings.warn(
                    f"the index disagreed with {m.ref}'s manifest ({', '.join(wrong)}); re-indexed it",
                    ModelHubWarning,
                    stacklevel=3,
                )
            self.index(vid)
            row = self.catalog.row(vid)
        return self.version_of_row(row)
