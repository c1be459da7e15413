"""The ``modelhub`` command line: every command, its arguments and their help."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from modelhub_torch import __version__
from modelhub_torch.cli.output import PROG
from modelhub_torch.pas.planner import ALGORITHMS, SCHEMES


def _load_factor(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or 'none')") from None
    if not 1.0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"{text} is out of range: a factor from 1 to 1e6 (or 'none')")
    return value


def _kv(text: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON (numbers, true/false) or else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        try:
            value = float(raw)  # nan, inf
        except ValueError:
            value = raw
    return key, value


def default_repo() -> str:
    return os.environ.get("MODELHUB_REPO") or os.getcwd()


def build_parser() -> argparse.ArgumentParser:
    # global options are accepted before and after the command name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--repo",
        metavar="PATH_OR_URL",
        default=argparse.SUPPRESS,
        help="repository (default: $MODELHUB_REPO, else the current directory)",
    )
    common.add_argument(
        "--storage-option",
        dest="storage_options",
        metavar="KEY=VALUE",
        action="append",
        type=_kv,
        default=argparse.SUPPRESS,
        help="an fsspec storage option for a remote --repo (repeatable; e.g. endpoint_url=http://host:9000, "
        "anon=true); fsspec's FSSPEC_<PROTOCOL>_<KEY> environment variables work too",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compact, versioned checkpoint store for PyTorch.",
        parents=[common],
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    c = cmd("init", "create a repository")
    c.add_argument("path", nargs="?", metavar="PATH", help="where (default: --repo)")
    c.add_argument("--max-load-factor", type=_load_factor, metavar="F", default=argparse.SUPPRESS,
                   help="recreation budget: every version restores within F times a whole load "
                        "(default 2.5; 'none': unbounded delta chains, smallest storage)")

    c = cmd("commit", "store a checkpoint file as a new version")
    c.add_argument("file", metavar="FILE", help=".ckpt/.pt/.pth (torch.save) or .safetensors")
    c.add_argument("--model", required=True, help="model name")
    c.add_argument("--parent", metavar="REF", help="parent version (default: the model's latest)")
    c.add_argument("-m", "--message", default="", help="what changed")
    c.add_argument("--metric", action="append", type=_kv, default=[], metavar="K=V", help="repeatable")
    c.add_argument("--hparam", action="append", type=_kv, default=[], metavar="K=V", help="repeatable")
    c.add_argument("--allow-pickle", action="store_true", help="trust FILE: load and store pickled objects")

    c = cmd("import", "commit every checkpoint file of a directory, in natural order")
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--model", required=True, help="model name")
    c.add_argument("--pattern", default="*", metavar="GLOB", help="file names to take, e.g. 'epoch=*.ckpt' or '**/*.ckpt' (default: *)")
    c.add_argument("--allow-pickle", action="store_true", help="trust the files: load and store pickled objects")

    c = cmd("list", "models, versions and their lineage")
    c.add_argument("model", nargs="?", metavar="MODEL")

    c = cmd("desc", "describe one version: metadata and tensors")
    c.add_argument("ref", metavar="REF")

    c = cmd("diff", "compare two versions: metrics, hparams and every tensor")
    c.add_argument("a", metavar="A")
    c.add_argument("b", metavar="B")
    c.add_argument("--allow-pickle", action="store_true", help="load versions holding pickled objects")

    c = cmd("export", "write a version as a .ckpt/.pt/.pth or .safetensors file")
    c.add_argument("ref", metavar="REF")
    c.add_argument("out", metavar="OUT")
    c.add_argument("--force", action="store_true", help="overwrite OUT")
    c.add_argument("--allow-pickle", action="store_true", help="load versions holding pickled objects")

    c = cmd("eval", "evaluate a version on inputs from FILE (.pt/.npz), optionally progressively")
    c.add_argument("ref", metavar="REF")
    c.add_argument("--data", required=True, metavar="FILE",
                   help=".pt holding a tensor, (x, y) or {'x': ..., 'y': ...}; .npz with arrays x [y]")
    c.add_argument("--progressive", action="store_true", help="read high-order planes first (docs/PROGRESSIVE.md)")
    c.add_argument("-k", type=int, default=1, help="top-k (default 1)")
    c.add_argument("--module", metavar="PKG.MOD:CLASS",
                   help="the architecture (default: the class the version recorded, built from its hparams)")

    c = cmd("query", "run a DQL statement: select, slice, construct or evaluate, e.g. "
            "'select m where m.metrics.val_acc > 0.9' (docs/DQL.md)")
    c.add_argument("text", metavar="DQL", nargs="?", help="the statement (omit with --list)")
    c.add_argument("--save", metavar="NAME", help="save the statement as NAME (run it with ... from \"NAME\"); "
                   "runs nothing")
    c.add_argument("--list", action="store_true", help="list the saved statements")
    c.add_argument("--dry-run", action="store_true", help="evaluate: print the trial grid, train nothing")
    c.add_argument("--executor", choices=("embedded", "ray"), default="embedded",
                   help="where evaluate trains its trials: on this machine (default) or on Ray Tune")
    c.add_argument("--workers", type=int, default=1, metavar="N",
                   help="evaluate: train N trials at a time (embedded: in N worker processes, default 1; "
                   "ray: at most N, default as many as the cluster has CPUs for)")
    c.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="evaluate: a module the config's class_path may name (repeat for more)")

    c = cmd("copy", "start a new model from a version's weights (REF becomes its parent)")
    c.add_argument("ref", metavar="REF")
    c.add_argument("new_model", metavar="NEWMODEL")
    c.add_argument("-m", "--message", default="", help="message of the new model's first version")

    c = cmd("tag", "point an alias (model@ALIAS) at a version")
    c.add_argument("ref", metavar="REF")
    c.add_argument("alias", metavar="ALIAS")

    cmd("stats", "raw vs stored size, per model and per byte plane")

    c = cmd("verify", "re-hash every object and decode every version")
    c.add_argument("--rebuild-index", action="store_true", help="rebuild the catalog from refs and manifests")
    c.add_argument("--repair", action="store_true",
                   help="restore refs from manifests and move what cannot be restored to quarantine/")

    c = cmd("archive", "re-plan how every version is stored: least storage within a recreation budget (PAS)")
    c.add_argument("--budget", type=float, default=2.0, metavar="ALPHA",
                   help="each version may take ALPHA x its fastest possible recreation time (default 2)")
    c.add_argument("--scheme", choices=SCHEMES, default="independent",
                   help="a version's recreation time: sum (independent) or max (parallel) over its tensors")
    c.add_argument("--algorithm", choices=ALGORITHMS, default="pas-mt", help="planner (default pas-mt)")
    c.add_argument("--cold", metavar="URL", help="second storage tier (any fsspec URL) for low-order planes")
    c.add_argument("--hot-planes", type=int, default=2, metavar="N",
                   help="high-order planes that always stay in the repository (default 2)")
    c.add_argument("--cold-price", type=float, default=0.25, metavar="P",
                   help="cost of a cold byte relative to a repository byte (default 0.25)")
    c.add_argument("--lossy", metavar="SCHEME", help="fp16 | bf16 | fixed:K | quant:K, for the versions of --versions")
    c.add_argument("--versions", nargs="+", default=[], metavar="REF", help="versions --lossy applies to (opt-in)")
    c.add_argument("--data", metavar="FILE", help="inputs [and labels] (as for eval) to check lossy versions' accuracy")
    c.add_argument("--module", metavar="PKG.MOD:CLASS", help="architecture for the accuracy check (as for eval)")
    c.add_argument("--measure", action="store_true", help="load every version before and after, report load times")
    c.add_argument("--dry-run", action="store_true", help="plan and report without rewriting anything")

    planes_help = ("fetch only the top K byte planes of each float tensor (enough for progressive inference; "
                   "a full load fetches the rest from the source)")
    c = cmd("push", "send versions to another repository (path or URL), only what it lacks")
    c.add_argument("remote", metavar="REMOTE", help="destination repository (created when missing)")
    c.add_argument("refs", nargs="*", metavar="REF", help="model names or versions (m, m@v3, m@best); default: all")

    c = cmd("publish", "push to a hub (the paper's verb; the same as push)")
    c.add_argument("remote", metavar="HUB_URL", help="the hub (http(s)://...) or any repository")
    c.add_argument("refs", nargs="*", metavar="REF", help="model names or versions (m, m@v3, m@best); default: all")

    c = cmd("pull", "fetch versions from another repository (path or URL), only what is missing here")
    c.add_argument("remote", metavar="REMOTE", help="source repository")
    c.add_argument("refs", nargs="*", metavar="REF", help="model names or versions (m, m@v3, m@best); default: all")
    c.add_argument("--planes", type=int, metavar="K", help=planes_help)

    c = cmd("clone", "copy a repository (or some of its models and versions) to a new location")
    c.add_argument("src", metavar="SRC", help="source repository (path or URL)")
    c.add_argument("dst", metavar="DST", help="where the new repository goes")
    c.add_argument("refs", nargs="*", metavar="REF", help="model names or versions (m, m@v3, m@best); default: all")
    c.add_argument("--planes", type=int, metavar="K", help=planes_help)

    c = cmd("serve", "serve a repository as a hub over HTTP (push, pull, search, web pages)")
    c.add_argument("path", nargs="?", metavar="PATH_OR_URL", help="the repository (default: --repo); created if absent")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    c.add_argument("--public", action="store_true", help="anyone may read (pushing still needs a write token)")
    c.add_argument("--max-body", type=int, default=512 << 20, metavar="BYTES",
                   help="largest request body accepted (default 512 MiB)")
    c.add_argument("--rate", type=float, default=200.0, metavar="N",
                   help="requests per second per token (per address when anonymous; default 200), per worker")
    c.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default 1; more use more cores, each with its own rate counts)")

    c = cmd("token", "create, list or revoke the hub's access tokens (run where the hub's repository is)")
    tsub = c.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = tsub.add_parser("create", help="a new token (printed once)", parents=[common])
    t.add_argument("--scope", choices=["read", "write"], required=True, help="read: pull and browse; write: also push")
    t.add_argument("--models", nargs="+", metavar="GLOB", help="only models matching these globs may be written")
    t.add_argument("--name", help="a note saying whose it is")
    tsub.add_parser("list", help="the tokens (ids, scopes; never the secrets)", parents=[common])
    t = tsub.add_parser("revoke", help="stop accepting a token", parents=[common])
    t.add_argument("id", metavar="ID", help="the token's id (see 'modelhub token list')")

    c = cmd("login", "save a token for a hub (user config file, mode 0600); MODELHUB_TOKEN overrides it")
    c.add_argument("url", metavar="HUB_URL")
    c.add_argument("--token", help="the token (default: asked for, or read from stdin)")
    c = cmd("logout", "forget the token saved for a hub")
    c.add_argument("url", metavar="HUB_URL")

    c = cmd("search", "search a hub: free text over names, messages, aliases, metric names, or a DQL select")
    c.add_argument("query", nargs="*", metavar="QUERY", help="words, or 'select m where ...' (default: everything)")
    c.add_argument("--hub", required=True, metavar="HUB_URL", help="the hub to search")
    c.add_argument("--page", type=int, default=1, help="page number (from 1)")
    c.add_argument("--per-page", type=int, default=20, help="results per page (at most 100)")

    c = cmd("gc", "delete objects no version references")
    c.add_argument("--dry-run", action="store_true", help="only report what would go")
    c.add_argument("--repack", action="store_true",
                   help="first do what commits defer: whole parents become reverse deltas, plain deltas "
                        "take their neighbour as context, all within the recreation budget")
    return p
