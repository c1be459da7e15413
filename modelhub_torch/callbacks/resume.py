"""Refusing to resume from a weights-only version, with the nearest one that can.

``trainer.fit(ckpt_path=<version>)`` on a version whose trainer state was pruned
would fail deep inside Lightning with a KeyError; ``ModelHubCheckpoint`` asks
:func:`resume_refusal` first and stops with an error that names where to resume from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelhub_torch.records import Version
from modelhub_torch.resumable import trainer_state

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository


def _manifest_resumable(repo: Repository, vid: str) -> bool:
    return trainer_state(repo.manifest(vid).skeleton) is True


def nearest_resumable(repo: Repository, v: Version) -> Version | None:
    """The version of ``v``'s model closest in number to ``v`` that can resume (the
    newer on a tie), or None. The index's ``resumable`` column narrows the search where
    the catalog has it; each answer is confirmed on the manifest."""
    others = [o for o in repo.versions(v.model) if o.id != v.id]
    others.sort(key=lambda o: (abs(o.number - v.number), -o.number))
    for o in others:
        if getattr(o, "resumable", None) is False:
            continue
        if _manifest_resumable(repo, o.id):
            return o
    return None


def _label(repo: Repository, v: Version) -> str:
    """``model@vN (the latest, best)``: which well-known names point at a version."""
    names = [f"{v.model}@{alias}" for alias, ref in sorted(repo.tags(v.model).items()) if ref == v.ref]
    versions = repo.versions(v.model)
    if versions and versions[-1].id == v.id:
        names.insert(0, "the latest")
    return f"{v.ref} ({', '.join(names)})" if names else v.ref


def resume_refusal(repo: Repository, ref: str) -> str | None:
    """Why ``trainer.fit(ckpt_path=<ref>)`` cannot resume from ``ref`` (None when it can,
    or when it is no trainer checkpoint, which Lightning explains itself): the version,
    what happened to its trainer state, and the nearest version that can resume."""
    from modelhub_torch.manifest import DROPPED

    vid = repo.resolve(ref)
    m = repo.manifest(vid)
    if trainer_state(m.skeleton) is not False:
        return None
    v = repo.version(vid)
    if any(t["data"]["kind"] == DROPPED for t in m.tensors) or v.info.get("trainer_state") is not False:
        why = ('its trainer state (optimizer, scheduler, callbacks) was pruned (ModelHubCheckpoint\'s '
               'trainer_state="latest" keeps it only for the newest and the best versions)')
    else:
        why = "it holds no trainer state (saved with save_weights_only=True, or pruned)"
    near = nearest_resumable(repo, v)
    where = (f"resume from {_label(repo, near)}" if near is not None
             else f"no version of {v.model} can resume: start a new fit from its weights")
    return (f"cannot resume training from {v.ref}: {why}; {where}, or load weights only with "
            "load_from_checkpoint (trainer.validate/test(ckpt_path=...) work too). "
            'ModelHubCheckpoint(trainer_state="all") keeps every version resumable.')
