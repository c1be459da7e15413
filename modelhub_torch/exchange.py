"""Moving versions in and out of a repository as ordinary files: committing a
directory of checkpoints, and writing a version as ``.ckpt``/``.pt``/``.pth`` or
``.safetensors``.

The facade calls these (``Repository.import_files``, ``Repository.export``); they use
only the repository's public API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelhub_torch.checkpoint_files import (
    CHECKPOINT_EXTS,
    SAFETENSORS_EXTS,
    CheckpointFileError,
    lightning_meta,
    read_checkpoint,
)
from modelhub_torch.errors import ModelHubError, PickleRequiredError

if TYPE_CHECKING:
    from modelhub_torch.records import Version
    from modelhub_torch.repolike import RepositoryLike

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # as skeleton.state_dict_paths looks


class ExportError(ModelHubError, ValueError):
    """A version that cannot be written where or how it was asked."""


class ImportStoppedError(ModelHubError):
    """A file of an import could not be committed; the files before it were."""


@dataclass(frozen=True)
class ImportedFile:
    """One file of an import and the version it became."""

    file: str  # relative to the import's base directory (posix), else as given
    version: Any  # Version, with its sizes as they stand after the whole import


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_version` wrote."""

    ref: str
    id: str
    path: Path
    format: str  # "ckpt", "pt", "pth" or "safetensors"
    tensors: int
    bytes: int
    # top-level entries of the checkpoint the file does not hold (safetensors keeps only
    # the state_dict: epoch, optimizer_states, callbacks ... are left out)
    left_out: list[str] = field(default_factory=list)


def import_files(
    repo: RepositoryLike,
    paths: list[Path],
    model: str,
    *,
    base: str | Path | None = None,
    allow_pickle: bool = False,
    progress: bool = False,
) -> list[ImportedFile]:
    """Commit each checkpoint file in order as the next version of ``model`` (metrics
    and hparams a Lightning checkpoint carries come along). A file that fails stops the
    import with :class:`ImportStoppedError`; the files before it stay committed."""
    from tqdm import tqdm

    done: list[tuple[str, Any]] = []
    with tqdm(paths, desc="import", unit="file", disable=not progress) as bar:
        for path in bar:
            path = Path(path)
            rel = path.relative_to(base).as_posix() if base is not None and path.is_relative_to(base) else str(path)
            bar.set_postfix_str(rel)
            try:
                obj = read_checkpoint(path, allow_pickle)
                metrics, hparams = lightning_meta(obj)
                v = repo.commit(obj, model, metrics=metrics, hparams=hparams, message=f"imported {rel}",
                                allow_pickle=allow_pickle)
            except (ModelHubError, OSError) as exc:
                kept = f"; the {len(done)} files before it were committed ({done[-1][1].ref} is the last)" if done else ""
                raise ImportStoppedError(f"import stopped at {rel}: {exc}{kept}") from exc
            done.append((rel, v))
            del obj
    # a commit re-encodes its parent, so the sizes are read back once all are in
    final = {v.id: v for v in repo.versions(model)}
    return [ImportedFile(rel, final.get(v.id, v)) for rel, v in done]


def export_version(
    repo: RepositoryLike,
    ref: Any,
    path: str | Path,
    *,
    force: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> ExportResult:
    """Write version ``ref`` to ``path``: the whole checkpoint as ``torch.save`` wrote it
    (``.ckpt``/``.pt``/``.pth``), or its state_dict as ``.safetensors`` (what that format
    cannot hold is listed in ``left_out``). The file appears whole or not at all, with
    the permissions a new file gets (umask), whatever the format."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in CHECKPOINT_EXTS:
        raise ExportError(
            f"{target}: cannot tell the format from {suffix or '(no suffix)'!r}; use one of {', '.join(CHECKPOINT_EXTS)}")
    if target.exists() and not force:
        raise ExportError(f"{target} exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"no such directory: {target.parent}")
    v = repo.version(ref)
    tmp = target.with_name(f".{target.name}.modelhub-tmp")
    left_out: list[str] = []
    try:
        with open(tmp, "wb"):  # created as any new file is: its mode is the one to keep
            pass
        mode = tmp.stat().st_mode & 0o777
        if suffix in SAFETENSORS_EXTS:
            count = _write_safetensors(repo, v, tmp, target, progress)
            left_out = outside_state_dict(repo.manifest(v.id).skeleton)
        else:
            count = _write_torch(repo, v, tmp, target, allow_pickle, progress)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportResult(v.ref, v.id, target, suffix.lstrip("."), count, target.stat().st_size, left_out)


def _write_safetensors(repo: RepositoryLike, v: Version, tmp: Path, target: Path, progress: bool) -> int:
    from safetensors.torch import save_file

    sd = untie(repo.load_state_dict(v.id, progress=progress))
    try:
        save_file(sd, str(tmp), metadata={"modelhub_ref": v.ref, "modelhub_id": v.id})
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ExportError(f"cannot write {target} as safetensors: {exc}") from exc
    return len(sd)


def _write_torch(repo: RepositoryLike, v: Version, tmp: Path, target: Path, allow_pickle: bool,
                 progress: bool) -> int:
    import torch

    obj = load_whole(repo, v, allow_pickle, "export it whole", progress)
    try:
        torch.save(obj, str(tmp))
    except (TypeError, AttributeError, RuntimeError, ValueError) as exc:  # unpicklable objects
        raise ExportError(f"cannot write {target} with torch.save: {exc}") from exc
    return len(repo.manifest(v.id).live_tensors())


def load_whole(repo: RepositoryLike, v: Version, allow_pickle: bool, what: str, progress: bool = False) -> Any:
    """A whole version; one holding pickles only with ``allow_pickle`` (the load warns
    first what it trusts). The refusal says what the pickles import and what to do."""
    try:
        return repo.load(v.id, weights_only=not allow_pickle, progress=progress)
    except PickleRequiredError:
        from modelhub_torch.trust import describe, skeleton_pickle_globals

        imports = describe(skeleton_pickle_globals(repo.manifest(v.id).skeleton))
        raise PickleRequiredError(
            f"{v.ref} holds pickled objects (importing {imports}), and unpickling runs code; to {what} pass "
            "--allow-pickle if you trust this repository (the weights alone: 'modelhub export REF OUT.safetensors')"
        ) from None


def untie(sd: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, each with its own storage (safetensors refuses shared ones)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, t in sd.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and key in seen:
            t = t.clone()
        else:
            seen.add(key)
        out[k] = t.contiguous()
    return out


def outside_state_dict(skeleton: Any) -> list[str]:
    """Top-level entries of a checkpoint besides its state_dict (nothing for a plain
    state_dict): what a weights-only file leaves out."""
    from modelhub_torch.skeleton_check import state_dict_paths

    if not (isinstance(skeleton, dict) and "$dict" in skeleton) or not state_dict_paths(skeleton):
        return []
    keys = [str(k) for k, _ in skeleton["$dict"]]
    inner = next((k for k in STATE_DICT_KEYS if k in keys and _holds_weights(skeleton, k)), None)
    return [k for k in keys if k != inner] if inner else []


def _holds_weights(skeleton: dict[str, Any], key: str) -> bool:
    node = dict((str(k), v) for k, v in skeleton["$dict"])[key]
    return isinstance(node, dict) and "$dict" in node


__all__ = ["CheckpointFileError", "ExportError", "ExportResult", "ImportStoppedError", "ImportedFile",
           "export_version", "import_files", "load_whole", "outside_state_dict", "untie"]
