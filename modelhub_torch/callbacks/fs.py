"""``modelhub://<repo>#<ref>``: versions of a repository as read-only fsspec files.

Lightning reads checkpoints through fsspec (``trainer.fit(ckpt_path=...)``,
``LightningModule.load_from_checkpoint``), so a filesystem for the ``modelhub``
protocol lets both take a repository version with no plugin argument:

    trainer.fit(module, ckpt_path="modelhub:///abs/hub#digits-cnn@v2")
    Module.load_from_checkpoint("modelhub://memory://hub#digits-cnn@best")

``<repo>`` is a local path (``modelhub:///abs/path``, or ``modelhub://rel/path``
relative to the working directory) or any fsspec URL of a repository
(``modelhub://s3://bucket/hub``); ``<ref>`` is anything ``Repository.resolve`` takes.
Opening a version yields the bytes ``torch.save`` would write for it, i.e. the
original ``.ckpt``. The protocol is registered through the ``fsspec.specs`` entry
point (see pyproject.toml) and again when this module is imported.

Writes are refused: a version is made by ``Repository.commit`` (or the Lightning
callbacks), which also records metrics and lineage a file write could not carry.

A weights-only version (trainer state pruned) reads like any other: the filesystem
cannot tell a resume from a ``validate`` or ``load_from_checkpoint``, so the error that
explains why ``fit`` cannot resume from it comes from ``ModelHubCheckpoint`` (its
``on_fit_start``); a Trainer without that callback gets Lightning's own KeyError.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

from modelhub_torch.errors import (
    ModelHubURLError,
    PickleRequiredError,
    ReadOnlyError,
    RefNotFoundError,
    VersionNotFoundError,
)

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository, Version

PROTOCOL = "modelhub"
PREFIX = f"{PROTOCOL}://"

__all__ = [
    "PROTOCOL",
    "ModelHubFileSystem",
    "ModelHubURLError",
    "ReadOnlyError",
    "VersionNotFoundError",
    "make_url",
    "parse_url",
]


_READ_ONLY = (
    "modelhub:// is read-only: commit through Repository.commit or the "
    "ModelHubCheckpoint callback (or ModelHubCheckpointIO) instead of writing {what}"
)


# ------------------------------------------------------------------------ URLs
def parse_url(url: str | os.PathLike[str]) -> tuple[str, str]:
    """Split ``modelhub://<repo>#<ref>`` (or the ``<repo>#<ref>`` fsspec passes
    around once the protocol is stripped) into the repository location and the ref."""
    text = os.fspath(url)
    if text.startswith(PREFIX):
        text = text[len(PREFIX) :]
    elif text.startswith(f"{PROTOCOL}::"):
        text = text[len(PROTOCOL) + 2 :]
    repo, sep, ref = text.rpartition("#")  # refs never hold '#', repository paths might
    ref = ref.strip().rstrip("/")
    if not sep or not ref:
        raise ModelHubURLError(
            f"{os.fspath(url)!r} names no version: append '#<ref>', e.g. "
            f"{PREFIX}{text or '/path/to/hub'}#mymodel@latest (refs: model@v3, model@latest, "
            "model@<alias>, an id prefix)"
        )
    if not repo:
        raise ModelHubURLError(
            f"{os.fspath(url)!r} names no repository: use {PREFIX}/abs/path#{ref}, "
            f"{PREFIX}relative/path#{ref} or {PREFIX}memory://hub#{ref}"
        )
    return repo, ref


def make_url(repo_location: str | os.PathLike[str] | Repository, ref: str) -> str:
    """``modelhub://`` URL of one version, for ``ckpt_path=`` or ``load_from_checkpoint``.

    Local paths become absolute, so the URL still works after a ``chdir`` and in
    processes started elsewhere (DDP ranks, workers).
    """
    if isinstance(repo_location, (str, os.PathLike)):
        loc = os.fspath(repo_location)
    else:
        loc = str(repo_location.url)  # a Repository: local repositories keep absolute paths
    protocol, sep, rest = loc.partition("://")
    if not sep:
        loc = os.path.abspath(os.path.expanduser(loc))
    elif protocol in ("file", "local"):
        loc = os.path.abspath(os.path.expanduser(rest))
    if not isinstance(ref, str) or not ref or "#" in ref or "/" in ref:
        raise ModelHubURLError(f"bad ref {ref!r}: use model@v3, model@latest, model@<alias> or an id prefix")
    if "::" in loc or "::" in ref:
        raise ModelHubURLError(
            f"{loc!r}: fsspec reads '::' in a URL as a chain of filesystems, so a repository "
            "location holding '::' cannot be named in a modelhub:// URL; move or symlink it"
        )
    return f"{PREFIX}{loc}#{ref}"


def _open_repo(location: str) -> Repository:
    """A fresh Repository per call: refs and the index are re-read, so a commit made
    since the previous call (by this or another process) is visible. A remote one
    opens with the storage options this process opened it with before, else with
    fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL``...)."""
    from modelhub_torch.repository import Repository, storage_options_for

    return Repository(location, storage_options_for(location))


def _serialize(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _timestamp(created_at: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(created_at)


class ModelHubFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem: ``<repo>#<ref>`` is a file holding the checkpoint
    ``torch.save`` would have written for that version; ``<repo>`` is a directory
    listing every version as ``<repo>#<model>@v<N>``.

    Refs are resolved again on every call (``m@latest`` follows new commits). Sizes
    cost a decode, so ``info`` keeps the bytes it produced for the ``open`` that
    Lightning issues right after it (one checkpoint per thread, keyed by the immutable
    version id, dropped by that open); ``ls`` reports ``size=None`` for versions whose
    size has not been measured yet.
    """

    protocol = PROTOCOL
    root_marker = ""

    # sizes of serialised versions, shared by every instance: (repo url, version id) ->
    # bytes; a version id never names other contents, so an entry cannot go stale
    _size_memo: ClassVar[OrderedDict[tuple[str, str], int]] = OrderedDict()
    _memo_lock: ClassVar[threading.Lock] = threading.Lock()
    _MEMO_ENTRIES: ClassVar[int] = 4096

    def __init__(self, *args: Any, **storage_options: Any):
        super().__init__(*args, **storage_options)
        self._pending: tuple[tuple[str, str], bytes] | None = None
        self._pending_lock = threading.Lock()

    # ---------------------------------------------------------------- helpers
    @classmethod
    def _remember_size(cls, key: tuple[str, str], size: int) -> None:
        with cls._memo_lock:
            cls._size_memo[key] = size
            cls._size_memo.move_to_end(key)
            while len(cls._size_memo) > cls._MEMO_ENTRIES:
                cls._size_memo.popitem(last=False)

    @classmethod
    def _known_size(cls, key: tuple[str, str]) -> int | None:
        with cls._memo_lock:
            return cls._size_memo.get(key)

    def _version(self, path: str) -> tuple[Repository, Version]:
        location, ref = parse_url(f"{PREFIX}{path}")
        repo = _open_repo(location)
        try:
            return repo, repo.version(ref)
        except RefNotFoundError as exc:
            raise VersionNotFoundError(f"{PREFIX}{path}: {exc}") from exc

    def _checkpoint_bytes(self, repo: Repository, v: Version, path: str) -> bytes:
        key = (repo.url, v.id)
        with self._pending_lock:
            if self._pending is not None and self._pending[0] == key:
                data = self._pending[1]
                self._pending = None
                return data
        try:
            obj = repo.load(v.id, weights_only=True)
        except PickleRequiredError as exc:
            raise PickleRequiredError(
                f"{PREFIX}{path} ({v.ref}) holds pickled objects, which modelhub:// URLs never "
                f"unpickle; if you trust this repository, load it with "
                f"Repository({repo.url!r}).load({v.ref!r}, weights_only=False)"
            ) from exc
        data = _serialize(obj)
        self._remember_size(key, len(data))
        return data

    def _entry(self, path: str, v: Version, size: int | None) -> dict[str, Any]:
        return {
            "name": path,
            "size": size,
            "type": "file",
            "ref": v.ref,
            "id": v.id,
            "model": v.model,
            "number": v.number,
            "created_at": v.created_at,
        }

    # ------------------------------------------------------------------ reads
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """``{"name", "size", "type"}`` of a version (``"file"``) or a repository
        (``"directory"``). ``path`` may be the full URL (TorchCheckpointIO passes it).
        A missing version raises FileNotFoundError naming the closest refs."""
        path = self._strip_protocol(path)
        if "#" not in path:
            repo = _open_repo(path)  # RepositoryNotFoundError is a FileNotFoundError
            return {"name": path, "size": 0, "type": "directory", "url": repo.url}
        repo, v = self._version(path)
        key = (repo.url, v.id)
        size = self._known_size(key)
        if size is None:
            try:
                data = self._checkpoint_bytes(repo, v, path)
            except PickleRequiredError:
                # it exists: let open() raise the explanation (fsspec's exists() would
                # swallow it here and Lightning would report a missing file instead)
                return self._entry(path, v, None)
            size = len(data)
            with self._pending_lock:
                self._pending = (key, data)
        return self._entry(path, v, size)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """Every version of a repository as ``<repo>#<model>@v<N>`` (or the one version
        a ``<repo>#<ref>`` path names)."""
        path = self._strip_protocol(path)
        if "#" in path:
            entries = [self.info(path)]
        else:
            repo = _open_repo(path)
            entries = [
                self._entry(f"{path}#{v.ref}", v, self._known_size((repo.url, v.id)))
                for v in repo.versions()
            ]
        return entries if detail else [e["name"] for e in entries]

    def created(self, path: str) -> _dt.datetime:
        """When the version was committed (versions never change afterwards)."""
        return _timestamp(self._version(self._strip_protocol(path))[1].created_at)

    def modified(self, path: str) -> _dt.datetime:
        return self.created(path)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> io.BytesIO:
        if mode != "rb":
            raise ReadOnlyError(_READ_ONLY.format(what=f"{PREFIX}{path} (mode {mode!r})"))
        repo, v = self._version(path)
        f = io.BytesIO(self._checkpoint_bytes(repo, v, path))
        f.name = f"{PREFIX}{path}"  # type: ignore[attr-defined]  # for error messages
        return f

    # ----------------------------------------------------------------- writes
    def _refuse(self, path: Any, *args: Any, **kwargs: Any) -> None:
        raise ReadOnlyError(_READ_ONLY.format(what=str(path)))

    mkdir = makedirs = rmdir = rm_file = _rm = rm = _refuse
    pipe_file = put_file = cp_file = mv = touch = _refuse


def register(clobber: bool = True) -> None:
    """Register the protocol in this process (the entry point does it for installed
    packages; this covers source checkouts and processes whose fsspec came first)."""
    fsspec.register_implementation(PROTOCOL, ModelHubFileSystem, clobber=clobber)


register()
