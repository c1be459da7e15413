"""The ``modelhub`` command: a thin shell over :class:`modelhub_torch.Repository`
and the library modules under it (exchange, diffing, inspection, evaluation).

Every command parses its arguments, calls the Python API and prints either aligned
tables for people or, with ``--json``, one JSON document on stdout for programs.
Errors the package raises on bad input or bad data become one line on stderr,
``modelhub: error: <message>``, and exit status 2 (``verify`` exits 1 when it finds
problems). torch and the repository are imported only when a command runs, so
``modelhub --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from modelhub_torch.cli.browse import cmd_desc, cmd_list, cmd_query, cmd_stats
from modelhub_torch.cli.diff import cmd_diff
from modelhub_torch.cli.evaluate import cmd_eval
from modelhub_torch.cli.files import cmd_commit, cmd_export, cmd_import
from modelhub_torch.cli.hub import cmd_login, cmd_logout, cmd_search, cmd_serve, cmd_token
from modelhub_torch.cli.manage import cmd_archive, cmd_copy, cmd_gc, cmd_init, cmd_tag, cmd_verify
from modelhub_torch.cli.output import PROG, Output, error, warn
from modelhub_torch.cli.parser import build_parser, default_repo
from modelhub_torch.cli.sync import cmd_clone, cmd_pull, cmd_push
from modelhub_torch.errors import ModelHubError

COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "init": cmd_init,
    "commit": cmd_commit,
    "import": cmd_import,
    "list": cmd_list,
    "desc": cmd_desc,
    "diff": cmd_diff,
    "export": cmd_export,
    "eval": cmd_eval,
    "query": cmd_query,
    "copy": cmd_copy,
    "tag": cmd_tag,
    "stats": cmd_stats,
    "verify": cmd_verify,
    "archive": cmd_archive,
    "gc": cmd_gc,
    "push": cmd_push,
    "pull": cmd_pull,
    "clone": cmd_clone,
    "publish": cmd_push,
    "serve": cmd_serve,
    "token": cmd_token,
    "login": cmd_login,
    "logout": cmd_logout,
    "search": cmd_search,
}


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Warnings the library raises (a damaged version skipped, an index rebuilt, what an
    unpickling opt-in trusts) become one line each, like errors."""
    warn(str(message))


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 verify problems, 2 errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.repo = getattr(args, "repo", None) or default_repo()
    args.json = getattr(args, "json", False)
    args.storage_options = dict(getattr(args, "storage_options", None) or []) or None
    out = Output(args.json)
    import warnings

    warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args, out)
    except BrokenPipeError:  # `modelhub list | head`: the reader left, nothing to report
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except ModelHubError as exc:
        error(str(exc))
    except FileNotFoundError as exc:
        error(str(exc) if not exc.filename else f"no such file or directory: {exc.filename}")
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except OSError as exc:  # disk full, quota, file size limit on a file the CLI writes
        where = f": {exc.filename}" if exc.filename else ""
        error(f"{exc.strerror or exc}{where}; nothing was changed in the repository")
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    return 2


__all__ = ["COMMANDS", "PROG", "build_parser", "main"]
