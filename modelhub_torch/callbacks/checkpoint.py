"""``ModelHubCheckpoint``: Lightning's ModelCheckpoint, with a repository instead of files.

It subclasses ModelCheckpoint so *when* to save and *which* checkpoint is best follow
Lightning's own rules (triggers, monitor/mode, top-k, NaN handling, DDP agreement);
only *where* changes. Every save becomes a version ``model@vN``; nothing is deleted.
The "paths" ModelCheckpoint keeps (``best_model_path``, ``best_k_models``,
``last_model_path``) are ``modelhub://<repo>#model@vN`` URLs, which Lightning opens
through the ``modelhub`` fsspec protocol: ``trainer.fit(ckpt_path="best")``,
``Module.load_from_checkpoint(cb.best_model_path)`` and ``repo.load(cb.best_model_path)``
all work.

Version numbers are announced before the commit (rank zero reads the next free number
at setup and broadcasts it), so every DDP rank knows the new version's ref without a
collective call per save; the commit fails loudly if another writer took the number.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Literal
from weakref import proxy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from modelhub_torch.callbacks.fs import PREFIX, make_url, parse_url
from modelhub_torch.callbacks.resume import resume_refusal
from modelhub_torch.errors import ModelHubError, RefNotFoundError
from modelhub_torch.repository import Repository, storage_options_for
from modelhub_torch.store.refs import check_name

log = logging.getLogger(__name__)

# what Lightning leaves out of a weights-only checkpoint (plus the precision plugin's
# state, named after its class): the parts ``trainer_state="latest"`` prunes
TRAINER_STATE_KEYS = ("optimizer_states", "lr_schedulers", "callbacks")


def _metric_value(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            return None
        v = v.item()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v if math.isfinite(v) else None
    return None


def _plain_hparams(hparams: Any) -> dict[str, Any]:
    """``pl_module.hparams`` as JSON: values JSON cannot hold are kept as their repr."""
    out: dict[str, Any] = {}
    for k, v in dict(hparams or {}).items():
        try:
            json.dumps(v, allow_nan=False)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = repr(v)
    return out


def _clone(obj: Any) -> Any:
    """Deep copy of a checkpoint's containers and tensors (non-tensor leaves shared), so
    a background commit sees the values of the moment of the save. Dict subclasses and
    ``state_dict._metadata`` survive (Lightning's AsyncCheckpointIO drops the latter)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else dict()
        for k, v in obj.items():
            out[k] = _clone(v)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_clone(v) for v in obj)
    return obj


def _default_model_name(pl_module: pl.LightningModule) -> str:
    return type(pl_module).__name__


