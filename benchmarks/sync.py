"""Sync benchmark: push / pull / clone against a real S3-compatible server, with the
anchors a user would otherwise sync, all measured in one run.

Data: the MiniLM fine-tune trajectory of benchmarks/storage.py ((b): the pretrained
model, then versions 25 AdamW steps apart). Server: moto's S3 server on 127.0.0.1,
behind a WSGI counter of requests and bytes in both directions (what crossed the
wire, not what a report claims).

Steps, for each remote layout (the remote created by the first push with the local
repository's settings, and a remote made with ``max_load_factor=None``, the compact
"archive" layout):
  1. push all versions but the last,  2. push one more fine-tune version,
  3. a fresh full clone,  4. a clone with ``--planes 2``.
Anchors: uploading each version's ``torch.save`` file, the same files compressed with
zipnn, and downloading them back.

    python benchmarks/sync.py              # 9 versions (v0..v8), both remote layouts
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trajectories

from modelhub_torch import Repository


class Counter:
    """Requests and bytes through the server (bodies in, response bodies out)."""

    def __init__(self) -> None:
        self.requests = self.up = self.down = 0
        self.lock = threading.Lock()

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.requests, self.up, self.down


def start_server(counter: Counter) -> tuple[str, Any]:
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    inner = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict, start_response: Any) -> Any:
        with counter.lock:
            counter.requests += 1
            counter.up += int(environ.get("CONTENT_LENGTH") or 0)
        for chunk in inner(environ, start_response):
            with counter.lock:
                counter.down += len(chunk)
            yield chunk

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def configure_s3(endpoint: str) -> None:
    import fsspec

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                                "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bench")


class Measure:
    def __init__(self, counter: Counter):
        self.counter = counter

    def __call__(self, fn: Any) -> dict[str, Any]:
        r0, u0, d0 = self.counter.snapshot()
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
        r1, u1, d1 = self.counter.snapshot()
        return {"seconds": secs, "requests": r1 - r0, "up": u1 - u0, "down": d1 - d0, "result": out}


def save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def zipnn_bytes(data: bytes) -> bytes:
    import zipnn

    return bytes(zipnn.ZipNN(input_format="byte", bytearray_dtype="float32").compress(bytearray(data)))


def fmt(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def run_layout(name: str, versions: list[Any], measure: Measure, tmp: Path, **remote_settings: Any) -> list[dict]:
    """The four steps for one remote layout; rows of the table."""
    local = Repository.init(tmp / f"{name}-local")
    for i, sd in enumerate(versions[:-1]):
        local.commit(sd, "minilm", message=f"step {25 * i}")
    local.wait()
    remote_url = f"s3://bench/{name}"
    if remote_settings:
        Repository.init(remote_url, **remote_settings)
    rows = []

    def push() -> Any:
        report = local.push(remote_url)
        Repository(remote_url).wait()  # the remote's re-layout, done by this process
        return report

    m = measure(push)
    rows.append({"step": f"push {len(versions) - 1} versions", **m})
    local.commit(versions[-1], "minilm", message="one more fine-tune version")
    local.wait()
    m = measure(push)
    rows.append({"step": "push 1 new version", **m})
    m = measure(lambda: Repository.clone(remote_url, tmp / f"{name}-clone").last_sync)
    rows.append({"step": "clone (full)", **m})
    m = measure(lambda: Repository.clone(remote_url, tmp / f"{name}-clone2", planes=2).last_sync)
    rows.append({"step": "clone --planes 2", **m})
    local_part = Repository.clone(local, tmp / f"{name}-clone3", planes=2).last_sync
    rows.append({"step": "clone --planes 2 of the local repo (no wire)", "seconds": local_part.seconds,
                 "requests": 0, "up": 0, "down": 0, "result": local_part})
    clone = Repository(tmp / f"{name}-clone")
    for i, sd in enumerate(versions):  # the clone is bit-exact
        got = clone.load(f"minilm@v{i + 1}")
        assert all(torch.equal(got[k].view(torch.uint8), sd[k].view(torch.uint8)) for k in sd), i
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=9, help="MiniLM versions (v0 = pretrained)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; building the MiniLM trajectory ...", flush=True)
    versions = trajectories.minilm_finetune_trajectory(versions=args.versions)
    counter = Counter()
    endpoint, server = start_server(counter)
    configure_s3(endpoint)
    measure = Measure(counter)
    import fsspec

    fs = fsspec.filesystem("s3")
    files = [save_bytes(sd) for sd in versions]
    zipped = [zipnn_bytes(f) for f in files]
    total_save = sum(len(f) for f in files)
    print(f"{len(versions)} versions, torch.save {fmt(total_save)} in all ({fmt(len(files[-1]))} each); "
          f"zipnn {fmt(sum(len(z) for z in zipped))}; S3 server {endpoint}\n", flush=True)

    anchor_rows = []
    for label, blobs in (("torch.save files", files), ("zipnn files", zipped)):
        key = label.split()[0].replace(".", "_")
        m = measure(lambda blobs=blobs, key=key: [fs.pipe(f"bench/{key}/v{i}.pt", b) for i, b in enumerate(blobs[:-1])])
        anchor_rows.append({"step": f"{label}: upload {len(blobs) - 1}", **m})
        m = measure(lambda blobs=blobs, key=key: fs.pipe(f"bench/{key}/v{len(blobs) - 1}.pt", blobs[-1]))
        anchor_rows.append({"step": f"{label}: upload 1 new", **m})
        m = measure(lambda blobs=blobs, key=key: [fs.cat(f"bench/{key}/v{i}.pt") for i in range(len(blobs))])
        anchor_rows.append({"step": f"{label}: download all", **m})

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        results["remote: same settings as local (budget 2.5)"] = run_layout("default", versions, measure, Path(d))
        results["remote: max_load_factor=None (compact)"] = run_layout(
            "compact", versions, measure, Path(d), max_load_factor=None)
    server.shutdown()

    header = ["step", "bytes up", "bytes down", "moved", "vs torch.save", "seconds", "requests", "requests/version",
              "written there"]
    n_all, new_save = len(versions), len(files[-1])
    print("Anchors (what a user would otherwise sync)")
    rows = []
    for r in anchor_rows:
        moved = r["up"] + r["down"]
        base = new_save if "1 new" in r["step"] else (total_save - new_save if "upload" in r["step"] else total_save)
        count = 1 if "1 new" in r["step"] else (n_all - 1 if "upload" in r["step"] else n_all)
        rows.append([r["step"], fmt(r["up"]), fmt(r["down"]), fmt(moved), f"{moved / base:.3f}",
                     f"{r['seconds']:.2f}", str(r["requests"]), f"{r['requests'] / count:.1f}", "-"])
    print(table(rows, header))
    for title, layout_rows in results.items():
        print(f"\nmodelhub_torch, {title}")
        rows = []
        for r in layout_rows:
            moved = r["up"] + r["down"]
            if r["step"].startswith("push 1"):
                base, count = new_save, 1
            elif r["step"].startswith("push"):
                base, count = total_save - new_save, n_all - 1
            else:
                base, count = total_save, n_all
            written = r["result"].bytes
            if r["step"].startswith("clone --planes 2 of"):
                moved = written
            rows.append([r["step"], fmt(r["up"]), fmt(r["down"]), fmt(moved), f"{moved / base:.3f}",
                         f"{r['seconds']:.2f}", str(r["requests"]), f"{r['requests'] / count:.1f}", fmt(written)])
        print(table(rows, header))
        full = next(r for r in layout_rows if r["step"] == "clone (full)")
        part = next(r for r in layout_rows if r["step"] == "clone --planes 2")
        new = next(r for r in layout_rows if r["step"] == "push 1 new version")
        local_part = next(r for r in layout_rows if r["step"].startswith("clone --planes 2 of"))
        print(f"--planes 2 from a sender that codes the top planes itself (a local repository; the hub): "
              f"{local_part['result'].bytes / max(1, full['up'] + full['down']):.3f} of a full clone")
        print(f"targets: push of 1 new version {(new['up'] + new['down']) / new_save:.3f} of its torch.save (<= 0.400); "
              f"full clone {(full['up'] + full['down']) / total_save:.3f} of the torch.save files (<= 0.400); "
              f"--planes 2 clone {(part['up'] + part['down']) / max(1, full['up'] + full['down']):.3f} of a full "
              "clone (<= 0.55)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
