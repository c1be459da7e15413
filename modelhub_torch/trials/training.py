"""One stretch of one trial: rebuild (or resume) its network, train to a step count,
validate at exactly that step, commit the checkpoint as a version. Every executor
runs this same function (in this process, a spawned worker or a Ray actor), so a
trial's numbers do not depend on where it ran:

- each stretch starts from the repository (the source's weights, or the trial's last
  version resumed with ``trainer.fit(ckpt_path=...)``: weights, optimizer, scheduler
  and loop state), never from memory a previous stretch left behind;
- it is seeded with ``seed_everything + trial number`` and runs on one torch thread
  (thread counts change the order of float sums; parallelism comes from workers).

The committed checkpoint's ``state_dict`` keys are the network's own (``conv1.weight``,
not ``net.conv1.weight``): :class:`TrialModule` registers the rebuilt network's layers
as its own children, so a trial version rebuilds like any other with ``build_module``
+ ``load_state_dict`` (``Repository.load_module``), with the architecture of the
source recorded again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from modelhub_torch.errors import ModelHubError
from modelhub_torch.node_patterns import matching
from modelhub_torch.trials.plan import (
    CLASSIFICATION,
    FORCED_TRAINER,
    Threshold,
    Trial,
    import_class,
)

THREADS = 1


class TrialModule(pl.LightningModule):
    """The rebuilt network trained with the config's loss, optimizer and scheduler;
    logs ``train_loss`` every step, ``val_loss`` and (classification) ``val_acc``."""

    def __init__(self, net: torch.nn.Module, config: dict[str, Any], classes: dict[str, type],
                 layers: tuple[tuple[str, dict[str, float]], ...] = ()) -> None:
        super().__init__()
        object.__setattr__(self, "_net", net)  # not a child: its layers are, under their own names
        for name, child in net.named_children():
            self.add_module(name, child)
        for name, p in net.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in net.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.loss_name = config["model"]["loss"]
        self.config, self.classes, self.layers = config, classes, layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(out, y)
        if self.loss_name == "nll":
            return F.nll_loss(out, y)
        return F.mse_loss(out, y.to(out.dtype).reshape(out.shape))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", self._loss(out, y))
        if self.loss_name in CLASSIFICATION:
            self.log("val_acc", (out.argmax(1) == y).float().mean())

    def param_groups(self) -> list[dict[str, Any]]:
        """One group per per-layer pattern (first match wins), then the rest."""
        named = list(self.named_parameters())
        owners = list(dict.fromkeys(n.rpartition(".")[0] for n, _ in named))
        taken: set[str] = set()
        groups = []
        for pattern, settings in self.layers:
            chosen = set(matching(pattern, owners)) - taken
            taken |= chosen
            params = [p for n, p in named if n.rpartition(".")[0] in chosen]
            if params:
                groups.append({"params": params, **settings})
        rest = [p for n, p in named if n.rpartition(".")[0] not in taken]
        if rest:
            groups.insert(0, {"params": rest})
        return groups

    def configure_optimizers(self) -> Any:
        spec = self.config["optimizer"]
        optimizer = self.classes["optimizer"](self.param_groups(), **spec["init_args"])
        sched = self.config.get("lr_scheduler")
        if sched is None:
            return optimizer
        scheduler = self.classes["lr_scheduler"](optimizer, **sched["init_args"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": sched["interval"]}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's per-fit banners (devices, "max_steps reached") and its warning about
    resuming mid-epoch, which does not apply: a resumed stretch reseeds and starts a
    fresh, deterministic shuffle on purpose."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch")
            warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _number(v: Any) -> Any:
    return v.item() if isinstance(v, torch.Tensor) else v


def train_segment(store: Any, trial: Trial, *, resume: str | None, target: int, statement: str = "",
                  imports: tuple[str, ...] = (), thresholds: tuple[Threshold, ...] = (), stage: str = "",
                  storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``trial`` to step ``target`` (from its source, or resumed from version id
    ``resume``), validate, commit. ``store``: a RepoStore, or its URL (worker processes
    reopen it). Never raises: a failure comes back as ``error``."""
    out: dict[str, Any] = {"trial": trial.number, "id": None, "ref": None, "step": None, "metrics": {},
                           "error": None}
    threads = torch.get_num_threads()
    url = store if isinstance(store, str) else store.url
    try:
        torch.set_num_threads(THREADS)
        if isinstance(store, str):
            from modelhub_torch.publish import open_store

            store = open_store(store, storage_options)
        with _quiet():
            _train(store, trial, resume, target, statement, imports, thresholds, stage, out)
    except Exception as exc:  # a trial's failure is its row, not the evaluation's end
        out["error"] = str(exc) if isinstance(exc, ModelHubError) else f"{type(exc).__name__}: {exc}"
    finally:
        torch.set_num_threads(threads)
        from modelhub_torch.background import wait

        wait(url)
    return out


