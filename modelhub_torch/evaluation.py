"""Evaluating a stored version on inputs: build the network from a class the user
names, load the version's weights (whole, or progressively plane by plane) and report
top-k predictions, accuracy and the bytes read.

A class named in a version's metadata is never imported: the repository is not
trusted to choose code, so the caller passes ``PKG.MOD:CLASS``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelhub_torch.errors import ModelHubError

if TYPE_CHECKING:
    from modelhub_torch.records import Version
    from modelhub_torch.repolike import RepositoryLike


class ModuleSpecError(ModelHubError, ValueError):
    """No usable network class: none named, not importable, or not an nn.Module."""


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` found."""

    ref: str
    inputs: int
    k: int
    seconds: float
    topk: Any  # LongTensor [N, k]
    accuracy: float | None  # top-k accuracy when labels were given
    # progressive only: share of inputs decided with 1, 2, ... planes; bytes read of a full load
    decided_by_planes: dict[str, float] = field(default_factory=dict)
    bytes_read: int | None = None
    bytes_full: int | None = None


def build_module(spec: str | None, v: Version, command: str = "eval") -> Any:
    """The network ``PKG.MOD:CLASS`` built from version ``v``'s hparams (modules in the
    working directory are importable, as with ``python -m``)."""
    import importlib

    if not spec:
        recorded = v.info.get("module")
        hint = (f"; it records {str(recorded)[:120]!r}: pass --module with that path if you trust it"
                if isinstance(recorded, str) and recorded else "")
        raise ModuleSpecError(
            f"{command} needs the network's class: pass --module PKG.MOD:CLASS (modelhub never imports "
            f"a class a repository names){hint}"
        )
    mod_name, _, cls_name = spec.replace(":", ".").rpartition(".")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ModuleSpecError(f"cannot import {spec} ({exc}); pass --module PKG.MOD:CLASS importable from here") from None
    if not isinstance(cls, type):
        raise ModuleSpecError(f"{spec} is not a class; pass --module PKG.MOD:CLASS naming an nn.Module subclass")
    import torch

    if not issubclass(cls, torch.nn.Module):
        raise ModuleSpecError(f"{spec} is not a torch.nn.Module subclass; pass the network's class")
    try:
        return cls(**v.hparams)
    except TypeError as exc:
        raise ModuleSpecError(f"cannot build {spec} from {v.ref}'s hparams ({exc}); pass --module") from None


def evaluate(repo: RepositoryLike, ref: Any, module: Any, x: Any, y: Any = None, *, k: int = 1,
             progressive: bool = False, progress: bool = False) -> EvalResult:
    """Top-``k`` predictions of version ``ref`` on ``x`` (and accuracy on labels ``y``).
    ``progressive`` reads high-order planes first and only what the answers need;
    ``progress`` shows a bar on stderr (bytes read, time so far)."""
    import torch

    v = repo.version(ref)
    module = module.eval()
    t0 = time.perf_counter()
    tiers: dict[str, float] = {}
    read = full = None
    if progressive:
        res = _progressive(repo, v.ref, module, x, k, progress)
        topk, read, full = res.topk, res.bytes_read, res.bytes_full
        tiers = {str(t): share for t, share in sorted(res.share_by_tier().items())}
    else:
        module.load_state_dict(repo.load_state_dict(v.ref, progress=progress))
        with torch.no_grad():
            topk = module(x).topk(k, dim=1).indices
    seconds = time.perf_counter() - t0
    acc = float((topk == y.reshape(-1, 1)).any(dim=1).float().mean()) if y is not None else None
    return EvalResult(v.ref, int(x.shape[0]), k, seconds, topk, acc, tiers, read, full)


def _progressive(repo: RepositoryLike, ref: str, module: Any, x: Any, k: int, progress: bool) -> Any:
    """A progressive prediction; with ``progress``, a bar of the bytes read so far,
    refreshed from another thread while the bounds are computed (the first run also
    compiles kernels, which can take many seconds)."""
    from modelhub_torch.progressive import ProgressiveModel

    if not progress:
        return ProgressiveModel(module, repo, ref).predict(x, k=k)
    from tqdm.auto import tqdm

    holder: dict[str, Any] = {}
    done = threading.Event()
    bar = tqdm(desc=f"eval {ref} (progressive)", unit="B", unit_scale=True, unit_divisor=1024, leave=False)

    def watch() -> None:
        while not done.wait(0.2):
            pm = holder.get("model")
            if pm is not None:
                bar.total = pm.bytes_full
                bar.n = pm.bytes_read
            bar.refresh()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        holder["model"] = pm = ProgressiveModel(module, repo, ref)
        return pm.predict(x, k=k)
    finally:
        done.set()
        watcher.join()
        bar.close()


def top1(repo: RepositoryLike, v: Version, module: Any, x: Any, y: Any = None) -> tuple[Any, float | None]:
    """Top-1 predictions of version ``v`` on ``x`` and their accuracy on ``y`` (if given)."""
    import torch

    module = module.eval()
    module.load_state_dict(repo.load_state_dict(v.ref))
    with torch.no_grad():
        pred = module(x).argmax(dim=1)
    return pred, (float((pred == y.reshape(-1)).float().mean()) if y is not None else None)


def agreement(pred_a: Any, pred_b: Any) -> float:
    """Share of inputs on which two sets of predictions agree."""
    return float((pred_a == pred_b).float().mean())


def load_times(repo: RepositoryLike, progress: bool = False, when: str = "now") -> list[float]:
    """Seconds to load each version's tensors, after one warm-up load (compiled kernels,
    imports); ``when`` labels the progress bar (e.g. before / after an archive)."""
    from tqdm import tqdm

    times = []
    versions = repo.versions()
    # tensors only: the skeleton of a version holding pickles is never unpickled here
    if versions:
        repo.load_tensors(versions[0].ref)  # warm-up: compiled kernels, imports
    for v in tqdm(versions, desc=f"load every version ({when})", unit="version", disable=not progress, leave=False):
        t0 = time.perf_counter()
        repo.load_tensors(v.ref)
        times.append(time.perf_counter() - t0)
    return times
