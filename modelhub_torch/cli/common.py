"""What every command needs: the repository it names, and the errors it reports."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from modelhub_torch.errors import ModelHubError

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository


class CliError(ModelHubError):
    """Bad command-line input found after parsing (reported like any ModelHubError)."""


def open_repo(args: argparse.Namespace) -> Repository:
    """The repository of ``--repo`` (imported here: ``--help`` must not load it)."""
    from modelhub_torch.repository import Repository

    return Repository(args.repo, storage_options=getattr(args, "storage_options", None))


def aliases_by_ref(repo: Repository, models: list[str]) -> dict[str, list[str]]:
    """ref -> its aliases."""
    out: dict[str, list[str]] = {}
    for model in models:
        for alias, ref in sorted(repo.tags(model).items()):
            out.setdefault(ref, []).append(alias)
    return out