class ModelHubCheckpoint(ModelCheckpoint):
    """Every checkpoint of a run becomes a version in a modelhub repository.

    Options mean what they mean in ``ModelCheckpoint``, except that nothing is ever
    deleted: ``save_top_k`` only decides which versions count as the best (and keep
    their trainer state). ``trainer_state``: which versions keep optimizer, scheduler,
    loop-callback state besides their weights — ``"latest"`` (the newest version and
    the top ``save_top_k`` by ``monitor``; with ``save_top_k=-1`` the single best) or
    ``"all"``. ``async_save=True`` commits on a background thread (tensors are copied
    first); pending commits are finished at the end of fit, on an exception and at
    teardown, and a failed commit is raised at the next save.

    ``fit(ckpt_path=<a weights-only version>)`` (its trainer state pruned) stops with a
    ModelHubError naming the nearest version that can resume (see ``on_fit_start``);
    loading such a version (``load_from_checkpoint``, ``validate``/``test``) works.
    """

    def __init__(
        self,
        repo: Repository | str,
        model: str | None = None,
        *,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = -1,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        save_last: bool = True,
        save_weights_only: bool = False,
        save_on_exception: bool = False,
        async_save: bool = False,
        trainer_state: Literal["latest", "all"] = "latest",
        parent: str | None = None,
        save_on_train_epoch_end: bool | None = None,
        verbose: bool = False,
    ) -> None:
        if trainer_state not in ("latest", "all"):
            raise ModelHubError(f"trainer_state must be 'latest' or 'all', got {trainer_state!r}")
        if model is not None:
            check_name("model", model)
        super().__init__(
            dirpath=None,
            monitor=monitor,
            verbose=verbose,
            save_last=save_last,
            save_top_k=save_top_k,
            save_on_exception=save_on_exception,
            save_weights_only=save_weights_only,
            mode=mode,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            save_on_train_epoch_end=save_on_train_epoch_end,
            enable_version_counter=False,
        )
        self._repo_arg = repo
        self.repo: Repository | None = repo if isinstance(repo, Repository) else None
        self.model = model
        self.async_save = async_save
        self.trainer_state = trainer_state
        self.parent = parent
        self._next = 0  # number of the next version (the same on every rank)
        self._run_parent: str | None = None  # parent of the run's first version
        self._saved_any = False
        self._with_state: list[str] = []  # refs of this run's versions holding trainer state
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._resumed_from: str | None = None
        self._graph: dict[str, Any] | None = None  # the network, captured at the first save
        self._architecture: dict[str, Any] | None = None  # and how to rebuild it (load_module)
        self._refusal: ModelHubError | None = None  # why this fit cannot resume (raised once)

    # ---------------------------------------------------------------- refs
    @property
    def repo_url(self) -> str:
        return self.repo.url if self.repo is not None else str(self._repo_arg)

    def _url(self, number: int) -> str:
        return make_url(self.repo_url, f"{self.model}@v{number}")

    @staticmethod
    def ref_of(path: str) -> str:
        """The ``model@vN`` part of a checkpoint URL."""
        return path.rpartition("#")[2] if path else path

    @property
    def best_model_ref(self) -> str:
        return self.ref_of(self.best_model_path)

    @property
    def last_model_ref(self) -> str:
        return self.ref_of(self.last_model_path)

    # -------------------------------------------------------------- setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.model is None:
            self.model = _default_model_name(pl_module)
            check_name("model", self.model)
        _refuse_sharded(trainer)
        number = 0
        if trainer.is_global_zero:
            if self.repo is None:
                self.repo = Repository.init(self._repo_arg, exist_ok=True)
            versions = self.repo.versions(self.model)
            number = versions[-1].number + 1 if versions else 1
        self._next = trainer.strategy.broadcast(number)
        self._saved_any = False
        self.dirpath = trainer.strategy.broadcast(self.repo_url if trainer.is_global_zero else None)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._refuse_weights_only_resume(trainer)

    def _refuse_weights_only_resume(self, trainer: pl.Trainer) -> None:
        """Stop ``fit(ckpt_path=<a weights-only version>)`` with an error that names the
        nearest version that can resume, instead of Lightning's KeyError about missing
        optimizer states. ``on_fit_start`` runs after Lightning loaded the checkpoint
        (so ``trainer.ckpt_path`` is this fit's) and before it restores the optimizers;
        strategies that load only after ``on_fit_start`` (FSDP, ModelParallel) are not
        checked. Every rank checks (reads only), so all raise alike."""
        ckpt = trainer.ckpt_path
        if trainer.strategy.restore_checkpoint_after_setup or not ckpt or not str(ckpt).startswith(PREFIX):
            return
        location, ref = parse_url(str(ckpt))
        same = self.repo is not None and make_url(location, ref) == make_url(self.repo, ref)
        repo = self.repo if same and self.repo is not None else Repository(location, storage_options_for(location))
        message = resume_refusal(repo, ref)
        if message is not None:
            self._refusal = ModelHubError(message)
            raise self._refusal

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.is_global_zero:  # only rank zero commits, so only it needs the lineage
            self._run_parent, self._resumed_from = self._plan_lineage(trainer)

    def _plan_lineage(self, trainer: pl.Trainer) -> tuple[str | None, str | None]:
        """The parent of the run's first version (the version it resumed or started
        from, else the model's latest) and where it resumed from (known once Lightning
        restored the checkpoint, after ``setup``)."""
        assert self.repo is not None and self.model is not None
        versions = self.repo.versions(self.model)
        parent = versions[-1].id if versions else None
        resumed = None
        ckpt = trainer.ckpt_path
        source = self.parent or (str(ckpt) if ckpt else None)
        if source:
            resumed = source
            ref = source
            if source.startswith("modelhub://"):
                location, ref = parse_url(source)
                if make_url(location, ref) != make_url(self.repo, ref):
                    ref = ""  # a version of another repository: recorded in info only
            try:
                parent = self.repo.resolve(ref) if ref else parent
            except ModelHubError:
                if self.parent is not None:
                    raise  # an explicit parent must exist
                # resumed from a file: recorded in info only
            else:
                v = self.repo.version(parent) if ref and parent else None
                if v is not None and v.model == self.model and self.parent is None and v.ref not in self._with_state:
                    # the resumed version is this history's latest so far: it keeps its
                    # trainer state only while it is latest or among the best
                    self._with_state.append(v.ref)
        return parent, resumed

    def file_exists(self, filepath: Any, trainer: pl.Trainer) -> bool:
        return False  # versions are never overwritten

    def format_checkpoint_name(self, metrics: dict[str, Any], filename: str | None = None,
                               ver: int | None = None, prefix: str | None = None) -> str:
        return self._url(self._next)

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        """For ``ckpt_path="last"``: the model's latest version."""
        if self.repo is None or not self.model:
            return set()
        try:
            return {make_url(self.repo.url, self.repo.version(f"{self.model}@latest").ref)}
        except ModelHubError:
            return set()

    # --------------------------------------------------------------- saves
    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if not self.save_last:
            return
        if self._last_checkpoint_saved and self._last_global_step_saved == trainer.global_step:
            self.last_model_path = self._last_checkpoint_saved  # this step is a version already
            return
        self.last_model_path = self._url(self._next)
        self._save_checkpoint(trainer, self.last_model_path)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Nothing is deleted; a version leaving the top k loses only its trainer state
        (see ``trainer_state``), which happens after each save."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        number = self._next
        if filepath != self._url(number):
            raise ModelHubError(f"internal: asked to save {filepath!r} while the next version is v{number}")
        failure: BaseException | None = None
        if trainer.is_global_zero:
            try:
                self._raise_failed()
            except ModelHubError as exc:
                failure = exc
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)  # collective
        if trainer.is_global_zero and failure is None:
            try:
                job = self._commit_job(trainer, checkpoint, number)
                if not self.save_weights_only:
                    with self._lock:  # known at once, so the next checkpoint's state lists it
                        self._with_state.append(f"{self.model}@v{number}")
                if self.async_save:
                    self._submit(job, _clone(checkpoint))
                else:
                    job(checkpoint)
                for logger in trainer.loggers:
                    logger.after_save_checkpoint(proxy(self))
            except Exception as exc:
                failure = exc
        # every rank learns whether rank zero stored the version, so none waits forever
        # at the barrier for a rank that raised
        failed = bool(trainer.strategy.broadcast(failure is not None))
        if failed:
            self._error = None
            if failure is not None:
                raise failure
            raise ModelHubError(f"rank zero could not commit {self.model}@v{number}; see its log")
        self._next += 1
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("ModelHubCheckpoint.save")

    def _commit_job(self, trainer: pl.Trainer, checkpoint: dict[str, Any], number: int) -> Any:
        """Everything the commit needs, captured now (the trainer moves on under async)."""
        assert self.repo is not None and self.model is not None
        module = trainer.lightning_module
        metrics = {k: _metric_value(v) for k, v in trainer.callback_metrics.items()}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        epoch, step = int(checkpoint.get("epoch", trainer.current_epoch)), int(trainer.global_step)
        info: dict[str, Any] = {
            "epoch": epoch,
            "global_step": step,
            "module": f"{type(module).__module__}.{type(module).__qualname__}",
            "lightning_version": pl.__version__,
            "torch_version": torch.__version__,
            "trainer_state": not self.save_weights_only,
            "world_size": trainer.world_size,
        }
        if self.monitor is not None:
            info["monitor"], info["mode"] = self.monitor, self.mode
            if self.monitor in metrics:
                info["monitor_value"] = metrics[self.monitor]
        # the run's first version descends from the version it resumed or started from;
        # later ones from the model's latest, which is this run's previous version
        # (commits are serialised, and expect_number catches any other writer)
        parent = None if self._saved_any else self._run_parent
        if not self._saved_any and self._resumed_from:
            info["resumed_from"] = self._resumed_from
        self._saved_any = True
        message = f"epoch {epoch} step {step}"
        if self.monitor is not None and self.monitor in metrics:
            message += f" {self.monitor}={metrics[self.monitor]:.6g}"
        hparams = _plain_hparams(getattr(module, "hparams", {}))
        if self._graph is None:  # the architecture does not change during a run
            from modelhub_torch.architecture import capture_architecture
            from modelhub_torch.graph import capture_graph

            self._graph = capture_graph(module)
            self._architecture = capture_architecture(module)
        graph, architecture = self._graph, self._architecture
        best = self.best_model_path
        keep = self._keep_state_urls()
        precision_key = type(trainer.precision_plugin).__qualname__

        def job(ckpt: dict[str, Any]) -> None:
            assert self.repo is not None
            v = self.repo.commit(ckpt, self.model, parent=parent, metrics=metrics, hparams=hparams,
                                 message=message, info=info, graph=graph, expect_number=number,
                                 architecture=architecture)
            if best:
                self.repo.tag(self.ref_of(best), "best")
            if self.trainer_state == "latest":
                self._prune_state(keep | {v.ref}, precision_key, upto=v.number)

        return job

    def _keep_state_urls(self) -> set[str]:
        """Refs whose trainer state survives: the top k (or the single best) by monitor."""
        if self.monitor is None:
            return set()
        if self.save_top_k == -1:
            paths: Iterable[str] = [self.best_model_path] if self.best_model_path else []
        else:
            paths = self.best_k_models.keys()
        return {self.ref_of(p) for p in paths}

    def _prune_state(self, keep: set[str], precision_key: str, upto: int) -> None:
        """Prune the trainer state of this history's versions below number ``upto`` that
        are neither kept nor pending (async commits queued after this one)."""
        assert self.repo is not None

        def committed(ref: str) -> bool:
            return int(ref.rpartition("@v")[2]) < upto

        with self._lock:
            drop = [r for r in self._with_state if r not in keep and committed(r)]
            self._with_state = [r for r in self._with_state if r not in drop]
        for ref in drop:
            try:
                self.repo.prune(ref, (*TRAINER_STATE_KEYS, precision_key))
            except RefNotFoundError:
                log.warning("cannot prune %s: no such version (a failed commit?)", ref)

    # ------------------------------------------------------------- async
    def _submit(self, job: Any, checkpoint: dict[str, Any]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelhub-checkpoint")

        def run() -> None:
            if self._error is not None:
                return  # a failed commit stops the queue: later ones would not chain
            try:
                job(checkpoint)
            except BaseException as exc:
                self._error = exc
                log.error("background commit failed: %s", exc)

        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._executor.submit(run))

    def _raise_failed(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise ModelHubError(f"a background commit of ModelHubCheckpoint failed: {err}") from err

    def wait(self) -> None:
        """Block until every queued commit is stored; raise if one failed."""
        for f in list(self._pending):
            f.result()
        self._pending.clear()
        self._raise_failed()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.wait()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # the exception being handled stays the one the user sees: a failure to save
        # now (or an earlier background failure) is logged, not raised over it
        if exception is self._refusal:
            self._refusal = None
            return  # refused before training: nothing of this fit to save
        try:
            super().on_exception(trainer, pl_module, exception)
            self.wait()
        except Exception as exc:
            log.error("ModelHubCheckpoint could not save on %s: %s", type(exception).__name__, exc)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    # ---------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["with_trainer_state"] = list(self._with_state)
        state["model"] = self.model
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("model") == self.model and state_dict.get("dirpath") == self.dirpath:
            # versions of the resumed run that still hold trainer state: pruned in turn
            self._with_state += [r for r in state_dict.get("with_trainer_state", []) if r not in self._with_state]


def _refuse_sharded(trainer: pl.Trainer) -> None:
    """Only strategies whose checkpoint is one dict on rank zero can be versioned."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    if "FSDP" in name and getattr(strategy, "_state_dict_type", "full") != "full":
        raise ModelHubError(
            "ModelHubCheckpoint needs full state dicts: use FSDPStrategy(state_dict_type='full') "
            "(rank zero gathers the weights); sharded checkpoints are not versioned"
        )
    if "DeepSpeed" in name:
        raise ModelHubError(
            "ModelHubCheckpoint does not version DeepSpeed checkpoints (they are sharded "
            "directories); use DDP or FSDP with state_dict_type='full'"
        )
