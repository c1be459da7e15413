"""The ``modelhub`` command: a thin shell over :class:`modelhub_torch.Repository`.

Every command parses its arguments, calls the Python API and prints either aligned
tables for people or, with ``--json``, one JSON document on stdout for programs.
Errors the package raises on bad input or bad data become one line on stderr,
``modelhub: error: <message>``, and exit status 2 (``verify`` exits 1 when it finds
problems). torch and the repository are imported only when a command runs, so
``modelhub --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelhub_torch import __version__
from modelhub_torch.errors import ModelHubError
from modelhub_torch.manifest import DROPPED
from modelhub_torch.pas.planner import ALGORITHMS, SCHEMES

if TYPE_CHECKING:
    from modelhub_torch.repository import Repository, Version

PROG = "modelhub"
TORCH_EXTS = (".ckpt", ".pt", ".pth")
SAFETENSORS_EXTS = (".safetensors",)
CHECKPOINT_EXTS = TORCH_EXTS + SAFETENSORS_EXTS


class CliError(ModelHubError):
    """Bad command-line input found after parsing (reported like any ModelHubError)."""


# ===================================================================== formatting
def human_size(n: int | float | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB`` ... (binary units)."""
    if n is None:
        return "-"
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_ratio(r: float | None) -> str:
    if r is None or (isinstance(r, float) and not math.isfinite(r)):
        return "-"
    return f"{r:.2f}x"


def fmt_value(v: Any) -> str:
    """A metric / hparam value, compact."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"


def fmt_shape(shape: list[int]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def fmt_kv(d: dict[str, Any], limit: int | None = None) -> str:
    items = list(d.items())
    text = "  ".join(f"{k}={fmt_value(v)}" for k, v in items[:limit])
    if limit is not None and len(items) > limit:
        text += f"  (+{len(items) - limit})"
    return text


def table(headers: list[str], rows: list[list[str]], right: set[int] | frozenset[int] = frozenset()) -> str:
    """Columns padded to their widest cell; ``right`` columns are right-aligned."""
    cells = [headers, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def elide(text: str, width: int = 72) -> str:
    """``text`` cut in the middle to ``width`` characters (tensor paths of callback
    state can run to hundreds of characters; JSON output keeps them whole)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


def _summarize_paths(paths: list[str], limit: int = 6) -> str:
    """A few paths in full, many as counts per top-level entry."""
    if len(paths) <= limit:
        return ", ".join(elide(p, 60) for p in paths)
    groups: dict[str, int] = {}
    for p in paths:
        head = p.split("/", 1)[0]
        groups[head] = groups.get(head, 0) + 1
    return f"{len(paths)} tensors: " + ", ".join(f"{elide(h, 40)}/… ({n})" for h, n in groups.items())


