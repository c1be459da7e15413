"""Query benchmark: DQL on the SQLite catalog vs the MLflow-style scan of JSON files.

A synthetic catalog of 10,000 versions across 100 models (metrics, hparams, a network
graph per model from 12 architecture families), built through Catalog.upsert_many /
upsert; then the same filters run as DQL and as a linear scan of one JSON file per
version (how users search runs without a query language). A real repository made by
examples/train_digits.py is queried too.

    python benchmarks/query.py [--models 100] [--versions 100] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore")

from storage import median_time, table  # noqa: E402

from modelhub_torch import Repository  # noqa: E402
from modelhub_torch.dql.engine import execute  # noqa: E402
from modelhub_torch.manifest import Manifest  # noqa: E402
from modelhub_torch.store.catalog import Catalog  # noqa: E402


def family_graph(rng: random.Random, convs: int, pool: str, fcs: int) -> dict[str, Any]:
    """A conv net as capture_graph records it: conv_i -> [pool] -> relu ..., then fcs."""
    nodes = [{"name": "x", "op": "input", "type": "x", "category": "input", "kind": None, "attrs": {}, "params": 0}]
    edges = []
    prev = "x"
    ch = 3

    def add(name: str, typ: str, cat: str, kind: str | None, attrs: dict, params: int) -> None:
        nonlocal prev
        nodes.append({"name": name, "op": "module", "type": typ, "category": cat, "kind": kind,
                      "attrs": attrs, "params": params})
        edges.append([prev, name])
        prev = name

    for i in range(1, convs + 1):
        out = ch * 2 if i < 4 else ch
        k = rng.choice([3, 5])
        add(f"conv{i}", "Conv2d", "conv", None, {"in_channels": ch, "out_channels": out, "kernel_size": [k, k]},
            ch * out * k * k + out)
        if i % 2 == 1:
            add(f"pool{i}", "MaxPool2d" if pool == "max" else "AvgPool2d", "pool", pool, {"kernel_size": 2}, 0)
        add(f"relu{i}", "ReLU", "relu", None, {}, 0)
        ch = out
    for j in range(1, fcs + 1):
        add(f"fc{j}", "Linear", "linear", None, {"in_features": 64, "out_features": 64}, 64 * 65)
    nodes.append({"name": "output", "op": "output", "type": "output", "category": "output", "kind": None,
                  "attrs": {}, "params": 0})
    edges.append([prev, "output"])
    return {"method": "fx", "nodes": nodes, "edges": edges}


def synthetic(models: int, versions: int, seed: int = 0) -> list[Manifest]:
    rng = random.Random(seed)
    families = [(c, p, f) for c in (3, 5, 8) for p in ("max", "avg") for f in (2, 3)]
    out = []
    for mi in range(models):
        name = f"model_{mi:03d}"
        convs, pool, fcs = families[mi % len(families)]
        graph = family_graph(random.Random(mi), convs, pool, fcs)
        lr = rng.choice([0.1, 0.01, 0.001])
        opt = rng.choice(["sgd", "adam", "adamw"])
        acc = rng.uniform(0.3, 0.6)
        parent = None
        for n in range(1, versions + 1):
            acc = min(0.999, acc + rng.uniform(0, 0.01))
            vid = f"{mi:04d}{n:06d}".ljust(32, "0")
            out.append(Manifest(
                id=vid, model=name, number=n, parent=parent,
                created_at=f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T{mi % 24:02d}:00:00.000000+00:00",
                metrics={"val_acc": round(acc, 4), "val_loss": round(2 - 2 * acc, 4), "epoch": n},
                hparams={"lr": lr, "optimizer": opt, "batch_size": rng.choice([32, 64, 128])},
                message=f"epoch {n}", skeleton={"$dict": []}, tensors=[], packs=[],
                extra={"graph": graph},
            ))
            parent = vid
    return out


def write_json_runs(root: Path, manifests: list[Manifest]) -> None:
    """One meta.json per version, the layout of an MLflow-like tracking directory."""
    for m in manifests:
        d = root / m.model / str(m.number)
        d.mkdir(parents=True, exist_ok=True)
        (d / "meta.json").write_text(json.dumps({
            "name": m.model, "version": m.number, "created": m.created_at, "metrics": m.metrics,
            "params": m.hparams, "graph": m.extra["graph"],
        }))


def scan(root: Path, keep: Callable[[dict], bool], key: Callable[[dict], Any] | None = None,
         limit: int | None = None) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(root):
        if "meta.json" in files:
            with open(os.path.join(dirpath, "meta.json")) as fh:
                doc = json.load(fh)
            if keep(doc):
                found.append(doc)
    found.sort(key=key or (lambda d: (d["name"], d["version"])))
    return [f"{d['name']}@v{d['version']}" for d in found[:limit]]


def next_has(doc: dict, names: set[str], category: str, kind: str | None) -> bool:
    g = doc["graph"]
    by_name = {n["name"]: n for n in g["nodes"]}
    for a, b in g["edges"]:
        if a in names:
            n = by_name[b]
            if n["category"] == category and (kind is None or n["kind"] == kind):
                return True
    return False


QUERIES: list[tuple[str, str, Callable[[dict], bool], Callable[[dict], Any] | None, int | None]] = [
    ("metadata",
     'select m where m.name like "model_05%" and m.metrics.val_acc > 0.8 and m.hparams.optimizer = "adam" '
     "order by m.metrics.val_acc desc limit 10",
     lambda d: d["name"].startswith("model_05") and d["metrics"]["val_acc"] > 0.8 and d["params"]["optimizer"] == "adam",
     lambda d: (-d["metrics"]["val_acc"], d["name"], d["version"]), 10),
    ("metadata, wide",
     "select m where m.metrics.val_acc > 0.95 and m.hparams.lr in (0.01, 0.001)",
     lambda d: d["metrics"]["val_acc"] > 0.95 and d["params"]["lr"] in (0.01, 0.001), None, None),
    ("network",
     'select m where m["conv[1,3,5]"].next has POOL("MAX") and m.metrics.val_acc > 0.9',
     lambda d: d["metrics"]["val_acc"] > 0.9 and next_has(d, {"conv1", "conv3", "conv5"}, "pool", "max"), None, None),
    ("network count",
     'select m where count(m["conv*"]) >= 5 and m["relu*"].next has LINEAR',
     lambda d: sum(1 for n in d["graph"]["nodes"] if n["name"].startswith("conv")) >= 5
     and next_has(d, {n["name"] for n in d["graph"]["nodes"] if n["name"].startswith("relu")}, "linear", None),
     None, None),
]


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    return median_time(fn, repeats) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-real", action="store_true", help="skip the digits repository")
    args = ap.parse_args(argv)
    manifests = synthetic(args.models, args.versions)
    n = len(manifests)
    with tempfile.TemporaryDirectory() as d:
        cat = Catalog(os.path.join(d, "bulk.sqlite"))
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            cat.upsert_many((m, "0" * 64, 1000 + m.number) for m in manifests[i : i + 1000])
        bulk = n / (time.perf_counter() - t0)
        one = Catalog(os.path.join(d, "single.sqlite"))
        sample = manifests[:2000]
        t0 = time.perf_counter()
        for m in sample:
            one.upsert(m, "0" * 64, 1000 + m.number)
        single = len(sample) / (time.perf_counter() - t0)
        conn = cat.connection()
        graphs = conn.execute("SELECT COUNT(DISTINCT graph) FROM versions").fetchone()[0]
        nodes = conn.execute("SELECT COUNT(*) FROM graph_nodes").fetchone()[0]
        runs = Path(d) / "mlruns"
        t0 = time.perf_counter()
        write_json_runs(runs, manifests)
        json_write = n / (time.perf_counter() - t0)

        def dql(text: str) -> list[str]:
            return execute(conn, text, lambda r: r, lambda: [], lambda row: row).refs

        print(f"synthetic catalog: {n:,} versions, {args.models} models, {graphs} distinct graphs ({nodes} node rows)")
        print(f"catalog insert: {bulk:,.0f} versions/s in 1,000-version transactions, {single:,.0f} versions/s one"
              f" transaction each; JSON files written: {json_write:,.0f} versions/s\n")
        header = ["query", "results", "DQL ms", "JSON scan ms", "speed-up"]
        rows = []
        for label, text, keep, key, limit in QUERIES:
            ours = dql(text)
            theirs = scan(runs, keep, key, limit)
            assert ours == theirs, (label, ours[:5], theirs[:5])
            t_dql = median_ms(lambda text=text: dql(text), args.repeats)
            t_scan = median_ms(lambda keep=keep, key=key, limit=limit: scan(runs, keep, key, limit), max(3, args.repeats // 5))
            rows.append([label, f"{len(ours):,}", f"{t_dql:.1f}", f"{t_scan:.0f}", f"{t_scan / t_dql:,.0f}x"])
        print(table(rows, header))
        for label, text, *_ in QUERIES:
            print(f"  {label}: {text}")
        if not args.no_real:
            from train_digits import train

            out = train(Path(d) / "digits-hub", epochs=6)
            repo: Repository = out["repo"]
            text = 'select m where m["conv*"].next has RELU and m.metrics.val_acc > 0.9 order by m.metrics.val_acc desc'
            res = repo.query(text)
            t = median_ms(lambda: repo.query(text), args.repeats)
            print(f"\nreal repository (examples/train_digits.py, 6 epochs): {text}\n  -> {', '.join(res.refs)}"
                  f" in {t:.1f} ms (Repository.query, index sync included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
