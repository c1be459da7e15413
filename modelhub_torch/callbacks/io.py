"""``ModelHubCheckpointIO``: route every Lightning checkpoint save and load through a repository.

``Trainer(plugins=[ModelHubCheckpointIO(repo, "mymodel")])`` keeps stock callbacks
(``ModelCheckpoint``, ``save_on_exception``, ``trainer.save_checkpoint``) unchanged
while every checkpoint they write becomes a version of ``mymodel`` instead of a
``.ckpt`` file: the path Lightning chose is kept in the version's ``info["path"]``,
so ``ckpt_path=<that path>`` (and ``"best"``, which is such a path) loads the version
back. Nothing is ever deleted: a checkpoint ModelCheckpoint rotates out stays a version.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins import CheckpointIO, TorchCheckpointIO

from modelhub_torch.callbacks.fs import PREFIX, parse_url
from modelhub_torch.errors import PickleRequiredError
from modelhub_torch.repository import Repository, Version, storage_options_for
from modelhub_torch.store.refs import check_name

log = logging.getLogger(__name__)

__all__ = ["ModelHubCheckpointIO"]


def _json_or_none(d: Any) -> dict[str, Any] | None:
    """Hyperparameters worth recording as version metadata (plain JSON) or None."""
    if not isinstance(d, dict):
        return None
    try:
        json.dumps(d)
    except (TypeError, ValueError):
        return None
    return dict(d)


class ModelHubCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that commits each checkpoint as a new version of
    ``model`` in ``repo`` (a Repository, or a path/URL to open one).

    Loads: a ``modelhub://<repo>#<ref>`` URL is read from its repository; a path that a
    save through this repository recorded resolves to the latest version saved under
    it; anything else (an ordinary ``.ckpt`` file) goes to ``base`` (default
    ``TorchCheckpointIO()``). ``allow_pickle=True`` lets checkpoints with objects that
    only pickle can store (e.g. a Namespace in the hyperparameters) be committed;
    loading those then needs ``weights_only=False`` (``trainer.fit(..., weights_only=False)``).

    Lightning calls ``save_checkpoint`` on global rank 0 only; every rank loads.
    ``load_checkpoint`` does not know whether Lightning will resume training or only
    load weights, so resuming a weights-only version is explained by ModelHubCheckpoint
    (when it is in the Trainer), not here.
    """

    def __init__(
        self,
        repo: Repository | str | os.PathLike[str],
        model: str,
        *,
        base: CheckpointIO | None = None,
        allow_pickle: bool = False,
    ) -> None:
        check_name("model", model)
        if isinstance(repo, Repository):
            self._repo: Repository | None = repo
            self.location = repo.url
        else:
            self.location = os.fspath(repo)
            self._repo = Repository(self.location)  # fail now, not at the first save
        self.model = model
        self.base: CheckpointIO = base if base is not None else TorchCheckpointIO()
        self.allow_pickle = allow_pickle

    @property
    def repo(self) -> Repository:
        if self._repo is None:  # after unpickling (ddp_spawn): reopen in this process
            self._repo = Repository(self.location, storage_options_for(self.location))
        return self._repo

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_repo"] = None  # locks and SQLite handles do not cross processes
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, {self.model!r})"

    # ------------------------------------------------------------------- save
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Commit ``checkpoint`` as the next version of ``model``; ``path`` is only
        recorded (``info["path"]``), no file is written."""
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`: checkpoints are committed to "
                f"{self.location}, which takes no storage options"
            )
        info = {
            "path": str(path),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
            "lightning_version": checkpoint.get("pytorch-lightning_version"),
        }
        try:
            v = self.repo.commit(
                checkpoint,
                self.model,
                hparams=_json_or_none(checkpoint.get("hyper_parameters")),
                message=f"Lightning checkpoint {os.path.basename(str(path))}",
                info=info,
                allow_pickle=self.allow_pickle,
            )
        except PickleRequiredError as exc:
            raise PickleRequiredError(
                f"checkpoint {path}: {exc}; to keep such objects pass allow_pickle=True to "
                f"{type(self).__name__}"
            ) from exc
        log.debug("committed checkpoint %s as %s", path, v.ref)

    # ------------------------------------------------------------------- load
    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint dict for ``path``: a ``modelhub://`` URL, a path an earlier
        save recorded, or else whatever ``base`` loads. ``weights_only=None`` means True."""
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
        if text.startswith(PREFIX):
            location, ref = parse_url(text)
            return self._load(Repository(location, storage_options_for(location)), ref, text, map_location, weights_only)
        saved = self.saved_version(text)
        if saved is not None:
            return self._load(self.repo, saved.id, text, map_location, weights_only)
        # keep base's own default map_location (Lightning's loads everything to CPU)
        kwargs = {} if map_location is None else {"map_location": map_location}
        return self.base.load_checkpoint(path, weights_only=weights_only, **kwargs)

    def saved_version(self, path: _PATH) -> Version | None:
        """The latest version of ``model`` that a save to ``path`` committed, if any."""
        text = str(path)
        hits = [v for v in self.repo.versions(self.model) if v.info.get("path") == text]
        return max(hits, key=lambda v: v.number) if hits else None

    @staticmethod
    def _load(
        repo: Repository, ref: str, path: str, map_location: Any, weights_only: bool | None
    ) -> dict[str, Any]:
        try:
            return repo.load(
                ref, map_location=map_location, weights_only=True if weights_only is None else weights_only
            )
        except PickleRequiredError as exc:
            raise PickleRequiredError(
                f"checkpoint {path} ({ref} in {repo.url}) holds pickled objects; if you trust "
                "this repository pass weights_only=False (e.g. trainer.fit(..., weights_only=False))"
            ) from exc

    # ----------------------------------------------------------------- remove
    def remove_checkpoint(self, path: _PATH) -> None:
        """Do nothing: every checkpoint stays a version, so ModelCheckpoint's top-k
        rotation (or anything else) cannot delete history; the repository's delta
        storage is what keeps that affordable."""
        log.debug("kept %s as a version of %s (ModelHubCheckpointIO never deletes)", path, self.model)

    def teardown(self) -> None:
        self.base.teardown()
