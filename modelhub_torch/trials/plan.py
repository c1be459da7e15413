"""Planning an ``evaluate``: the config, the grid and the keep rules, all checked
before anything trains (a typo found after an hour of training is an hour lost).

The config is a LightningCLI-style YAML file the user names (never one read from the
repository)::

    seed_everything: 0            # default 0; trial n is seeded with seed_everything + n
    trainer: {max_steps: 100}     # required: the configured end; any pl.Trainer argument.
                                  # Forced: enable_checkpointing/logger/enable_progress_bar/
                                  # enable_model_summary False, num_sanity_val_steps 0;
                                  # default accelerator "cpu", devices 1
    data: {class_path: modelhub_torch.trials.digits.DigitsDataModule, init_args: {batch_size: 32}}
    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.01}}   # the default
    lr_scheduler: {class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 10},
                   interval: step}                                    # optional; interval
                                  # "step" (default: budgets are in steps) or "epoch"
    model: {loss: cross_entropy}  # cross_entropy (default) | nll | mse

``class_path`` may name only ``torch.optim.*`` (optimizers and schedulers),
``modelhub_torch.trials.*`` or a module the caller lists in ``imports`` (``--import``):
a config is data, and naming ``os.system`` in one must not run it. Nothing is imported
before that check.

Vary paths: ``config.optimizer.lr`` is ``optimizer.init_args.lr`` (LightningCLI style,
likewise ``data`` and ``lr_scheduler``), ``config.trainer.max_steps`` is
``trainer.max_steps``, ``config.model.loss``, ``config.seed_everything``; an init
argument absent from the file may be varied if the class takes it.
``config.net["conv*"].lr`` / ``.weight_decay``: the parameters of layers whose module
path matches the pattern get their own optimizer param group with that value (the
first matching pattern, in statement order, wins); the rest keep the optimizer's.

``auto`` values around the configured value v (a per-layer value without one uses
the optimizer's): learning rates and weight decay (keys named lr, *_lr, weight_decay)
[v/10, v, v*10] (a zero weight decay: [0, 1e-4, 1e-3]); integers [v//2, v, v*2]
(positive ones stay positive); other floats [v/2, v, v*2]; duplicates dropped, order
kept. Anything else needs explicit values.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhub_torch.errors import ModelHubError
from modelhub_torch.node_patterns import matching

if TYPE_CHECKING:
    from modelhub_torch.records import Version
    from modelhub_torch.store.repo import RepoStore

LOSSES = ("cross_entropy", "nll", "mse")
CLASSIFICATION = ("cross_entropy", "nll")
LAYER_KEYS = ("lr", "weight_decay")
OPS = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "=": "!=", "!=": "="}
FORCED_TRAINER = {"enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                  "enable_model_summary": False, "num_sanity_val_steps": 0}
DEFAULT_OPTIMIZER = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}
ALLOWED_PREFIXES = ("torch.optim.", "modelhub_torch.trials.")
CLASS_SECTIONS = ("data", "optimizer", "lr_scheduler")
MAX_CONFIG_BYTES = 1 << 20


class EvaluationError(ModelHubError, ValueError):
    """An evaluate that cannot run as asked. ``index``: which vary item (``part ==
    "vary"``) or keep rule (``part == "keep"``, its position in ``keep``) is wrong, or
    None when it is the config, a source or the statement as a whole."""

    def __init__(self, message: str, index: int | None = None, part: str | None = None):
        super().__init__(message)
        self.index = index
        self.part = part if index is not None else None


@dataclass(frozen=True)
class Vary:
    """One ``vary`` item: a config path and its values (None: ``auto``)."""

    path: tuple[str, ...]
    values: tuple[Any, ...] | None
    index: int = 0


@dataclass(frozen=True)
class TopRule:
    """``keep top(k, m["metric"], steps [, mode])``: at ``steps``, keep the best k."""

    k: int
    metric: str
    steps: int
    mode: str | None = None  # None: "min" for a metric named like a loss or error, else "max"

    @property
    def direction(self) -> str:
        if self.mode is not None:
            return self.mode
        name = self.metric.lower()
        return "min" if "loss" in name or "err" in name else "max"


@dataclass(frozen=True)
class Threshold:
    """``keep m["metric"] op value``: checked at every rung and at the end."""

    metric: str
    op: str
    value: float

    def holds(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return False
        return {">": value > self.value, ">=": value >= self.value, "<": value < self.value,
                "<=": value <= self.value, "=": value == self.value, "!=": value != self.value}[self.op]

    def failure(self, value: Any) -> str:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        return f"below threshold ({self.metric} {shown} {OPS[self.op]} {self.value:g})"


def column(path: tuple[str, ...]) -> str:
    """A vary path as the statement writes it: ``config.net["conv*"].lr``."""
    out = path[0] if path else ""
    for part in path[1:]:
        out += f".{part}" if part.isidentifier() else f"[{json.dumps(part)}]"
    return out


@dataclass(frozen=True)
class Trial:
    """One point of the grid on one source."""

    number: int  # 1-based
    source: str  # the source version's ref
    source_id: str
    model: str  # the model its versions are committed to
    values: dict[str, Any]  # column(path) -> value
    config: dict[str, Any]  # the resolved config with this trial's values
    layers: tuple[tuple[str, dict[str, float]], ...] = ()  # per-layer param group settings

    @property
    def seed(self) -> int:
        return int(self.config["seed_everything"]) + self.number

    @property
    def end_steps(self) -> int:
        return int(self.config["trainer"]["max_steps"])


@dataclass
class EvaluationPlan:
    """What an evaluate will do; ``describe()`` is the dry run."""

    trials: list[Trial]
    rungs: list[TopRule]
    thresholds: list[Threshold]
    end_steps: int
    columns: list[str]
    statement: str = ""
    imports: tuple[str, ...] = ()
    metrics: list[str] = field(default_factory=list)  # the metrics the keep rules read

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.trials:
            row: dict[str, Any] = {"trial": t.number, "source": t.source, "model": t.model}
            row.update({c: t.values[c] for c in self.columns})
            rows.append(row)
        return rows


# ------------------------------------------------------------------ config
def load_config(config_path: str | None) -> dict[str, Any]:
    """The YAML file as a dict (a missing path is an error: the config names the data)."""
    if config_path is None:
        raise EvaluationError("evaluate needs a config (with config = \"cfg.yaml\"): it names the data module "
                              "and trainer.max_steps")
    import yaml

    path = os.path.expanduser(str(config_path))
    if not os.path.exists(path):
        raise EvaluationError(f"config file {config_path!r} does not exist (paths are on this machine, "
                              f"relative to {os.getcwd()})")
    if not os.path.isfile(path):  # a FIFO or device (a saved statement may name any path) is never read
        raise EvaluationError(f"config {config_path!r} is not a regular file")
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise EvaluationError(f"config file {config_path!r} is larger than {MAX_CONFIG_BYTES} bytes: not a config")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EvaluationError(f"config file {config_path!r} does not parse as YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise EvaluationError(f"config file {config_path!r} must be a mapping (trainer:, data:, optimizer:...)")
    return raw


def _is_allowed(class_path: str, imports: tuple[str, ...]) -> bool:
    if class_path.startswith(ALLOWED_PREFIXES):
        return True
    module = class_path.rpartition(".")[0]
    return any(module == m or module.startswith(m + ".") for m in imports)


def import_class(section: str, class_path: Any, imports: tuple[str, ...]) -> type:
    """The class a config section names, after the allow-list check; of the kind the
    section needs."""
    if not isinstance(class_path, str) or "." not in class_path:
        raise EvaluationError(f"config {section}.class_path must be a dotted name like torch.optim.SGD, "
                              f"got {class_path!r}")
    if not _is_allowed(class_path, imports):
        raise EvaluationError(
            f"config {section}.class_path {class_path!r} is not allowed: a config may name torch.optim.*, "
            f"modelhub_torch.trials.* or a module you allow; if you trust {class_path.rpartition('.')[0]!r}, "
            f"pass --import {class_path.rpartition('.')[0]} (imports=[...] in Python)"
        )
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise EvaluationError(f"config {section}.class_path {class_path!r} cannot be imported: {exc}") from None
    if not inspect.isclass(cls):
        raise EvaluationError(f"config {section}.class_path {class_path!r} is not a class")
    import torch

    if section == "data":
        import pytorch_lightning as pl

        base: type = pl.LightningDataModule
    elif section == "optimizer":
        base = torch.optim.Optimizer
    else:
        base = torch.optim.lr_scheduler.LRScheduler
    if not issubclass(cls, base):
        raise EvaluationError(f"config {section}.class_path {class_path!r} is not a {base.__module__}."
                              f"{base.__qualname__} subclass")
    return cls


def _parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """Constructor parameters (None: it takes **kwargs, anything goes)."""
    params = dict(inspect.signature(cls.__init__).parameters)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    params.pop("self", None)
    return params


def resolve_config(raw: dict[str, Any], imports: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, type]]:
    """The config with defaults filled in, and the classes it names (checked)."""
    unknown = sorted(set(raw) - {"seed_everything", "trainer", "data", "optimizer", "lr_scheduler", "model"})
    if unknown:
        raise EvaluationError(f"config has unknown top-level keys {unknown}: it takes seed_everything, trainer, "
                              "data, optimizer, lr_scheduler and model")
    cfg = copy.deepcopy(raw)
    cfg.setdefault("seed_everything", 0)
    if not isinstance(cfg["seed_everything"], int) or isinstance(cfg["seed_everything"], bool):
        raise EvaluationError("config seed_everything must be an integer")
    trainer = cfg.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise EvaluationError("config trainer must be a mapping of pl.Trainer arguments")
    steps = trainer.get("max_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise EvaluationError("config trainer.max_steps must be a positive integer: it is where every trial "
                              f"that survives the keep rules ends (got {steps!r})")
    import pytorch_lightning as pl

    known = _parameters(pl.Trainer) or {}
    for key in trainer:
        if key not in known:
            raise EvaluationError(f"config trainer.{key} is not a pl.Trainer argument")
        if key in FORCED_TRAINER or key in ("callbacks", "plugins", "default_root_dir"):
            raise EvaluationError(f"config trainer.{key} is set by evaluate itself (versions are the checkpoints, "
                                  "nothing is logged to disk); remove it")
    cfg["trainer"] = {"accelerator": "cpu", "devices": 1, **trainer}
    model = cfg.get("model") or {}
    if not isinstance(model, dict) or set(model) - {"loss"}:
        raise EvaluationError(f"config model takes only loss ({', '.join(LOSSES)})")
    cfg["model"] = {"loss": model.get("loss", "cross_entropy")}
    if cfg["model"]["loss"] not in LOSSES:
        raise EvaluationError(f"config model.loss {cfg['model']['loss']!r} is not one of {', '.join(LOSSES)}")
    if cfg.get("optimizer") is None:
        cfg["optimizer"] = copy.deepcopy(DEFAULT_OPTIMIZER)
    if "data" not in cfg:
        raise EvaluationError("config has no data section; e.g. data: {class_path: "
                              "modelhub_torch.trials.digits.DigitsDataModule, init_args: {batch_size: 32}}")
    classes: dict[str, type] = {}
    for section in CLASS_SECTIONS:
        spec = cfg.get(section)
        if spec is None:
            cfg.pop(section, None)
            continue
        extra = {"interval"} if section == "lr_scheduler" else set()
        if not isinstance(spec, dict) or "class_path" not in spec or set(spec) - {"class_path", "init_args"} - extra:
            raise EvaluationError(f"config {section} must be {{class_path: ..., init_args: {{...}}}}")
        spec.setdefault("init_args", {})
        if not isinstance(spec["init_args"], dict):
            raise EvaluationError(f"config {section}.init_args must be a mapping")
        if section == "lr_scheduler":
            spec.setdefault("interval", "step")
            if spec["interval"] not in ("step", "epoch"):
                raise EvaluationError("config lr_scheduler.interval must be step or epoch")
        cls = classes[section] = import_class(section, spec["class_path"], imports)
        params = _parameters(cls)
        for key in spec["init_args"]:
            if params is not None and key not in params:
                raise EvaluationError(f"config {section}.init_args.{key}: {spec['class_path']} takes no "
                                      f"argument {key!r}")
    return cfg, classes


# -------------------------------------------------------------------- vary
def _class_default(cls: type | None, key: str) -> Any:
    params = _parameters(cls) if cls is not None else None
    p = (params or {}).get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _target(v: Vary, cfg: dict[str, Any], classes: dict[str, type]) -> tuple[tuple[str, ...], Any]:
    """Where a vary path lands in the resolved config, and its configured value."""
    path = tuple(v.path)
    known = "config.optimizer.X, config.data.X, config.lr_scheduler.X, config.trainer.X, config.model.loss, " \
            'config.seed_everything, config.net["pattern"].lr / .weight_decay'
    if len(path) < 2 or path[0] != "config" or not all(isinstance(p, str) and p for p in path):
        raise EvaluationError(f"vary {column(path)}: a vary path starts with config (one of {known})", v.index, "vary")
    section = path[1]
    if section == "net":
        if len(path) != 4 or path[3] not in LAYER_KEYS:
            raise EvaluationError(f'vary {column(path)}: per-layer settings are config.net["pattern"].lr or '
                                  '.weight_decay', v.index, "vary")
        opt = cfg["optimizer"]
        value = opt["init_args"].get(path[3], _class_default(classes.get("optimizer"), path[3]))
        return ("net", path[2], path[3]), value
    if section == "seed_everything" and len(path) == 2:
        return ("seed_everything",), cfg["seed_everything"]
    if section == "model" and path[2:] == ("loss",):
        return ("model", "loss"), cfg["model"]["loss"]
    if section == "trainer" and len(path) == 3:
        keys: tuple[str, ...] = ("trainer", path[2])
        if path[2] in cfg["trainer"]:
            return keys, cfg["trainer"][path[2]]
        import pytorch_lightning as pl

        params = _parameters(pl.Trainer) or {}
        if path[2] in params and path[2] not in FORCED_TRAINER:
            return keys, _class_default(pl.Trainer, path[2])
        raise EvaluationError(f"vary {column(path)}: {path[2]!r} is not a pl.Trainer argument", v.index, "vary")
    if section in CLASS_SECTIONS and len(path) >= 3:
        if section not in cfg:
            raise EvaluationError(f"vary {column(path)}: the config has no {section} section to vary "
                                  f"(add {section}: {{class_path: ..., init_args: ...}})", v.index, "vary")
        args = cfg[section]["init_args"]
        keys = (section, "init_args", *path[2:])
        node: Any = args
        for i, key in enumerate(path[2:]):
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif i == 0 and key in (_parameters(classes[section]) or {key: None}):
                node = _class_default(classes[section], key)
            else:
                raise EvaluationError(f"vary {column(path)}: {cfg[section]['class_path']} has no argument "
                                      f"{'.'.join(path[2:i + 3])!r} in the config or its signature", v.index, "vary")
        return keys, node
    raise EvaluationError(f"vary {column(path)}: unknown config path; known: {known}", v.index, "vary")


def auto_values(key: str, value: Any) -> tuple[Any, ...]:
    """The documented ``auto`` grid around ``value`` (see the module docstring)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"auto needs a configured number, got {value!r}; list the values with in [...]")
    rate = key == "lr" or key.endswith("_lr") or key in ("learning_rate", "weight_decay")
    if rate:
        if value == 0:
            if key != "weight_decay":
                raise ValueError("auto around a learning rate of 0 is empty; list the values with in [...]")
            grid: list[Any] = [0.0, 1e-4, 1e-3]
        else:
            grid = [value / 10, value, value * 10]
    elif isinstance(value, int):
        grid = [value // 2, value, value * 2]
        if value > 0:
            grid = [g for g in grid if g > 0]
    else:
        grid = [value / 2, value, value * 2]
    return tuple(dict.fromkeys(grid))


def _set(cfg: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = cfg
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


# ------------------------------------------------------------------- rules
def _check_rules(keep: list[Any], end_steps: int, loss: str) -> tuple[list[TopRule], list[Threshold], list[str]]:
    metrics_known = ["train_loss", "val_loss"] + (["val_acc"] if loss in CLASSIFICATION else [])
    rungs: list[tuple[int, TopRule]] = []
    thresholds: list[Threshold] = []
    for i, rule in enumerate(keep):
        if isinstance(rule, TopRule):
            if not isinstance(rule.k, int) or rule.k < 1:
                raise EvaluationError(f"keep top({rule.k}, ...): k must be at least 1", i, "keep")
            if not isinstance(rule.steps, int) or rule.steps < 1:
                raise EvaluationError(f"keep top(..., {rule.steps}): the step count must be at least 1", i, "keep")
            if rule.steps > end_steps:
                raise EvaluationError(f"keep top(..., {rule.steps}): past the configured end "
                                      f"(trainer.max_steps {end_steps}) of a trial", i, "keep")
            if rule.mode not in (None, "min", "max"):
                raise EvaluationError(f"keep top(...): mode must be \"min\" or \"max\", got {rule.mode!r}", i, "keep")
            rungs.append((i, rule))
        elif isinstance(rule, Threshold):
            if rule.op not in OPS:
                raise EvaluationError(f"keep {rule.metric} {rule.op} ...: the comparison must be one of "
                                      f"{' '.join(OPS)}", i, "keep")
            if isinstance(rule.value, bool) or not isinstance(rule.value, (int, float)):
                raise EvaluationError(f"keep {rule.metric} {rule.op} {rule.value!r}: compare with a number", i, "keep")
            thresholds.append(rule)
        else:
            raise EvaluationError(f"keep rule {rule!r} is neither top(...) nor a threshold", i, "keep")
        if rule.metric not in metrics_known:
            raise EvaluationError(f'keep m["{rule.metric}"]: trials report {", ".join(metrics_known)}'
                                  + ("" if loss in CLASSIFICATION else " (val_acc only with a classification loss)"),
                                  i, "keep")
    rungs.sort(key=lambda r: r[1].steps)
    for (_, a), (i, b) in itertools.pairwise(rungs):
        if a.steps == b.steps:
            raise EvaluationError(f"keep top(...) twice at step {b.steps}: rungs need different step counts", i, "keep")
    metrics = list(dict.fromkeys([r.metric for _, r in rungs] + [t.metric for t in thresholds]))
    return [r for _, r in rungs], thresholds, metrics


# -------------------------------------------------------------------- plan
def source_layers(store: RepoStore, version: Version) -> list[str]:
    """Module paths of the layers holding parameters in a source's rebuilt network."""
    from modelhub_torch.architecture import build_module

    arch = store.manifest(version.id).extra.get("architecture")
    if arch is None:
        raise EvaluationError(f"{version.ref} was committed without its network (a state_dict or checkpoint "
                              "file), so evaluate cannot rebuild it to train: commit the nn.Module itself")
    try:
        net = build_module(arch)
    except ModelHubError as exc:
        raise EvaluationError(f"{version.ref}: {exc}") from None
    import pytorch_lightning as pl

    for name, _ in net.named_children():
        if hasattr(pl.LightningModule, name):
            raise EvaluationError(f"{version.ref}: its layer {name!r} has the name of a LightningModule attribute, "
                                  "so evaluate cannot train it; rename the layer")
    return list(dict.fromkeys(n.rpartition(".")[0] for n, _ in net.named_parameters()))


def _free_prefix(base: str, existing: set[str]) -> str:
    """``base``, or ``base2``, ``base3``...: the first whose trial models do not exist yet,
    so running an evaluate again (another grid, more steps) starts new models, as each
    run of a tuner gets a directory of its own."""
    prefix, k = base, 1
    while any(m.startswith(f"{prefix}-trial") for m in existing):
        k += 1
        prefix = f"{base}{k}"
    return prefix


def plan_evaluation(
    store: RepoStore,
    sources: list[Version],
    config_path: str | None,
    vary: list[Vary],
    keep: list[TopRule | Threshold],
    *,
    name: str | None = None,
    statement: str = "",
    imports: tuple[str, ...] = (),
) -> EvaluationPlan:
    """Check everything an evaluate needs and expand its grid: trials are sources ×
    the cartesian product of the vary values (first source, first values first)."""
    from modelhub_torch.store.refs import check_name

    imports = tuple(imports)
    if not sources:
        raise EvaluationError("evaluate has no source versions (the query found none)")
    cfg, classes = resolve_config(load_config(config_path), imports)
    seen: dict[tuple[str, ...], int] = {}
    targets, grids = [], []
    for v in vary:
        if tuple(v.path) in seen:
            raise EvaluationError(f"vary {column(v.path)} twice", v.index, "vary")
        seen[tuple(v.path)] = v.index
        keys, current = _target(v, cfg, classes)
        if v.values is None:
            try:
                grid = auto_values(keys[-1], current)
            except ValueError as exc:
                raise EvaluationError(f"vary {column(v.path)} auto: {exc}", v.index, "vary") from None
        else:
            grid = tuple(v.values)
            if not grid:
                raise EvaluationError(f"vary {column(v.path)} in []: give at least one value", v.index, "vary")
        for value in grid:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise EvaluationError(f"vary {column(v.path)}: {value!r} is not a number, string or boolean",
                                      v.index, "vary")
            if keys[0] == "net" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise EvaluationError(f"vary {column(v.path)}: {value!r} is not a non-negative number",
                                      v.index, "vary")
        targets.append(keys)
        grids.append(grid)
    end_steps = cfg["trainer"]["max_steps"]
    ends = [end_steps]
    for keys, grid in zip(targets, grids):
        if keys == ("trainer", "max_steps"):
            if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid):
                raise EvaluationError("vary config.trainer.max_steps: values must be positive integers",
                                      seen[("config", "trainer", "max_steps")], "vary")
            ends = list(grid)
    rungs, thresholds, metrics = _check_rules(list(keep), min(ends), cfg["model"]["loss"])

    existing = set(store.refs.models())
    trials: list[Trial] = []
    columns = [column(v.path) for v in vary]
    for source in sources:
        layers = source_layers(store, source)
        for v, keys in zip(vary, targets):
            if keys[0] == "net" and not matching(keys[1], layers):
                raise EvaluationError(f'vary {column(v.path)}: the pattern matches no layer with parameters of '
                                      f'{source.ref} (its layers: {", ".join(layers) or "none"})', v.index, "vary")
        prefix = name if name is not None else _free_prefix(f"{source.model}-eval", existing)
        for combo in itertools.product(*grids):
            number = len(trials) + 1
            model = check_name("model", f"{prefix}-trial{number}")
            if model in existing:
                raise EvaluationError(f"model {model!r} already exists: an evaluate starts new models; name "
                                      "this one differently (as NAME / name=...)")
            config = copy.deepcopy(cfg)
            per_layer: dict[str, dict[str, float]] = {}
            for keys, value in zip(targets, combo):
                if keys[0] == "net":
                    per_layer.setdefault(keys[1], {})[keys[2]] = value
                else:
                    _set(config, keys, value)
            trials.append(Trial(number, source.ref, source.id, model, dict(zip(columns, combo)), config,
                                tuple(per_layer.items())))
    return EvaluationPlan(trials, rungs, thresholds, end_steps, columns, statement, imports, metrics)


__all__ = ["EvaluationError", "EvaluationPlan", "Threshold", "TopRule", "Trial", "Vary", "auto_values", "column",
           "plan_evaluation"]