def _train(store: Any, trial: Trial, resume: str | None, target: int, statement: str,
           imports: tuple[str, ...], thresholds: tuple[Threshold, ...], stage: str, out: dict[str, Any]) -> None:
    from modelhub_torch.architecture import build_module, capture_architecture
    from modelhub_torch.commit import CommitRequest, commit_version
    from modelhub_torch.graph import capture_graph
    from modelhub_torch.reader import load_version, load_weights
    from modelhub_torch.records import jsonable
    from modelhub_torch.skeleton import flatten

    cfg = trial.config
    classes = {s: import_class(s, cfg[s]["class_path"], imports) for s in ("data", "optimizer", "lr_scheduler")
               if s in cfg}
    pl.seed_everything(trial.seed, verbose=False)
    net = build_module(store.manifest(trial.source_id).extra.get("architecture"))
    if resume is None:
        net.load_state_dict(load_weights(store, trial.source_id))
    net.train()
    module = TrialModule(net, cfg, classes, trial.layers)
    data = classes["data"](**cfg["data"]["init_args"])
    kwargs = {k: v for k, v in cfg["trainer"].items() if k != "max_steps"}
    val_batches = kwargs.pop("limit_val_batches", 1.0)
    with tempfile.TemporaryDirectory(prefix="modelhub-trial-") as tmp:
        trainer = pl.Trainer(max_steps=target, default_root_dir=tmp, limit_val_batches=0, **FORCED_TRAINER,
                             **kwargs)
        if resume is None:
            trainer.fit(module, datamodule=data)
        else:
            path = os.path.join(tmp, "resume.ckpt")
            torch.save(load_version(store, resume), path)
            trainer.fit(module, datamodule=data, ckpt_path=path)
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(False)
        train_loss = _number(trainer.callback_metrics.get("train_loss"))
        trainer.limit_val_batches = val_batches
        results = trainer.validate(module, datamodule=data, verbose=False)
    step = int(trainer.global_step)
    metrics = {k: _number(v) for k, v in (results[0] if results else {}).items()}
    if train_loss is not None:
        metrics["train_loss"] = train_loss
    metrics["step"] = step
    status = stage
    for rule in thresholds:
        if not rule.holds(metrics.get(rule.metric)):
            status = rule.failure(metrics.get(rule.metric))
            break
    hparams = {**trial.values, "optimizer": cfg["optimizer"], "data": cfg["data"], "loss": cfg["model"]["loss"],
               "seed": trial.seed, **({"lr_scheduler": cfg["lr_scheduler"]} if "lr_scheduler" in cfg else {}),
               **({"layers": {p: s for p, s in trial.layers}} if trial.layers else {})}
    info = {"dql": statement, "trial": trial.number, "step": step, "source": trial.source, "status": status}
    request = CommitRequest(
        flat=flatten(checkpoint), model=trial.model, parent=resume or trial.source_id,
        metrics=jsonable(metrics, "metrics"), hparams=jsonable(hparams, "hparams"),
        message=f"evaluate trial {trial.number} of {trial.source}: step {step}", info=jsonable(info, "info"),
        graph=capture_graph(net), architecture=capture_architecture(net),
    )
    version = commit_version(store, request)
    from modelhub_torch.background import after_commit

    after_commit(store, [trial.model])
    out.update(id=version.id, ref=version.ref, step=step, metrics=metrics, status=status)


__all__ = ["TrialModule", "train_segment"]
