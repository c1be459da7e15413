"""Storage benchmark: modelhub_torch against the anchors, all measured in one run.

Data (benchmarks/trajectories.py): (a) a digits CNN trained with Lightning, one full
checkpoint per epoch (optimizer state included); (b) a MiniLM fine-tune trajectory,
versions 25 AdamW steps apart; (c) the pretrained MiniLM alone.

    python benchmarks/storage.py            # the tables
    python benchmarks/storage.py --sweep    # also keyframe / codec choices

Ratios are raw tensor bytes / stored bytes unless a column says otherwise. "ours" counts
every object, ref and config file of the repository (not the SQLite index, which is
rebuildable and lives beside it).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchors
import trajectories

from modelhub_torch import Repository
from modelhub_torch.pas.codec import CodecConfig
from modelhub_torch.repository import DEFAULT_SETTINGS


def repo_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) == "index":
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def raw_tensor_bytes(objs: list[Any]) -> int:
    return sum(t.numel() * t.element_size() for o in objs for _, t in anchors.iter_tensors(o))


def median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_ours(objs: list[Any], model: str, **settings: Any) -> dict[str, Any]:
    """Commit every version into a fresh repository; time commits and loads."""
    with tempfile.TemporaryDirectory() as d:
        repo = Repository.init(Path(d) / "repo", **settings)
        raw = raw_tensor_bytes(objs)
        call_s, t_all = 0.0, time.perf_counter()
        for o in objs:
            repo.wait()
            t0 = time.perf_counter()
            repo.commit(o, model)
            call_s += time.perf_counter() - t0
        repo.wait()  # the background repack of the last commit
        commit_s = time.perf_counter() - t_all
        stored = repo_bytes(Path(d) / "repo")
        t0 = time.perf_counter()
        for v in repo.versions(model):
            repo.load(v.ref)
        load_all_s = time.perf_counter() - t0
        latest = median_time(lambda: repo.load(f"{model}@latest"))
        planes = repo.stats()["planes"]
        return {
            "stored": stored,
            "ratio": raw / stored,
            "encode_mb_s": raw / commit_s / 1e6,
            "call_mb_s": raw / call_s / 1e6,
            "decode_mb_s": raw / load_all_s / 1e6,
            "latest_s": latest,
            "planes": planes,
        }


def per_version_restore(objs: list[Any], model: str, repeats: int = 3, repack: bool = True,
                        **settings: Any) -> dict[str, Any]:
    """Commit every version (commit-call throughput), repack (``gc --repack``), then
    restore every version against torch.load of that same checkpoint (saved
    uncompressed, both warm, medians of ``repeats``): what users pay for ``@best`` or
    an old epoch, not only for the newest version. Also the budget's estimate."""
    from modelhub_torch.budget import estimate

    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        repo = Repository.init(Path(d) / "repo", **settings)
        raw = raw_tensor_bytes(objs)
        commit_s, t_all = 0.0, time.perf_counter()
        for o in objs:
            repo.wait()  # what a training loop waits for is the commit call alone
            t0 = time.perf_counter()
            repo.commit(o, model)
            commit_s += time.perf_counter() - t0
        repo.wait()
        all_s = time.perf_counter() - t_all
        before = repo_bytes(Path(d) / "repo")
        t0 = time.perf_counter()
        if repack:
            repo.gc(repack=True)
        repack_s = time.perf_counter() - t0
        stored = repo_bytes(Path(d) / "repo")
        # every checkpoint saved and kept first, as ModelCheckpoint keeps its files (a
        # file deleted right away hands its page-cache pages to the next save)
        t0 = time.perf_counter()
        for i, o in enumerate(objs):
            torch.save(o, Path(d) / f"v{i}.pt")
        save_s = time.perf_counter() - t0
        for i, v in enumerate(repo.versions(model)):
            path = Path(d) / f"v{i}.pt"
            tl = median_time(functools.partial(torch.load, path, weights_only=True), repeats)
            ours = median_time(functools.partial(repo.load, v.ref), repeats)
            path.unlink()
            out.append({"version": v.number, "restore_s": ours, "torch_load_s": tl,
                        "estimate": estimate(repo.store.manifest, v.id).factor})
    return {"rows": out, "ratio": raw / stored, "ratio_before_repack": raw / before,
            "commit_mb_s": raw / commit_s / 1e6, "with_repack_mb_s": raw / all_s / 1e6, "repack_s": repack_s,
            "torch_save_mb_s": raw / save_s / 1e6}


