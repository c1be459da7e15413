"""Reading checkpoint and input files from disk: ``.ckpt``/``.pt``/``.pth``
(``torch.save``), ``.safetensors``, and the ``.pt``/``.npz`` inputs an evaluation takes.

Files are read safely (``torch.load(weights_only=True)``) unless the caller trusts
them; a file that needs pickle is refused with a message that names what it imports.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from modelhub_torch.errors import ModelHubError, ModelHubWarning

TORCH_EXTS = (".ckpt", ".pt", ".pth")
SAFETENSORS_EXTS = (".safetensors",)
CHECKPOINT_EXTS = TORCH_EXTS + SAFETENSORS_EXTS


class CheckpointFileError(ModelHubError, ValueError):
    """A file that is not a readable checkpoint (or input file) of a known type."""


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Any:
    """The object a checkpoint file holds, read safely unless ``allow_pickle`` (which
    warns first what the file's pickles import)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise CheckpointFileError(
            f"{path} is a directory; use 'modelhub import {path} --model NAME' for a directory of checkpoints")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXTS:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointFileError(f"cannot read {path} as safetensors: {exc}") from exc
    if suffix not in TORCH_EXTS:
        raise CheckpointFileError(
            f"{path}: unknown checkpoint type {suffix or '(none)'!r}; expected one of {', '.join(CHECKPOINT_EXTS)}")
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise _needs_pickle(path, str(exc)) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointFileError(f"cannot read {path} with torch.load: {exc}") from exc
    from modelhub_torch.trust import describe, file_pickle_globals

    warnings.warn(f"--allow-pickle: unpickling {path} runs code it holds; it imports "
                  f"{describe(file_pickle_globals(path))}", ModelHubWarning, stacklevel=2)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling code: report, never a traceback
        raise CheckpointFileError(f"cannot read {path} with torch.load: {exc}") from exc


def _needs_pickle(path: Path, text: str) -> CheckpointFileError:
    """The refusal of a file only pickle can read, naming a global it imports."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return CheckpointFileError(
            f"{path} holds objects that only pickle can load (such as {found.group(1)}); "
            "pass --allow-pickle if you trust the file"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    why = " ".join((detail.group(1) if detail else text.splitlines()[0] if text else "").split())
    return CheckpointFileError(
        f"cannot read {path} with torch.load(weights_only=True): {why or 'UnpicklingError'}; "
        "if it is a pickled checkpoint you trust, pass --allow-pickle"
    )


def lightning_meta(obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and hparams a Lightning checkpoint carries where they are obvious:
    ``epoch``, ``global_step``, the ModelCheckpoint's monitored score, and the scalar
    ``hyper_parameters``. Anything else (plain state_dicts) yields nothing."""
    metrics: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    if not isinstance(obj, dict) or "state_dict" not in obj:
        return metrics, hparams
    for key in ("epoch", "global_step"):
        if type(obj.get(key)) is int:
            metrics[key] = obj[key]
    callbacks = obj.get("callbacks")
    if isinstance(callbacks, dict):
        for name, state in callbacks.items():
            if not (str(name).startswith("ModelCheckpoint") and isinstance(state, dict)):
                continue
            monitor, score = state.get("monitor"), _scalar(state.get("current_score"))
            if isinstance(monitor, str) and score is not None:
                metrics.setdefault(monitor, score)
    hp = obj.get("hyper_parameters")
    if isinstance(hp, dict):
        for k, v in hp.items():
            if v is None or isinstance(v, (bool, int, float, str)):
                hparams[str(k)] = v
    return metrics, hparams


def _scalar(v: Any) -> float | int | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    if hasattr(v, "numel") and callable(v.numel) and v.numel() == 1:
        return v.item()
    return None


def natural_key(rel: str, mtime: float) -> tuple:
    """Files with numbers sort by those numbers (epoch=2 before epoch=10), then by
    mtime and name; files without any number come after them."""
    nums = tuple(int(n) for n in re.findall(r"\d+", rel))
    return (0 if nums else 1, nums, mtime, rel)


def find_checkpoints(directory: str | Path, pattern: str = "*") -> list[Path]:
    """Checkpoint files of ``directory`` matching the glob ``pattern``, in natural order."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"no such directory: {directory}")
    if not directory.is_dir():
        raise CheckpointFileError(f"{directory} is not a directory; use 'modelhub commit' for one file")
    found = []
    for path in directory.glob(pattern):
        if path.is_file() and path.suffix.lower() in CHECKPOINT_EXTS:
            rel = path.relative_to(directory).as_posix()
            found.append((natural_key(rel, path.stat().st_mtime), path))
    return [p for _, p in sorted(found)]


def read_inputs(path: str | Path) -> tuple[Any, Any]:
    """Inputs and (optional) labels from a ``.pt`` file (a tensor, ``(x, y)`` or
    ``{'x': ..., 'y': ...}``) or a ``.npz`` file (arrays ``x`` [``y``])."""
    import numpy as np
    import torch

    path = str(path)
    if path.endswith(".npz"):
        with np.load(path) as z:
            keys = list(z.keys())
            x = z["x"] if "x" in z else z[keys[0]]
            y = z["y"] if "y" in z else (z[keys[1]] if len(keys) > 1 and "x" not in z else None)
            return torch.from_numpy(np.asarray(x)).float(), None if y is None else torch.from_numpy(np.asarray(y)).long()
    obj = torch.load(path, weights_only=True)
    if isinstance(obj, dict):
        x = obj.get("x", obj.get("inputs"))
        y = obj.get("y", obj.get("labels"))
    elif isinstance(obj, (tuple, list)):
        x, y = obj[0], (obj[1] if len(obj) > 1 else None)
    else:
        x, y = obj, None
    if not isinstance(x, torch.Tensor):
        raise CheckpointFileError(f"{path}: expected a tensor of inputs (or (x, y) / {{'x': ..., 'y': ...}})")
    return x, y