def _json_safe(obj: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


class Output:
    """Where a command's results go: human text or one JSON document on stdout."""

    def __init__(self, as_json: bool):
        self.json = as_json

    def emit(self, doc: Any, text: str | None = None) -> None:
        if self.json:
            print(json.dumps(_json_safe(doc), indent=2, allow_nan=False))
        elif text is not None:
            print(text)

    def progress(self) -> bool:
        """Progress bars only for a person watching a terminal."""
        return not self.json and sys.stderr.isatty()


def version_flags(v: Version) -> list[str]:
    """Marks a person needs before using a version: it cannot resume training, or
    loading it in full unpickles (runs code)."""
    flags = []
    if v.resumable is False:
        flags.append("weights-only")
    if v.holds_pickle:
        flags.append("pickle")
    return flags


def version_doc(v: Version, aliases: list[str] | None = None) -> dict[str, Any]:
    d = dataclasses.asdict(v)
    d["ratio"] = v.ratio if v.stored_bytes else None
    if aliases is not None:
        d["aliases"] = aliases
    return d


# ================================================================== arguments
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


def _default_repo() -> str:
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

    c = cmd("query", "run a DQL statement, e.g. 'select m where m.metrics.val_acc > 0.9' (docs/DQL.md)")
    c.add_argument("text", metavar="DQL")

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

    c = cmd("gc", "delete objects no version references")
    c.add_argument("--dry-run", action="store_true", help="only report what would go")
    return p


# ==================================================================== loading
def _load_file(path: Path, allow_pickle: bool) -> Any:
    """The object a checkpoint file holds, read safely unless pickle is allowed."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise CliError(f"{path} is a directory; use 'modelhub import {path} --model NAME' for a directory of checkpoints")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_EXTS:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CliError(f"cannot read {path} as safetensors: {exc}") from exc
    if suffix not in TORCH_EXTS:
        raise CliError(f"{path}: unknown checkpoint type {suffix or '(none)'!r}; expected one of {', '.join(CHECKPOINT_EXTS)}")
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            text = str(exc)
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if found:
                raise CliError(
                    f"{path} holds objects that only pickle can load (such as {found.group(1)}); "
                    "pass --allow-pickle if you trust the file"
                ) from exc
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
            why = " ".join((detail.group(1) if detail else text.splitlines()[0] if text else "").split())
            raise CliError(
                f"cannot read {path} with torch.load(weights_only=True): {why or type(exc).__name__}; "
                "if it is a pickled checkpoint you trust, pass --allow-pickle"
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CliError(f"cannot read {path} with torch.load: {exc}") from exc
    from modelhub_torch.trust import describe, file_pickle_globals

    _warn(f"--allow-pickle: unpickling {path} runs code it holds; it imports "
          f"{describe(file_pickle_globals(path))}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling code: report, never a traceback
        raise CliError(f"cannot read {path} with torch.load: {exc}") from exc


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


def find_checkpoints(directory: Path, pattern: str) -> list[Path]:
    if not directory.exists():
        raise FileNotFoundError(f"no such directory: {directory}")
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory; use 'modelhub commit' for one file")
    found = []
    for path in directory.glob(pattern):
        if path.is_file() and path.suffix.lower() in CHECKPOINT_EXTS:
            rel = path.relative_to(directory).as_posix()
            found.append((natural_key(rel, path.stat().st_mtime), path))
    return [p for _, p in sorted(found)]


# ================================================================== commands
def _open(args: argparse.Namespace) -> Repository:
    from modelhub_torch.repository import Repository

    return Repository(args.repo)


def _aliases(repo: Repository, models: list[str]) -> dict[str, list[str]]:
    """ref -> its aliases."""
    out: dict[str, list[str]] = {}
    for model in models:
        for alias, ref in sorted(repo.tags(model).items()):
            out.setdefault(ref, []).append(alias)
    return out


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.repository import Repository

    repo = Repository.init(args.path or args.repo)
    out.emit({"repo": repo.url}, f"initialized empty modelhub repository at {repo.url}")
    return 0


def _commit_text(v: Version) -> str:
    parent = f", parent {v.parent}" if v.parent else ""
    return (
        f"committed {v.ref} (id {v.id[:12]}{parent}): {human_size(v.raw_bytes)} raw, "
        f"{human_size(v.stored_bytes)} stored ({human_ratio(v.ratio)})"
    )


def cmd_commit(args: argparse.Namespace, out: Output) -> int:
    path = Path(args.file)
    obj = _load_file(path, args.allow_pickle)
    auto_metrics, auto_hparams = lightning_meta(obj)
    repo = _open(args)
    v = repo.commit(
        obj,
        args.model,
        parent=args.parent,
        metrics={**auto_metrics, **dict(args.metric)},
        hparams={**auto_hparams, **dict(args.hparam)},
        message=args.message,
        allow_pickle=args.allow_pickle,
        progress=out.progress(),
    )
    out.emit(version_doc(v), _commit_text(v))
    return 0


def cmd_import(args: argparse.Namespace, out: Output) -> int:
    directory = Path(args.dir)
    files = find_checkpoints(directory, args.pattern)
    if not files:
        raise CliError(f"no checkpoint files ({', '.join(CHECKPOINT_EXTS)}) in {directory} match {args.pattern!r}")
    repo = _open(args)
    from tqdm import tqdm

    done: list[tuple[str, Version]] = []
    bar = tqdm(files, desc="import", unit="file", file=sys.stderr, disable=not out.progress())
    for path in bar:
        rel = path.relative_to(directory).as_posix()
        bar.set_postfix_str(rel)
        try:
            obj = _load_file(path, args.allow_pickle)
            metrics, hparams = lightning_meta(obj)
            v = repo.commit(
                obj,
                args.model,
                metrics=metrics,
                hparams=hparams,
                message=f"imported {rel}",
                allow_pickle=args.allow_pickle,
            )
        except (ModelHubError, OSError) as exc:
            bar.close()
            kept = f"; the {len(done)} files before it were committed ({done[-1][1].ref} is the last)" if done else ""
            raise CliError(f"import stopped at {rel}: {exc}{kept}") from exc
        done.append((rel, v))
        del obj
    bar.close()
    raw = sum(v.raw_bytes for _, v in done)
    # a commit re-encodes its parent, so read the final sizes back
    final = {v.id: v for v in repo.versions(args.model)}
    stored = sum(final[v.id].stored_bytes for _, v in done if v.id in final)
    rows = [[rel, v.ref, v.parent or "-", fmt_kv(v.metrics, 3)] for rel, v in done]
    text = table(["FILE", "VERSION", "PARENT", "METRICS"], rows)
    text += f"\nimported {len(done)} checkpoints into {args.model}: {human_size(raw)} raw, {human_size(stored)} stored ({human_ratio(raw / stored if stored else None)})"
    out.emit([{"file": rel, **version_doc(final.get(v.id, v))} for rel, v in done], text)
    return 0


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    every = repo.versions()
    models = sorted({v.model for v in every})
    if args.model is not None and args.model not in models:
        close = difflib.get_close_matches(args.model, models, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CliError(f"no model named {args.model!r}{hint} (models: {', '.join(models) or 'none yet'})")
    shown = [v for v in every if args.model is None or v.model == args.model]
    aliases = _aliases(repo, [args.model] if args.model else models)
    by_ref = {v.ref: v for v in shown}
    children: dict[str, list[Version]] = {}
    for v in shown:
        if v.parent in by_ref:
            children.setdefault(v.parent, []).append(v)
    for kids in children.values():
        kids.sort(key=lambda v: (v.model, v.number))

    # lineage: a same-model chain stays in one column; branches (a fine-tune in another
    # model, or a second child) are indented under the version they start from
    lines: list[tuple[str, Version]] = []

    def render(start: Version, depth: int) -> None:
        node: Version | None = start
        first = True
        while node is not None:
            prefix = "" if depth == 0 else "   " * (depth - 1) + ("└─ " if first else "   ")
            lines.append((prefix, node))
            kids = children.get(node.ref, [])
            cont = next((k for k in kids if k.model == node.model and k.number > node.number), None)
            for k in kids:
                if k is not cont:
                    render(k, depth + 1)
            node, first = cont, False

    for v in shown:
        if v.parent not in by_ref:
            render(v, 0)

    doc = {
        "models": [
            {
                "name": m,
                "versions": sum(1 for v in every if v.model == m),
                "latest": max((v for v in every if v.model == m), key=lambda v: v.number).ref,
                "aliases": repo.tags(m),
            }
            for m in models
            if args.model is None or m == args.model
        ],
        "versions": [
            {**version_doc(v, aliases.get(v.ref, [])), "children": [k.ref for k in children.get(v.ref, [])]}
            for v in shown
        ],
    }
    if not shown:
        out.emit(doc, "no versions yet; store one with 'modelhub commit FILE --model NAME'")
        return 0
    rows = []
    for prefix, v in lines:
        label = prefix + v.ref
        if aliases.get(v.ref):
            label += f" ({', '.join(aliases[v.ref])})"
        if v.parent and v.parent not in by_ref:
            label += f" <- {v.parent}"
        label += "".join(f" [{flag}]" for flag in version_flags(v))
        rows.append([
            label, v.id[:8], v.created_at[:16].replace("T", " "),
            human_size(v.raw_bytes), human_size(v.stored_bytes), human_ratio(v.ratio),
            fmt_kv(v.metrics, 4),
        ])
    raw = sum(v.raw_bytes for v in shown)
    stored = sum(v.stored_bytes for v in shown)
    n_models = len(doc["models"])
    text = table(["VERSION", "ID", "CREATED (UTC)", "RAW", "STORED", "RATIO", "METRICS"], rows, right={3, 4, 5})
    text += (
        f"\n{n_models} model{'s' * (n_models != 1)}, {len(shown)} version{'s' * (len(shown) != 1)}: "
        f"{human_size(raw)} raw, {human_size(stored)} stored ({human_ratio(raw / stored if stored else None)})"
    )
    out.emit(doc, text)
    return 0


def cmd_desc(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.skeleton import state_dict_paths

    repo = _open(args)
    v = repo.version(args.ref)
    m = repo.manifest(v.id)
    refs = {x.id: x.ref for x in repo.versions()}
    weights = set(state_dict_paths(m.skeleton).values())
    tensors = []
    for i, rec in enumerate(m.tensors):
        data = rec["data"]
        if data["kind"] == DROPPED:  # pruned trainer state: no longer part of the version
            continue
        base = None
        if data["kind"] == "same":
            how = "same"
            where, idx = data["version"], data["index"]
            base = m.tensors[idx]["path"] if where == v.id else f"{refs.get(where, where[:12])}"
            stored = 0
        else:
            how = "delta" if data.get("base") else "whole"
            if data.get("lossy"):
                how = f"lossy {data['lossy'].get('scheme', '?')}"
            if data.get("cold_from") is not None:
                how += f", planes {data['cold_from']}+ cold"
            if data.get("base"):
                base = refs.get(data["base"]["version"], data["base"]["version"][:12])
            stored = sum(int(f[1]) for c in data["chunks"] for f in c["frames"])
        tensors.append({
            "path": rec["path"],
            "dtype": rec["dtype"],
            "shape": list(rec["shape"]),
            "params": math.prod(rec["shape"]),
            "raw_bytes": int(rec["nbytes"]),
            "stored_bytes": stored,
            "stored": how,
            "base": base,
            "in_state_dict": i in weights,
        })
    weight_params = sum(t["params"] for t in tensors if t["in_state_dict"])
    total_params = weight_params if weights else sum(t["params"] for t in tensors)
    planes = m.plane_bytes()
    manifest_bytes = max(0, v.stored_bytes - sum(planes))
    aliases = _aliases(repo, [v.model]).get(v.ref, [])
    doc = {
        **version_doc(v, aliases),
        "tensors": tensors,
        "total_params": total_params,
        "total_elements": sum(t["params"] for t in tensors),
        "plane_bytes": planes,
        "manifest_bytes": manifest_bytes,
    }
    head = [
        ["ref:", v.ref + (f" ({', '.join(aliases)})" if aliases else "")],
        ["id:", v.id],
        ["parent:", v.parent or "-"],
        ["created:", v.created_at],
        *([["resume:", {True: "yes (trainer state kept)",
                        False: "no: weights only (trainer state pruned); resume from a version marked yes"}[v.resumable]]]
          if v.resumable is not None else []),
        *([["pickle:", "holds pickled objects: a full load needs weights_only=False / --allow-pickle, "
                       "which runs code they import: " + _stored_pickle_imports(m)]] if v.holds_pickle else []),
        ["message:", v.message or "-"],
        ["metrics:", fmt_kv(v.metrics) or "-"],
        ["hparams:", fmt_kv(v.hparams) or "-"],
    ]
    lossy = m.extra.get("lossy")
    doc["lossy"] = lossy
    if lossy:
        head.append(["lossy:", f"{', '.join(lossy)} — archived lossily: its float tensors are rounded "
                               "values, not the bits committed"])
    text = "\n".join(f"{k:<9} {val}" for k, val in head) + "\n\n"
    rows = []
    for t in tensors:
        how = t["stored"] + (f" ({t['base']})" if t["base"] else "")
        rows.append([elide(t["path"]), t["dtype"], fmt_shape(t["shape"]), f"{t['params']:,}", human_size(t["stored_bytes"]), elide(how, 40)])
    text += table(["TENSOR", "DTYPE", "SHAPE", "PARAMS", "STORED", "HOW"], rows, right={3, 4}) + "\n\n"
    what = "in the state_dict" if weights else "in all tensors"
    text += f"{total_params:,} parameters {what} ({len(tensors)} tensors, {doc['total_elements']:,} elements)\n"
    text += f"{human_size(v.raw_bytes)} raw, {human_size(v.stored_bytes)} stored ({human_ratio(v.ratio)})\n"
    plane_txt = ", ".join(
        f"plane {p}{' (high)' if p == 0 and len(planes) > 1 else ''}: {human_size(b)}" for p, b in enumerate(planes)
    )
    text += f"stored per plane: {plane_txt or 'nothing of its own'}; manifest {human_size(manifest_bytes)}"
    graph = m.extra.get("graph")
    doc["graph"] = graph
    if graph:
        from modelhub_torch.graph import describe_graph

        text += f"\n\nnetwork ({len(graph['nodes'])} nodes, captured by {graph['method']}):\n"
        text += table(["NODE", "TYPE", "LAYER", "SHAPE", "PARAMS", "NEXT"],
                      [[elide(r[0], 40), *r[1:5], elide(r[5], 40)] for r in describe_graph(graph)], right={4})
    out.emit(doc, text)
    return 0


def _stored_pickle_imports(m: Any) -> str:
    from modelhub_torch.trust import describe, skeleton_pickle_globals

    return describe(skeleton_pickle_globals(m.skeleton))


def _load_full(repo: Repository, v: Version, allow_pickle: bool, what: str, progress: bool = False) -> Any:
    """A whole version; one holding pickles only with --allow-pickle (which says first
    what it trusts)."""
    from modelhub_torch.errors import PickleRequiredError

    try:
        return repo.load(v.id, weights_only=not allow_pickle, progress=progress)
    except PickleRequiredError:
        raise CliError(
            f"{v.ref} holds pickled objects (importing {_stored_pickle_imports(repo.manifest(v.id))}), "
            f"and unpickling runs code; to {what} pass --allow-pickle if you trust this repository "
            "(the weights alone: 'modelhub export REF OUT.safetensors')"
        ) from None


def _leaves(repo: Repository, ref: str, allow_pickle: bool) -> tuple[Version, dict[str, Any]]:
    """A version and its tensors by path (the paths ``desc`` shows)."""
    from modelhub_torch.skeleton import flatten

    v = repo.version(ref)
    obj = _load_full(repo, v, allow_pickle, "diff it")
    flat = flatten(obj, allow_pickle=True)
    return v, dict(zip(flat.paths, flat.tensors))


def _same_bits(a: Any, b: Any) -> bool:
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def tensor_diff(a: Any, b: Any) -> dict[str, Any]:
    """changed (bitwise), max |b-a| and ||b-a|| / ||a||, computed in float64."""
    import torch

    changed = not _same_bits(a, b)
    doc: dict[str, Any] = {
        "changed": changed,
        "dtype": [str(a.dtype).removeprefix("torch."), str(b.dtype).removeprefix("torch.")],
        "shape": [list(a.shape), list(b.shape)],
        "max_abs_diff": 0.0,
        "rel_l2": 0.0,
    }
    if not changed:
        return doc
    if tuple(a.shape) != tuple(b.shape):
        doc["max_abs_diff"] = doc["rel_l2"] = None
        return doc
    wide = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a64, b64 = a.detach().to(wide), b.detach().to(wide)
    d = b64 - a64
    if d.numel() == 0:
        return doc
    doc["max_abs_diff"] = float(d.abs().max())
    na, nd = float(torch.linalg.vector_norm(a64)), float(torch.linalg.vector_norm(d))
    doc["rel_l2"] = nd / na if na else (0.0 if nd == 0 else math.inf)
    return doc


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = list(dict.fromkeys([*a, *b]))
    return {
        k: {"a": a.get(k), "b": b.get(k), "differs": k not in a or k not in b or a[k] != b[k]}
        for k in keys
    }


def cmd_diff(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    va, ta = _leaves(repo, args.a, args.allow_pickle)
    vb, tb = _leaves(repo, args.b, args.allow_pickle)
    tensors = []
    for path in ta:
        if path in tb:
            tensors.append({"path": path, **tensor_diff(ta[path], tb[path])})
    only_a = [p for p in ta if p not in tb]
    only_b = [p for p in tb if p not in ta]
    doc = {
        "a": va.ref,
        "b": vb.ref,
        "metrics": _side_by_side(va.metrics, vb.metrics),
        "hparams": _side_by_side(va.hparams, vb.hparams),
        "tensors": tensors,
        "only_in_a": only_a,
        "only_in_b": only_b,
        "changed": sum(t["changed"] for t in tensors),
        "unchanged": sum(not t["changed"] for t in tensors),
    }
    parts = [f"--- {va.ref}  ({va.id[:12]})", f"+++ {vb.ref}  ({vb.id[:12]})"]
    for title, side in (("METRIC", doc["metrics"]), ("HPARAM", doc["hparams"])):
        if side:
            rows = [[k, fmt_value(s["a"]), fmt_value(s["b"]), "*" if s["differs"] else ""] for k, s in side.items()]
            parts.append("\n" + table([title, va.ref, vb.ref, ""], rows))
    if tensors:
        rows = []
        for t in tensors:
            note = ""
            if t["shape"][0] != t["shape"][1]:
                note = f"shape {fmt_shape(t['shape'][0])} -> {fmt_shape(t['shape'][1])}"
            elif t["dtype"][0] != t["dtype"][1]:
                note = f"dtype {t['dtype'][0]} -> {t['dtype'][1]}"
            rows.append([
                elide(t["path"]), "yes" if t["changed"] else "no",
                fmt_num(t["max_abs_diff"]), fmt_num(t["rel_l2"]), note,
            ])
        parts.append("\n" + table(["TENSOR", "CHANGED", "MAX ABS DIFF", "REL L2", ""], rows, right={2, 3}))
    for label, paths in ((va.ref, only_a), (vb.ref, only_b)):
        if paths:
            parts.append(f"only in {label}: " + _summarize_paths(paths))
    parts.append(
        f"\n{doc['changed']} changed, {doc['unchanged']} unchanged, "
        f"{len(only_a)} only in {va.ref}, {len(only_b)} only in {vb.ref}"
    )
    parts += _network_diff(repo, va, vb, doc)
    out.emit(doc, "\n".join(parts))
    return 0


def _network_diff(repo: Repository, va: Version, vb: Version, doc: dict[str, Any]) -> list[str]:
    """Layers added, removed or changed between the two versions' recorded networks."""
    from modelhub_torch.graph import diff_graphs

    ga = repo.manifest(va.id).extra.get("graph")
    gb = repo.manifest(vb.id).extra.get("graph")
    if not ga and not gb:
        return []
    d = diff_graphs(ga, gb)
    doc["network"] = d
    if not any(d[k] for k in ("added", "removed", "changed", "edges_added", "edges_removed")):
        return ["network: same layers and connections"]
    lines = ["\nnetwork:"]
    lines += [f"  + {n}" for n in d["added"]]
    lines += [f"  - {n}" for n in d["removed"]]
    for c in d["changed"]:
        changed = [k for k in ("type", "category", "kind", "attrs") if c["before"].get(k) != c["after"].get(k)]
        detail = ", ".join(
            f"{k} {c['before'].get(k)} -> {c['after'].get(k)}" if k != "attrs"
            else "attrs " + ", ".join(
                f"{a}: {c['before']['attrs'].get(a)} -> {c['after']['attrs'].get(a)}"
                for a in sorted(set(c["before"]["attrs"]) | set(c["after"]["attrs"]))
                if c["before"]["attrs"].get(a) != c["after"]["attrs"].get(a)
            )
            for k in changed
        )
        lines.append(f"  ~ {c['name']}: {detail}")
    if d["edges_added"] or d["edges_removed"]:
        lines.append(f"  connections: {len(d['edges_added'])} added, {len(d['edges_removed'])} removed")
    return lines


def _untie(sd: dict[str, Any]) -> dict[str, Any]:
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


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    target = Path(args.out)
    suffix = target.suffix.lower()
    if suffix not in CHECKPOINT_EXTS:
        raise CliError(f"{target}: cannot tell the format from {suffix or '(no suffix)'!r}; use one of {', '.join(CHECKPOINT_EXTS)}")
    if target.exists() and not args.force:
        raise CliError(f"{target} exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"no such directory: {target.parent}")
    repo = _open(args)
    v = repo.version(args.ref)
    tmp = target.with_name(f".{target.name}.modelhub-tmp")
    try:
        if suffix in SAFETENSORS_EXTS:
            from safetensors.torch import save_file

            sd = _untie(repo.load_state_dict(v.id, progress=out.progress()))
            try:
                save_file(sd, str(tmp), metadata={"modelhub_ref": v.ref, "modelhub_id": v.id})
            except (ValueError, TypeError, RuntimeError) as exc:
                raise CliError(f"cannot write {target} as safetensors: {exc}") from exc
            count = len(sd)
        else:
            import torch

            obj = _load_full(repo, v, args.allow_pickle, "export it whole", out.progress())
            try:
                torch.save(obj, str(tmp))
            except (TypeError, AttributeError, RuntimeError, ValueError) as exc:  # unpicklable objects
                raise CliError(f"cannot write {target} with torch.save: {exc}") from exc
            count = len(repo.manifest(v.id).live_tensors())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    size = target.stat().st_size
    doc = {"ref": v.ref, "id": v.id, "path": str(target), "format": suffix.lstrip("."), "tensors": count, "bytes": size}
    out.emit(doc, f"exported {v.ref} to {target} ({count} tensors, {human_size(size)})")
    return 0


def _eval_data(path: str) -> tuple[Any, Any]:
    """Inputs and (optional) labels from a .pt or .npz file."""
    import numpy as np
    import torch

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
        raise CliError(f"{path}: expected a tensor of inputs (or (x, y) / {{'x': ..., 'y': ...}})")
    return x, y


def _eval_module(repo: Repository, v: Version, spec: str | None, command: str = "eval") -> Any:
    """The architecture from --module PKG.MOD:CLASS. A class named in a version's
    metadata is never imported: the repository is not trusted to choose code."""
    import importlib

    path = spec
    if not path:
        recorded = v.info.get("module")
        hint = (f"; it records {str(recorded)[:120]!r}: pass --module with that path if you trust it"
                if isinstance(recorded, str) and recorded else "")
        raise CliError(
            f"{command} needs the network's class: pass --module PKG.MOD:CLASS (modelhub never imports "
            f"a class a repository names){hint}"
        )
    mod_name, _, cls_name = path.replace(":", ".").rpartition(".")
    # like `python -m`, modules in the working directory are importable
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"cannot import {path} ({exc}); pass --module PKG.MOD:CLASS importable from here") from None
    if not isinstance(cls, type):
        raise CliError(f"{path} is not a class; pass --module PKG.MOD:CLASS naming an nn.Module subclass")
    import torch

    if not issubclass(cls, torch.nn.Module):
        raise CliError(f"{path} is not a torch.nn.Module subclass; pass the network's class")
    try:
        return cls(**v.hparams)
    except TypeError as exc:
        raise CliError(f"cannot build {path} from {v.ref}'s hparams ({exc}); pass --module") from None


def cmd_eval(args: argparse.Namespace, out: Output) -> int:
    import torch

    repo = _open(args)
    v = repo.version(args.ref)
    x, y = _eval_data(args.data)
    module = _eval_module(repo, v, args.module).eval()
    t0 = time.perf_counter()
    if args.progressive:
        from modelhub_torch.progressive import ProgressiveModel

        res = ProgressiveModel(module, repo, v.ref).predict(x, k=args.k)
        topk, read, full = res.topk, res.bytes_read, res.bytes_full
        tiers = {str(t): share for t, share in sorted(res.share_by_tier().items())}
    else:
        module.load_state_dict(repo.load_state_dict(v.ref))
        with torch.no_grad():
            topk = module(x).topk(args.k, dim=1).indices
        read = full = None
        tiers = {}
    seconds = time.perf_counter() - t0
    doc: dict[str, Any] = {"ref": v.ref, "inputs": int(x.shape[0]), "k": args.k, "seconds": seconds,
                           "decided_by_planes": tiers, "bytes_read": read, "bytes_full": full}
    lines = [f"{v.ref}: {x.shape[0]} inputs, top-{args.k}, {seconds:.2f} s"]
    if y is not None:
        acc = float((topk == y.reshape(-1, 1)).any(dim=1).float().mean())
        doc["accuracy"] = acc
        lines.append(f"accuracy (top-{args.k}): {acc:.4f}")
    if args.progressive:
        lines.append("decided with " + ", ".join(f"{t} plane{'s' if t != '1' else ''}: {100 * s:.1f}%" for t, s in tiers.items()))
        lines.append(f"bytes read: {human_size(read)} of {human_size(full)} ({100 * read / max(1, full):.0f}% of a full load)")
    out.emit(doc, "\n".join(lines))
    return 0


def cmd_query(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    result = repo.query(args.text)
    docs = result.to_dicts()
    extra = [c for c in result.columns if c not in ("ref", "name", "version", "created", "params", "size")]
    rows = [
        [d["ref"], *(fmt_cell(d[c]) for c in extra), f"{d['params']:,}", human_size(d["size"]), d["created"][:16].replace("T", " ")]
        for d in docs
    ]
    text = table(["VERSION", *(c.upper() for c in extra), "PARAMS", "STORED", "CREATED (UTC)"], rows,
                 right=set(range(1, len(extra) + 3)))
    text += f"\n{len(docs)} version{'s' if len(docs) != 1 else ''}"
    out.emit({"columns": result.columns, "rows": docs}, text)
    return 0


def fmt_cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt_num(v)
    return str(v)


def cmd_copy(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    v = repo.copy(args.ref, args.new_model, message=args.message)
    out.emit(
        {"ref": v.ref, "id": v.id, "parent": v.parent, "raw_bytes": v.raw_bytes, "stored_bytes": v.stored_bytes},
        f"created {v.ref} from {v.parent}: {human_size(v.raw_bytes)} of weights, "
        f"{human_size(v.stored_bytes)} stored (unchanged tensors are shared)",
    )
    return 0


def cmd_tag(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    v = repo.tag(args.ref, args.alias)
    out.emit({"alias": f"{v.model}@{args.alias}", "ref": v.ref, "id": v.id}, f"{v.model}@{args.alias} -> {v.ref}")
    return 0


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    s = repo.stats()
    rows = [
        [m, str(pm["versions"]), human_size(pm["raw_bytes"]), human_size(pm["stored_bytes"]),
         human_ratio(pm["raw_bytes"] / pm["stored_bytes"] if pm["stored_bytes"] else None)]
        for m, pm in sorted(s["per_model"].items())
    ]
    rows.append(["total", str(s["versions"]), human_size(s["raw_bytes"]), human_size(s["stored_bytes"]), human_ratio(s["ratio"])])
    text = table(["MODEL", "VERSIONS", "RAW", "STORED", "RATIO"], rows, right={1, 2, 3, 4})
    planes = s["planes"]
    if planes:
        total = sum(planes.values()) or 1
        prow = [
            [f"{p}{' (high)' if p == 0 and len(planes) > 1 else ''}", human_size(b), f"{100 * b / total:.1f}%"]
            for p, b in sorted(planes.items())
        ]
        text += "\n\n" + table(["PLANE", "STORED", "SHARE"], prow, right={1, 2})
    out.emit(s, text)
    return 0


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    problems = repo.verify(rebuild_index=args.rebuild_index, repair=args.repair, progress=out.progress())
    n = len(repo.versions())
    # after --repair, what was restored or quarantined is reported but no longer open
    open_problems = [p for p in problems if not (args.repair and not p.damage)]
    doc = {
        "ok": not open_problems,
        "versions": n,
        "index_rebuilt": bool(args.rebuild_index or args.repair),
        "repaired": bool(args.repair),
        "problems": [{"kind": p.kind, "subject": p.subject, "detail": p.detail, "damage": p.damage,
                      "action": p.action} for p in problems],
    }
    if problems:
        lines = [f"{'fixed' if args.repair and not p.damage else 'problem'}: {p}" for p in problems]
        damage = sum(p.damage for p in problems)
        lines.append(f"{len(problems)} problem{'s' * (len(problems) != 1)} found ({damage} damaging data)"
                     + ("" if args.repair or not damage else "; 'modelhub verify --repair' fixes what it can"))
        text = "\n".join(lines)
    else:
        text = f"ok: {n} version{'s' * (n != 1)} verified, every object intact"
        if args.rebuild_index:
            text += "; index rebuilt"
    out.emit(doc, text)
    return 1 if open_problems else 0


def _load_times(repo: Repository) -> list[float]:
    """Seconds to load each version (a fresh reader per version, as a user's load)."""
    times = []
    versions = repo.versions()
    # tensors only: the skeleton of a version holding pickles is never unpickled here
    if versions:
        repo.load_tensors(versions[0].ref)  # warm-up: compiled kernels, imports
    for v in versions:
        t0 = time.perf_counter()
        repo.load_tensors(v.ref)
        times.append(time.perf_counter() - t0)
    return times


def _accuracy(repo: Repository, v: Version, x: Any, y: Any, spec: str | None) -> tuple[Any, float | None]:
    """Top-1 predictions of a version on ``x`` and its accuracy on ``y`` (if given)."""
    import torch

    module = _eval_module(repo, v, spec, "archive --data").eval()
    module.load_state_dict(repo.load_state_dict(v.ref))
    with torch.no_grad():
        pred = module(x).argmax(dim=1)
    return pred, (float((pred == y.reshape(-1)).float().mean()) if y is not None else None)


def cmd_archive(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    if args.lossy and not args.versions:
        raise CliError("lossy archival is opt-in per version: name them with --versions REF [REF ...]")
    if args.versions and not args.lossy:
        raise CliError("--versions names the versions for --lossy; give --lossy SCHEME too")
    lossy = {ref: args.lossy for ref in args.versions}
    checks: dict[str, Any] = {}
    if args.data and lossy:
        x, y = _eval_data(args.data)
        for ref in lossy:
            v = repo.version(ref)
            checks[v.ref] = _accuracy(repo, v, x, y, args.module)
    before = _load_times(repo) if args.measure and not args.dry_run else []
    r = repo.archive(
        args.budget, scheme=args.scheme, algorithm=args.algorithm, lossy=lossy or None, cold=args.cold,
        hot_planes=args.hot_planes, cold_price=args.cold_price, dry_run=args.dry_run,
    )
    doc = r.to_json()
    verb = "planned" if r.dry_run else "archived"
    lines = [
        f"{verb} {r.versions} versions ({r.matrices} tensors, {r.edges} candidate edges) with {r.algorithm}, "
        f"{r.scheme} scheme, budget {r.alpha:g}x, in {r.seconds:.1f} s",
    ]
    if r.dry_run:
        lines.append(f"storage now {human_size(r.stored_before)}; the plan stores {human_size(r.planned_storage)} of "
                     "tensor data (nothing was rewritten)")
    else:
        ratio = r.stored_before / r.stored_after if r.stored_after else float("inf")
        lines.append(f"storage: {human_size(r.stored_before)} -> {human_size(r.stored_after)} ({ratio:.2f}x)"
                     + (f", of which {human_size(r.cold_after)} in the cold tier" if r.cold_after else ""))
    priced = f" (cold bytes counted x{args.cold_price:g})" if args.cold or repo.settings.get("cold") else ""
    lines.append(f"tensor data under this plan {human_size(r.planned_storage)}{priced}; minimum (MST) "
                 f"{human_size(r.mst_storage)}, fastest (SPT) {human_size(r.spt_storage)}")
    lines.append(
        f"version recreation (modelled): mean {1e3 * r.recreation_mean_s:.1f} ms, worst "
        f"{1e3 * r.recreation_max_s:.1f} ms (fastest possible: mean {1e3 * r.spt_recreation_mean_s:.1f} ms, "
        f"worst {1e3 * r.spt_recreation_max_s:.1f} ms)"
    )
    if not r.feasible:
        lines.append("warning: no plan met every budget; this is the least-violating one found")
    if before:
        after = _load_times(repo)
        doc["load_before_s"] = {"mean": sum(before) / len(before), "max": max(before)}
        doc["load_after_s"] = {"mean": sum(after) / len(after), "max": max(after)}
        lines.append(
            f"measured load: mean {1e3 * doc['load_after_s']['mean']:.1f} ms, worst "
            f"{1e3 * doc['load_after_s']['max']:.1f} ms (before: mean {1e3 * doc['load_before_s']['mean']:.1f} ms, "
            f"worst {1e3 * doc['load_before_s']['max']:.1f} ms)"
        )
    if checks and not r.dry_run:
        x, y = _eval_data(args.data)
        rows, doc["accuracy"] = [], {}
        for ref, (pred0, acc0) in checks.items():
            pred1, acc1 = _accuracy(repo, repo.version(ref), x, y, args.module)
            agree = float((pred0 == pred1).float().mean())
            doc["accuracy"][ref] = {"before": acc0, "after": acc1, "agreement": agree}
            rows.append([ref, args.lossy, fmt_num(acc0), fmt_num(acc1), f"{100 * agree:.1f}%"])
        lines.append("")
        lines.append(table(["VERSION", "LOSSY", "ACC BEFORE", "ACC AFTER", "SAME TOP-1"], rows, right={2, 3, 4}))
    out.emit(doc, "\n".join(lines))
    return 0


def cmd_gc(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    r = repo.gc(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    text = (
        f"{verb} {r['objects_removed']} objects ({human_size(r['bytes_freed'])}), "
        f"{r['orphan_refs']} orphan refs, {r['temp_files']} temp files"
    )
    out.emit({**r, "dry_run": bool(args.dry_run)}, text)
    return 0


COMMANDS = {
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
}


def _error(message: str) -> None:
    text = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {text}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Warnings the library raises (a damaged version skipped, an index rebuilt, what an
    unpickling opt-in trusts) become one line each, like errors."""
    _warn(str(message))


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 verify problems, 2 errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.repo = getattr(args, "repo", None) or _default_repo()
    args.json = getattr(args, "json", False)
    out = Output(args.json)
    import warnings

    warnings.showwarning = _show_warning
    try:
        return COMMANDS[args.command](args, out)
    except ModelHubError as exc:
        _error(str(exc))
    except FileNotFoundError as exc:
        _error(str(exc) if not exc.filename else f"no such file or directory: {exc.filename}")
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except OSError as exc:  # disk full, quota, file size limit on a file the CLI writes
        where = f": {exc.filename}" if exc.filename else ""
        _error(f"{exc.strerror or exc}{where}; nothing was changed in the repository")
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:  # `modelhub list | head`: the reader left, nothing to report
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