def per_version_table(name: str, result: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Per version: restore ms, torch.load ms and their factor, the factor against the
    newest version's restore and the budget's estimate; then worst and median."""
    rows = result["rows"]
    newest = rows[-1]["restore_s"]
    body = [[f"v{r['version']}", f"{r['restore_s'] * 1e3:.1f}", f"{r['torch_load_s'] * 1e3:.1f}",
             f"{r['restore_s'] / r['torch_load_s']:.2f}x", f"{r['restore_s'] / newest:.2f}x",
             f"{r['estimate']:.2f}x"] for r in rows]
    factors = [r["restore_s"] / r["torch_load_s"] for r in rows]
    vs_newest = [r["restore_s"] / newest for r in rows]
    summary = {"newest_vs_torch_load": factors[-1], "worst_vs_torch_load": max(factors),
               "median_vs_torch_load": statistics.median(factors), "worst_vs_newest": max(vs_newest),
               "median_vs_newest": statistics.median(vs_newest)}
    text = table(body, ["version", "restore ms", "torch.load ms", "vs torch.load", "vs newest restore",
                        "estimate (x whole)"])
    return (f"{name}\n{text}\nworst {max(factors):.2f}x / median {statistics.median(factors):.2f}x torch.load; "
            f"worst {max(vs_newest):.2f}x / median {statistics.median(vs_newest):.2f}x the newest version's "
            f"restore; ratio {result['ratio']:.3f}x ({result['ratio_before_repack']:.3f}x before repack, "
            f"gc --repack after {result['repack_s']:.1f} s); commit call {result['commit_mb_s']:,.0f} MB/s, "
            f"{result['with_repack_mb_s']:,.0f} MB/s with the background repack; torch.save "
            f"{result['torch_save_mb_s']:,.0f} MB/s"), summary


def resume_timing(epochs: int = 12, seed: int = 0, repeats: int = 3, **settings: Any) -> dict[str, Any]:
    """``trainer.fit(ckpt_path=...)`` resuming the digits run from its best version that
    is not the newest (lowest validation loss), from the repository and from the
    ModelCheckpoint file of the same epoch. ``max_epochs`` is that epoch's, so fit
    restores everything (weights, optimizer, loops, callbacks) and stops: the time is
    Trainer start-up plus the restore, which is what differs."""
    import logging

    import pytorch_lightning as pl
    from torch.nn import functional as F

    objs, ckpt_dir = trajectories.digits_trajectory(epochs=epochs, seed=seed)
    files = sorted(ckpt_dir.glob("*.ckpt"), key=lambda f: torch.load(f, weights_only=False)["epoch"])
    cls = trajectories._digits_module_class()
    train_dl, val_dl = trajectories._digits_loaders(seed, batch_size=64)

    def val_loss(ckpt: dict) -> float:
        m = cls()
        m.load_state_dict(ckpt["state_dict"])
        with torch.no_grad():
            return float(sum(F.cross_entropy(m(x), y, reduction="sum") for x, y in val_dl) / len(val_dl.dataset))

    losses = [val_loss(o) for o in objs]
    best = min(range(len(objs) - 1), key=losses.__getitem__)  # the best that is not the newest
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        repo = Repository.init(Path(d) / "repo", **settings)
        for o, loss in zip(objs, losses):
            repo.commit(o, "digits", metrics={"val_loss": loss})
        url = f"modelhub://{Path(d) / 'repo'}#digits@v{best + 1}"

        def fit(path: str) -> None:
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=objs[best]["epoch"] + 1, logger=False,
                                 enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                                 num_sanity_val_steps=0)
            trainer.fit(cls(), train_dl, val_dl, ckpt_path=path)
            assert trainer.current_epoch == objs[best]["epoch"] + 1 and trainer.global_step == objs[best]["global_step"]

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file_s = median_time(functools.partial(fit, str(files[best])), repeats)
            repo_s = median_time(functools.partial(fit, url), repeats)
    return {"epoch": objs[best]["epoch"], "version": best + 1, "of": len(objs), "file_s": file_s, "repo_s": repo_s}


def codec_speed(objs: list[Any], settings: dict[str, Any] | None = None) -> dict[str, float]:
    """Codec alone (what zipnn's numbers measure): every float32 tensor of every version
    coded whole (version 0) or as a delta from the next version, on both cores, then
    decoded; no hashing, files or index."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from modelhub_torch.pas.codec import decode_tensor, default_workers, encode_tensor

    cfg = {**DEFAULT_SETTINGS, **(settings or {})}
    whole = CodecConfig.from_json(cfg["materialize"])
    delta = CodecConfig.from_json(cfg["delta"])
    maps = [dict(anchors.iter_tensors(o)) for o in objs]
    jobs = []
    for i, m in enumerate(maps):
        for k, t in m.items():
            if t.dtype != torch.float32 or t.numel() == 0:
                continue
            bits = t.contiguous().reshape(-1).numpy().view(np.uint32)
            if i + 1 < len(maps) and k in maps[i + 1]:
                base = maps[i + 1][k].contiguous().reshape(-1).numpy().view(np.uint32)
                jobs.append((bits, base, delta))
            else:
                jobs.append((bits, None, whole.for_dtype("float32", 4, cfg["layout"] == "exp-first")))
    raw = sum(b.nbytes for b, _, _ in jobs)

    def decode(a: tuple[Any, Any]) -> np.ndarray:
        (bits, base, cfg), chunks = a
        return decode_tensor(chunks, np.empty_like(bits), base, cfg, "bench")

    with ThreadPoolExecutor(default_workers()) as pool:
        # each figure is the median of three passes (this VM's first touch of fresh
        # memory makes a single pass vary by 2x); decoded outputs are dropped as they
        # come, as zipnn's are (anchors.py), and a last pass checks every value
        enc_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            coded = list(pool.map(lambda j: list(encode_tensor(j[0], j[1], j[2])), jobs))
            enc_times.append(time.perf_counter() - t0)
        enc = statistics.median(enc_times)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in pool.map(decode, zip(jobs, coded)):
                pass
            times.append(time.perf_counter() - t0)
        assert all(pool.map(lambda a: bool((decode(a) == a[0][0]).all()), zip(jobs, coded)))
    return {"encode_mb_s": raw / enc / 1e6, "decode_mb_s": raw / statistics.median(times) / 1e6}


def torch_load_latest(obj: Any) -> tuple[float, float]:
    """Median seconds of torch.load of the checkpoint saved uncompressed: as users call
    it (``weights_only=True``, torch's default and what Repository.load does too) and
    with the unrestricted unpickler (``weights_only=False``)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "latest.pt"
        torch.save(obj, path)
        safe = median_time(lambda: torch.load(path, weights_only=True))
        unrestricted = median_time(lambda: torch.load(path, weights_only=False))
        return safe, unrestricted


def order0_floor(objs: list[Any]) -> float:
    """Best ratio any per-plane order-0 coder could reach on a trajectory: for every
    float32 tensor the smaller of the byte-plane entropies of the tensor itself and of
    its zigzag delta from the previous version (tables, headers and the first version's
    overhead free). It bounds what plane split + subtraction + entropy coding can do."""
    import numpy as np

    def planes_entropy(u: np.ndarray) -> float:
        total = 0.0
        for j in range(4):
            counts = np.bincount(((u >> np.uint32(8 * j)) & np.uint32(0xFF)).astype(np.int64), minlength=256)
            p = counts[counts > 0] / u.size
            total += float(-(p * np.log2(p)).sum()) * u.size / 8
        return total

    raw = coded = 0.0
    prev: dict[str, torch.Tensor] = {}
    for o in objs:
        cur = dict(anchors.iter_tensors(o))
        for k, t in cur.items():
            if t.dtype != torch.float32 or t.numel() == 0:
                continue
            x = t.contiguous().reshape(-1).numpy().view(np.uint32)
            best = planes_entropy(x)
            if k in prev and prev[k].shape == t.shape:
                d = x.astype(np.int64) - prev[k].contiguous().reshape(-1).numpy().view(np.uint32).astype(np.int64)
                z = ((d << 1) ^ (d >> 63)).astype(np.uint32)
                best = min(best, planes_entropy(z))
            raw += x.nbytes
            coded += best
        prev = cur
    return raw / coded


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return str(n)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join([line, sep, *body])


def per_version_main(datasets: list[tuple[str, list[Any], str]], args: argparse.Namespace) -> None:
    """The restore-budget tables: every version of (a), (b) and a longer run, under the
    default budget and under the old policy (unbounded chains), then resume timing."""
    factor = DEFAULT_SETTINGS["max_load_factor"]
    long_digits, _ = trajectories.digits_trajectory(epochs=48, seed=1)
    long_minilm = trajectories.minilm_finetune_trajectory(versions=32)
    runs = [*datasets[:2], ("(L) MiniLM fine-tune, 32 versions", long_minilm, "minilm"),
            ("(L2) digits CNN, 48 ckpts, seed 1 (not tuned on)", long_digits, "digits")]
    policies = [(f"default (max_load_factor={factor:g})", {}), ("old policy (unbounded chains)", {"max_load_factor": None})]
    for f in args.frontier:
        policies.append((f"max_load_factor={f:g}", {"max_load_factor": f}))
    summary = []
    per_version_restore(datasets[0][1][:3], "warmup", repeats=1)  # kernels loaded before anything is timed
    print("\nRestore of every version vs torch.load of that checkpoint (medians of 3, warm), after "
          "committing every version and 'gc --repack'")
    for name, objs, model in runs:
        for pname, settings in policies:
            if pname.startswith("max_load_factor=") and not name.startswith("(b)"):
                continue  # the frontier only on (b)
            # restores of a few ms vary by a third from run to run: more repeats there
            repeats = 3 if raw_tensor_bytes(objs[:1]) > (8 << 20) else 9
            result = per_version_restore(objs, model, repeats=repeats, **settings)
            text, s = per_version_table(f"{name} — {pname}", result)
            print("\n" + text, flush=True)
            summary.append([name.split(",")[0], pname, f"{result['ratio']:.3f}x", f"{result['commit_mb_s']:,.0f}",
                            f"{result['with_repack_mb_s']:,.0f}", f"{result['torch_save_mb_s']:,.0f}",
                            f"{s['newest_vs_torch_load']:.2f}x",
                            f"{s['worst_vs_newest']:.2f}x", f"{s['median_vs_newest']:.2f}x",
                            f"{s['worst_vs_torch_load']:.2f}x"])
    print("\nSummary (targets on (b): newest <= 2x torch.load, worst <= 2.5x and median <= 1.5x the newest, "
          "ratio >= 2.7x; commit >= 300 MB/s)")
    print(table(summary, ["data", "policy", "ratio", "commit call MB/s", "+ background MB/s", "torch.save MB/s",
                          "newest/torch.load",
                          "worst/newest", "median/newest", "worst/torch.load"]))
    r = resume_timing()
    print(f"\nResume: trainer.fit(ckpt_path=best) from epoch {r['epoch']} (version {r['version']} of {r['of']}, "
          f"the best that is not the newest): ModelCheckpoint file {r['file_s'] * 1e3:.0f} ms, repository "
          f"{r['repo_s'] * 1e3:.0f} ms ({r['repo_s'] / r['file_s']:.2f}x); Trainer start-up included in both")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", action="store_true", help="also sweep keyframe interval and codec choices")
    ap.add_argument("--versions", type=int, default=8, help="MiniLM fine-tune versions (>= 6)")
    ap.add_argument("--per-version", action="store_true",
                    help="only the restore-budget tables: every version of (a), (b) and a 48-epoch run against "
                         "torch.load of it, default budget vs old policy, and resume timing")
    ap.add_argument("--frontier", type=float, nargs="*", default=[],
                    help="with --per-version: also these max_load_factor values on (b)")
    args = ap.parse_args(argv)

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; building data sets ...", flush=True)
    digits, ckpt_dir = trajectories.digits_trajectory(epochs=12)
    mc_bytes = sum(p.stat().st_size for p in ckpt_dir.glob("*.ckpt"))
    minilm = trajectories.minilm_finetune_trajectory(versions=args.versions)
    pretrained = [trajectories.minilm_pretrained()]
    datasets = [
        ("(a) digits CNN, 12 ckpts + Adam", digits, "digits"),
        (f"(b) MiniLM fine-tune, {len(minilm)} versions", minilm, "minilm"),
        ("(c) MiniLM pretrained", pretrained, "minilm"),
    ]
    if args.per_version:
        per_version_main(datasets, args)
        return 0

    rows, speed_rows, results = [], [], {}
    for name, objs, model in datasets:
        raw = raw_tensor_bytes(objs)
        ts = anchors.torch_save_bytes(objs)
        zs = anchors.zstd_per_file_bytes(objs)
        zp = anchors.zipnn_per_version(objs)
        zx = anchors.zipnn_xor_delta(objs) if len(objs) > 1 else zp
        ours = run_ours(objs, model)
        results[name] = ours
        rows.append([
            name, fmt_bytes(raw), f"{ts / 1e6:,.2f} MB", f"{raw / zs:.3f}x", f"{raw / zp['bytes']:.3f}x",
            f"{raw / zx['bytes']:.3f}x", f"{ours['ratio']:.3f}x", f"{ours['stored'] / 1e6:,.2f} MB",
        ])
        tl, tl_unrestricted = torch_load_latest(objs[-1])
        cs = codec_speed(objs)
        speed_rows.append([
            name, f"{cs['encode_mb_s']:,.0f}", f"{cs['decode_mb_s']:,.0f}", f"{ours['call_mb_s']:,.0f}",
            f"{ours['encode_mb_s']:,.0f}", f"{ours['decode_mb_s']:,.0f}", f"{zp['encode_mb_s']:,.0f}",
            f"{zp['decode_mb_s']:,.0f}", f"{ours['latest_s'] * 1e3:.1f}", f"{tl * 1e3:.1f}",
            f"{ours['latest_s'] / tl:.2f}x", f"{tl_unrestricted * 1e3:.1f}",
        ])
    print("\nStorage (ratio = raw tensor bytes / stored bytes; all lossless)")
    print(table(rows, ["data", "raw tensors", "torch.save", "zstd/file", "zipnn", "zipnn XOR-delta", "ours", "ours stored"]))
    print("\nSpeed (MB/s of raw tensor bytes, 2 cores). codec = encode/decode of the tensors alone (median of 3 passes),")
    print("as zipnn is measured; commit call = Repository.commit returning (hashing, files, fsync);")
    print("+ repack = also the background repack it starts (the parent's reverse delta, context")
    print("re-codes), i.e. commits back to back; load = Repository.load of every version (old ones decode a")
    print("delta chain); restore = load of the latest, median of 5, vs torch.load of the same")
    print("checkpoint saved uncompressed (page cache warm for both), torch.load as users call it")
    print("(weights_only=True, its default and what Repository.load does); last column: torch.load")
    print("with weights_only=False (unrestricted unpickler, no safety check)")
    print(table(speed_rows, ["data", "codec enc", "codec dec", "commit call", "+ repack", "load all", "zipnn enc",
                             "zipnn dec",
                             "restore ms", "torch.load ms", "restore/torch.load", "torch.load unsafe ms"]))
    a = results[datasets[0][0]]
    print(f"\n(a) vs ModelCheckpoint(save_top_k=-1): {fmt_bytes(mc_bytes)} written -> ours {fmt_bytes(a['stored'])}"
          f" = {mc_bytes / a['stored']:.2f}x smaller")
    print(f"(a) order-0 floor of per-plane coding (best of whole / delta per tensor, no overheads):"
          f" {order0_floor(digits):.3f}x")
    b = results[datasets[1][0]]
    print("(b) stored bytes per plane:", {k: fmt_bytes(v) for k, v in b["planes"].items()})

    if args.sweep:
        sweep_rows = []
        variants = [
            ("default", {}),
            ("keyframe 4", {"keyframe_interval": 4}),
            ("keyframe 8", {"keyframe_interval": 8}),
            ("keyframe 1 (no deltas)", {"keyframe_interval": 1}),
            ("delta xor", {"delta": CodecConfig(op="xor", group_from=8).to_json()}),
            ("delta sub + exponent grouping", {"delta": CodecConfig(op="sub", lane=4, group_from=0).to_json()}),
            ("delta sub lane 1 (plane-separable)", {"delta": CodecConfig(op="sub", lane=1, group_from=8).to_json()}),
            ("delta sub, zstd level 3", {"delta": CodecConfig(op="sub", lane=4, group_from=8, level=3).to_json()}),
            ("whole: IEEE layout", {"layout": "ieee"}),
            ("no context coding", {"context_coding": False}),
        ]
        for vname, settings in variants:
            cells = [vname]
            for _name, objs, model in datasets[:2]:
                r = run_ours(objs, model, **settings)
                cells += [f"{r['ratio']:.3f}x", f"{r['encode_mb_s']:,.0f}", f"{r['decode_mb_s']:,.0f}"]
            sweep_rows.append(cells)
        print("\nSweep (ratio, commit MB/s, load-all MB/s) on (a) and (b)")
        print(table(sweep_rows, ["variant", "(a) ratio", "(a) enc", "(a) dec", "(b) ratio", "(b) enc", "(b) dec"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
