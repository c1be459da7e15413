"""Hub benchmark: what a user of ``modelhub serve`` waits for, on loopback, with the
anchor a user would otherwise download from, all measured in one run.

Data: the MiniLM fine-tune trajectory of benchmarks/sync.py (v1 = the pretrained model,
then versions 25 AdamW steps apart; ``--quick``: a small MLP trained on digits), committed
into the hub's folder with a laptop's default settings (``Repository.init`` defaults,
background repack). The hub is ``modelhub serve PATH --public`` (uvicorn, one worker) in a
process of its own on 127.0.0.1, so the clients never share a GIL with it; the anchor is
``python -m http.server`` serving the newest version's ``torch.save`` file, in another.
Bytes and requests are counted on the client side: every HTTP request a ``HubClient``
makes (each retry too), its response body, its request body, its status and latency.

Parts:
  1. time-to-model for a new user (empty object cache, new folder) of the newest version:
     ``Repository.clone(URL, dst, [ref])`` + ``load``; ``Repository(URL).load(ref)`` (no
     clone); the anchor: download of its ``torch.save`` file + ``torch.load``;
  2. ``--planes 2``: a partial clone + ``ProgressiveModel.predict`` on real inputs against a
     full clone + load + the ordinary forward (answers compared). For MiniLM the network is
     its last encoder layer's feed-forward block with its residual (attention, LayerNorm and
     embeddings ProgressiveModel refuses), the inputs the token rows entering that block when
     the newest version embeds 32 standard-library docstrings, the answer the top-1 of its
     384 outputs;
  3. load: 16 pulling and 4 pushing clients, each a process of its own with a token of its
     own (its own rate bucket), warmed up on local folders first, for 30 s: a puller loads a
     random version (``Repository(URL).load``, its object cache kept between its loads), a
     pusher commits a nudged 64-64-10 MLP to its own model locally and pushes it. Operations
     started in the 30 s run to their end. Requests/s, p50/p99 latency of every attempt,
     statuses, failed operations; then ``verify`` of the hub's folder, every pushed version
     loaded back from it and every pulled version compared with the trajectory.

    python benchmarks/hub.py              # 9 MiniLM versions (v1..v9), 30 s of load
    python benchmarks/hub.py --quick      # a small MLP, a few seconds of load: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing as mp
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trajectories
from sync import fmt, save_bytes, table

from modelhub_torch import Repository

MODEL = "minilm"  # the model's name in the hub ("digits-mlp" with --quick)
PUSH_MODEL = "pusher"  # pusher i pushes versions of pusher-i, with a token for that name only


# ------------------------------------------------------------------ wire counting
class Wire:
    """Every HTTP request this process's HubClients make: one record per attempt
    ``(wall start, seconds, status (0: no answer), bytes down, bytes up, method, path)``."""

    def __init__(self) -> None:
        self.log: list[tuple[float, float, int, int, int, str, str]] = []
        self.lock = threading.Lock()

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int) -> list[tuple[float, float, int, int, int, str, str]]:
        with self.lock:
            return self.log[mark:]

    def add(self, record: tuple[float, float, int, int, int, str, str]) -> None:
        with self.lock:
            self.log.append(record)


WIRE = Wire()


def _sent(resp: httpx.Response | None, kw: dict[str, Any]) -> int:
    try:
        return len(resp.request.content) if resp is not None else len(kw.get("content") or b"")
    except Exception:  # a streamed request body
        return 0


def count_hub_requests() -> None:
    """Wrap the httpx client of every HubClient made from now on in this process (each
    attempt of HubClient.request's retry loop goes through it)."""
    from modelhub_torch.hub.client import HubClient

    if getattr(HubClient, "_bench_counted", False):
        return
    init = HubClient.__init__

    def counted_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        send = self._http.request

        def timed(method: str, url: Any, **kw: Any) -> httpx.Response:
            wall, t0 = time.time(), time.perf_counter()
            try:
                resp = send(method, url, **kw)
            except Exception:
                WIRE.add((wall, time.perf_counter() - t0, 0, 0, _sent(None, kw), method, str(url)))
                raise
            WIRE.add((wall, time.perf_counter() - t0, resp.status_code, len(resp.content),
                      _sent(resp, kw), method, str(url)))
            return resp

        self._http.request = timed

    HubClient.__init__ = counted_init  # type: ignore[method-assign]
    HubClient._bench_counted = True  # type: ignore[attr-defined]


def measure(fn: Callable[[], Any]) -> dict[str, Any]:
    mark = WIRE.mark()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    reqs = WIRE.since(mark)
    return {"seconds": secs, "requests": len(reqs), "down": sum(r[3] for r in reqs),
            "up": sum(r[4] for r in reqs), "result": out}


# ------------------------------------------------------------------ processes
def offline() -> None:
    """Nothing here downloads anything (the servers and clients inherit this)."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MODELHUB_TOKEN", None)
    return env


def wait_for(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def serving(cmd: list[str], probe: str, what: str, log: Path) -> Iterator[subprocess.Popen]:
    """A server subprocess, stopped (terminate, then kill) however the block ends."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for(probe, proc, what, log)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def cli_token(repo: Path, *extra: str) -> str:
    """``modelhub token create ... --json`` run as a user would, on the hub's folder."""
    import json

    out = subprocess.run([sys.executable, "-m", "modelhub_torch.cli", "token", "create", *extra,
                          "--repo", str(repo), "--json"], env=child_env(), capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout)["token"]


def token_in_process(repo: Path, scope: str, models: list[str] | None = None) -> str:
    """The same record ``modelhub token create`` writes (hub/tokens/ in the folder)."""
    from modelhub_torch.hub.tokens import TokenStore
    from modelhub_torch.store.location import Location

    return TokenStore(Location(str(repo))).create(scope, models, name="hub benchmark")


@contextlib.contextmanager
def new_user(root: Path, name: str) -> Iterator[Path]:
    """An empty object cache and index cache (MODELHUB_CACHE) and a new work folder."""
    home = root / name
    home.mkdir(parents=True)
    before = os.environ.get("MODELHUB_CACHE")
    os.environ["MODELHUB_CACHE"] = str(home / "cache")
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("MODELHUB_CACHE", None)
        else:
            os.environ["MODELHUB_CACHE"] = before
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ data and models
class MLP(nn.Module):
    """The --quick model (64-256-10 on 8x8 digits) and the pushers' model (64-64-10)."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, hidden), nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)


def mlp_trajectory(versions: int, steps: int = 30) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net, (x, y) = MLP(), digits()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    out = []
    for v in range(versions):
        for i in range(steps):
            gen = torch.Generator().manual_seed(v * 1000 + i)
            idx = torch.randint(0, len(x), (128,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        out.append({k: t.detach().clone() for k, t in net.state_dict().items()})
    return out


class FeedForward(nn.Module):
    """MiniLM's last encoder layer's feed-forward block with its residual, named as in
    the state dict (``encoder.layer.5.intermediate.dense.weight`` ...): the part of the
    network ProgressiveModel can bound (attention, LayerNorm and embeddings it refuses)."""

    def __init__(self, layer: int, hidden: int = 384, inner: int = 1536) -> None:
        super().__init__()
        block = nn.Module()
        block.intermediate, block.output = nn.Module(), nn.Module()
        block.intermediate.dense = nn.Linear(hidden, inner)
        block.output.dense = nn.Linear(inner, hidden)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleDict({str(layer): block})
        self.layer = str(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.encoder.layer[self.layer]
        return block.output.dense(F.gelu(block.intermediate.dense(x))) + x


def minilm_inputs(sd: dict[str, torch.Tensor], docs: int) -> torch.Tensor:
    """What enters the last layer's feed-forward block, one row per real token, when the
    newest version embeds ``docs`` standard-library docstrings (computed ahead, untimed)."""
    from transformers import BertModel

    model = BertModel(trajectories._bert_config(), add_pooling_layer=True)
    model.load_state_dict(sd, strict=True)
    model.eval()
    tok = trajectories._tokenizer(64)
    texts = trajectories._docstring_corpus()[:docs]
    ids, mask = trajectories._encode(tok, texts)
    seen: list[torch.Tensor] = []
    last = model.encoder.layer[-1].intermediate.dense
    handle = last.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    return seen[0][mask.bool()].contiguous()


def fingerprint(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8))
        for k in a)


def pushed_version(index: int, n: int) -> dict[str, torch.Tensor]:
    """Pusher ``index``'s n-th version: a small MLP nudged a little more each time."""
    base = MLP(64)
    gen = torch.Generator().manual_seed(10_000 + index)
    for p in base.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.1
    gen = torch.Generator().manual_seed(1_000_000 * (index + 1) + n)
    return {k: (v + 1e-3 * n * torch.randn(v.shape, generator=gen)).detach().clone()
            for k, v in base.state_dict().items()}


# ------------------------------------------------------------------ load clients
def load_client(role: str, index: int, url: str, token: str, refs: list[str], seconds: float,
                home: str, ready: Any, go: Any, out: Any) -> None:
    """One client process of the load test: pulls (``Repository(URL).load`` of a random
    version, with this client's own object cache) or pushes (commit a new version of its
    own model locally, push it) until ``seconds`` after ``go``."""
    offline()
    os.environ["MODELHUB_TOKEN"] = token
    os.environ["MODELHUB_CACHE"] = str(Path(home) / "cache")
    torch.set_num_threads(1)
    count_hub_requests()
    rng = random.Random(index)
    ops: list[tuple[float, float, str]] = []  # (start, seconds, what)
    errors: list[str] = []
    done: list[tuple[str, str | int]] = []
    local = Repository.init(Path(home) / "local") if role == "push" else None
    warm_up(Path(home) / "warm-up")
    ready.put(("ready", role, index))
    if not go.wait(timeout=600):
        doc = {"ops": [], "errors": ["never started"], "done": [], "wire": []}
        out.put(("done", role, index, doc))
        return
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        wall, t0 = time.time(), time.perf_counter()
        try:
            if role == "pull":
                ref = rng.choice(refs)
                sd = Repository(url).load(ref)
                done.append((ref, fingerprint(sd)))
            else:
                n += 1
                name = f"{PUSH_MODEL}-{index}"
                assert local is not None
                local.commit(pushed_version(index, n), name, message=f"push {n}")
                local.push(url, [name])
                done.append((f"{name}@v{n}", n))
            ops.append((wall, time.perf_counter() - t0, role))
        except Exception as exc:
            errors.append(f"{role} {index}: {type(exc).__name__}: {str(exc)[:300]}")
            time.sleep(0.2)
    out.put(("done", role, index, {"ops": ops, "errors": errors, "done": done, "wire": WIRE.log}))


def warm_up(folder: Path) -> None:
    """Imports and compiled kernels of commit, load and push, on local folders only (the
    hub and the object cache untouched): a client's first operation is not its start-up."""
    repo = Repository.init(folder / "a")
    for n in (1, 2):
        repo.commit(pushed_version(99, n), "warm-up")
    repo.wait()
    repo.load("warm-up@v1")
    Repository.clone(folder / "a", folder / "b").wait()  # its background repack ends before the folder goes
    shutil.rmtree(folder, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def endpoint(method: str, path: str) -> str:
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts[0] == "files" and len(parts) > 2:
        return f"{method} files/{parts[1]}/..."
    if parts[0] in ("list", "tags") and len(parts) > 1:
        return f"{method} {parts[0]}/..."
    return f"{method} {'/'.join(parts)}"


# ------------------------------------------------------------------ the parts
def time_to_model(url: str, static_url: str, ref: str, newest: dict[str, torch.Tensor],
                  save_size: int, repeat: int, root: Path) -> list[list[str]]:
    def clone_and_load(home: Path) -> Any:
        repo = Repository.clone(url, home / "clone", [ref])
        return repo.load(ref)

    def remote_load(home: Path) -> Any:
        return Repository(url).load(ref)

    def anchor(home: Path) -> Any:
        path = home / "model.pt"
        with httpx.Client(timeout=300) as client, client.stream("GET", static_url) as resp:
            resp.raise_for_status()
            with open(path, "wb") as fh:
                for chunk in resp.iter_bytes(1 << 20):
                    fh.write(chunk)
        return torch.load(path, map_location="cpu", weights_only=True)

    paths = [("torch.save file from a static HTTP server + torch.load", anchor),
             (f"Repository.clone(URL, dst, [{ref!r}]) + load", clone_and_load),
             (f"Repository(URL).load({ref!r}) (no clone)", remote_load)]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in paths}
    for i in range(repeat):  # interleaved, each a new user
        for label, fn in paths:
            with new_user(root, f"user-{i}-{paths.index((label, fn))}") as home:
                m = measure(lambda fn=fn, home=home: fn(home))
            if fn is anchor:
                m["down"], m["requests"] = save_size, 1
            m["exact"] = bit_equal(m.pop("result"), newest)
            runs[label].append(m)
    rows = []
    for label, _ in paths:
        ms = runs[label]
        secs = [m["seconds"] for m in ms]
        rows.append([label, f"{statistics.median(secs):.2f}", f"{min(secs):.2f}",
                     f"{ms[0]['seconds']:.2f}", fmt(ms[-1]["down"]),
                     f"{ms[-1]['down'] / save_size:.3f}",
                     str(ms[-1]["requests"]), "yes" if all(m["exact"] for m in ms) else "NO"])
    return rows


def partial_pull(url: str, ref: str, module: nn.Module, x: torch.Tensor, k: int,
                 root: Path) -> tuple[list[list[str]], bool]:
    from modelhub_torch.progressive import ProgressiveModel

    def pulled(mark: int) -> int:
        return sum(r[3] for r in WIRE.since(mark))

    def full(home: Path) -> Any:
        mark = WIRE.mark()
        repo = Repository.clone(url, home / "clone", [ref])
        down = pulled(mark)
        net = _fresh(module)
        wanted = net.state_dict()
        net.load_state_dict({name: v for name, v in repo.load(ref).items() if name in wanted})
        with torch.no_grad():
            return net.eval()(x).topk(k, dim=1).indices, None, down

    def partial(home: Path) -> Any:
        mark = WIRE.mark()
        repo = Repository.clone(url, home / "clone", [ref], planes=2)
        down = pulled(mark)
        res = ProgressiveModel(_fresh(module), repo, ref, start_planes=2).predict(x, k=k)
        return res.topk, res, down

    def remote(home: Path) -> Any:
        res = ProgressiveModel(_fresh(module), Repository(url), ref, start_planes=2).predict(x, k=k)
        return res.topk, res, 0

    results = {}
    for label, fn in (("full clone + load + forward", full),
                      ("clone --planes 2 + ProgressiveModel.predict", partial),
                      ("ProgressiveModel on Repository(URL), from 2 planes (no clone)", remote)):
        with new_user(root, f"planes-{len(results)}") as home:
            results[label] = measure(lambda fn=fn, home=home: fn(home))
    reference = results["full clone + load + forward"]["result"][0]
    base = results["full clone + load + forward"]["down"]
    rows, agree = [], True
    for label, m in results.items():
        topk, res, down = m["result"]
        same = torch.equal(topk, reference)
        agree &= same
        if res is not None:
            tiers = res.share_by_tier()
            shares = " ".join(f"{t}:{100 * s:.1f}%" for t, s in sorted(tiers.items()))
            read = f"{res.bytes_read / res.bytes_full:.3f}"
        else:
            shares, read = "all exact", "1.000"
        rows.append([label, f"{m['seconds']:.2f}", fmt(m["down"]), f"{m['down'] / base:.3f}",
                     fmt(down), fmt(m["down"] - down), str(m["requests"]), shares, read,
                     "yes" if same else "NO"])
    return rows, agree


def _fresh(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).eval()


def cpu_seconds(proc: subprocess.Popen) -> float:
    """User + system CPU seconds of a child process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def load_test(url: str, hub_path: Path, refs: list[str], expected: dict[str, str], args: Any,
              root: Path, server: subprocess.Popen) -> tuple[list[str], list[str]]:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    procs = []
    roles = [("pull", i) for i in range(args.pullers)] + [("push", i) for i in range(args.pushers)]
    for role, i in roles:  # a token each: every client is a user of its own (own rate bucket)
        tok = (token_in_process(hub_path, "read") if role == "pull"
               else token_in_process(hub_path, "write", [f"{PUSH_MODEL}-{i}"]))
        home = root / f"load-{role}-{i}"
        home.mkdir(parents=True)
        p = ctx.Process(target=load_client, args=(role, i, url, tok, refs, args.seconds, str(home),
                                                  ready, go, out), daemon=True)
        p.start()
        procs.append(p)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        waiting = len(roles)
        deadline = time.monotonic() + 300
        while waiting:
            ready.get(timeout=max(1.0, deadline - time.monotonic()))
            waiting -= 1
        t_go, cpu_go = time.time(), cpu_seconds(server)
        go.set()
        deadline = time.monotonic() + args.seconds + 600
        while len(results) < len(roles):
            try:
                _, role, i, doc = out.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            results[(role, i)] = doc
        t_end, cpu_end = time.time(), cpu_seconds(server)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    missing = [f"{r} {i}" for r, i in roles if (r, i) not in results]
    window = t_end - t_go
    lines = [f"{len(roles)} client processes ({args.pullers} pulling, {args.pushers} pushing), "
             f"{args.seconds:g} s of load; requests/s over {window:.1f} s (operations started "
             f"in the {args.seconds:g} s run to their end); the hub process used "
             f"{cpu_end - cpu_go:.1f} CPU s in it "
             f"({100 * (cpu_end - cpu_go) / window:.0f}% of one core)"]
    header = ["clients", "operations", "ops/s", "op p50 s", "op max s", "requests", "requests/s",
              f"req/s in {args.seconds:g} s",
              "p50 ms", "p99 ms", "max ms", "down", "up", "404", "429 retried", "other 4xx",
              "5xx/no answer", "failed ops"]
    rows = []
    by_endpoint: dict[str, list[float]] = {}
    all_wire: list[tuple] = []
    errors: list[str] = [f"client {m} sent no result" for m in missing]
    for role, label in (("pull", f"pulling ({args.pullers})"),
                        ("push", f"pushing ({args.pushers})")):
        docs = [d for (r, _), d in results.items() if r == role]
        wire = [w for d in docs for w in d["wire"]]
        all_wire += wire
        ops = [o for d in docs for o in d["ops"]]
        errs = [e for d in docs for e in d["errors"]]
        errors += errs
        rows.append(_load_row(label, wire, ops, errs, window, t_go, args.seconds))
        for w in wire:
            by_endpoint.setdefault(endpoint(w[5], w[6]), []).append(w[1])
    rows.append(_load_row("all", all_wire, [o for d in results.values() for o in d["ops"]],
                          errors, window, t_go, args.seconds))
    errors += [f"{w[5]} {w[6]} answered {w[2] or 'nothing'}" for w in all_wire
               if w[2] == 0 or w[2] >= 500 or (400 <= w[2] < 500 and w[2] not in (404, 429))]
    lines.append(table(rows, header))
    lines.append("")
    lines.append("latency by endpoint (every attempt, both kinds of client)")
    ep_rows = [[ep, str(len(v)), f"{1e3 * percentile(v, 50):.1f}", f"{1e3 * percentile(v, 99):.1f}",
                f"{1e3 * max(v):.1f}"] for ep, v in sorted(by_endpoint.items())]
    lines.append(table(ep_rows, ["endpoint", "requests", "p50 ms", "p99 ms", "max ms"]))
    # what came back
    pulled = [(ref, fp) for (r, _), d in results.items() if r == "pull" for ref, fp in d["done"]]
    wrong = [ref for ref, fp in pulled if expected[ref] != fp]
    pushed = [(ref, n, i) for (r, i), d in results.items() if r == "push" for ref, n in d["done"]]
    hub = Repository(hub_path)
    problems = hub.verify()
    not_loading = []
    for ref, n, i in pushed:
        try:
            if not bit_equal(hub.load(ref), pushed_version(i, int(n))):
                not_loading.append(f"{ref} differs")
        except Exception as exc:
            not_loading.append(f"{ref}: {type(exc).__name__}: {exc}")
    lines.append("")
    lines.append(f"pulled {len(pulled)} versions, {len(pulled) - len(wrong)} bit-exact"
                 + (f" (WRONG: {wrong[:5]})" if wrong else ""))
    lines.append(f"pushed {len(pushed)} versions, {len(pushed) - len(not_loading)} load back "
                 "bit-exact from the hub's folder"
                 + (f" (NOT: {not_loading[:5]})" if not_loading else ""))
    lines.append(f"verify of the hub's folder afterwards ({len(hub.versions())} versions): "
                 f"problems {[str(p) for p in problems]}")
    return lines, errors + wrong + not_loading + [str(p) for p in problems]


def _load_row(label: str, wire: list[tuple], ops: list[tuple], errs: list[str], window: float,
              t_go: float, seconds: float) -> list[str]:
    lat = [w[1] for w in wire]
    inside = sum(1 for w in wire if t_go <= w[0] < t_go + seconds)  # started in the load window
    codes = [w[2] for w in wire]
    op_secs = [o[1] for o in ops]
    return [label, str(len(ops)), f"{len(ops) / window:.2f}", f"{percentile(op_secs, 50):.2f}",
            f"{max(op_secs, default=float('nan')):.2f}", str(len(wire)),
            f"{len(wire) / window:.1f}", f"{inside / seconds:.1f}",
            f"{1e3 * percentile(lat, 50):.1f}",
            f"{1e3 * percentile(lat, 99):.1f}", f"{1e3 * max(lat, default=float('nan')):.1f}",
            fmt(sum(w[3] for w in wire)), fmt(sum(w[4] for w in wire)), str(codes.count(404)),
            str(codes.count(429)),
            str(sum(1 for c in codes if 400 <= c < 500 and c not in (404, 429))),
            str(sum(1 for c in codes if c >= 500 or c == 0)), str(len(errs))]


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=9, help="trajectory versions (v1 = pretrained)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the load test")
    ap.add_argument("--pullers", type=int, default=16, help="pulling client processes")
    ap.add_argument("--pushers", type=int, default=4, help="pushing client processes")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each time-to-model path")
    ap.add_argument("--docs", type=int, default=32,
                    help="docstrings whose tokens are the progressive inputs (MiniLM)")
    ap.add_argument("--quick", action="store_true",
                    help="a small MLP trained on digits instead of MiniLM, 5 s of load: "
                         "a smoke run")
    args = ap.parse_args(argv)
    if args.quick and args.seconds == 30.0:
        args.seconds = 5.0
    offline()
    command = "python benchmarks/hub.py " + " ".join(argv if argv is not None else sys.argv[1:])
    count_hub_requests()
    what = "a small MLP on digits (--quick)" if args.quick else "the MiniLM fine-tune trajectory"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; building {what} ...", flush=True)
    global MODEL
    if args.quick:
        MODEL = "digits-mlp"
        versions = mlp_trajectory(args.versions)
        module, k = MLP(), 1
        x = digits()[0]
    else:
        versions = trajectories.minilm_finetune_trajectory(versions=args.versions)
        layer = trajectories._bert_config().num_hidden_layers - 1
        module, k = FeedForward(layer), 1
        x = minilm_inputs(versions[-1], args.docs)
    newest = versions[-1]
    newest_ref = f"{MODEL}@v{len(versions)}"
    save = save_bytes(newest)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as d:
        root = Path(d)
        os.environ["XDG_CONFIG_HOME"] = str(root / "config")  # no saved token is used
        os.environ.pop("MODELHUB_TOKEN", None)
        os.environ["MODELHUB_CACHE"] = str(root / "main-cache")
        hub_path = root / "hub"
        t0 = time.perf_counter()
        hub = Repository.init(hub_path)
        for i, sd in enumerate(versions):
            hub.commit(sd, MODEL, message=f"step {25 * i}")
        hub.wait()
        built = time.perf_counter() - t0
        stored = sum(f.stat().st_size for f in (hub_path / "objects").rglob("*") if f.is_file())
        static = root / "static"
        static.mkdir()
        (static / "model.pt").write_bytes(save)
        print(f"{len(versions)} versions committed to the hub's folder in {built:.1f} s (default "
              f"settings); objects {fmt(stored)}; newest {newest_ref}: torch.save {fmt(len(save))}",
              flush=True)
        hub_port, static_port = free_port(), free_port()
        url = f"http://127.0.0.1:{hub_port}"
        static_url = f"http://127.0.0.1:{static_port}/model.pt"
        cli_token(hub_path, "--scope", "write")  # as an admin would; the load test makes its own
        hub_cmd = [sys.executable, "-m", "modelhub_torch.cli", "serve", str(hub_path), "--port",
                   str(hub_port), "--public"]
        static_cmd = [sys.executable, "-m", "http.server", str(static_port), "--bind", "127.0.0.1",
                      "--directory", str(static)]
        with serving(hub_cmd, f"{url}/api/v1/info", "the hub", root / "hub.log") as server, \
                serving(static_cmd, static_url, "the static server", root / "static.log"):
            print(f"hub {url} (modelhub serve --public, its own process); static {static_url}\n",
                  flush=True)
            rows = time_to_model(url, static_url, newest_ref, newest, len(save), args.repeat, root)
            print(f"1. time-to-model for a new user: {newest_ref}, empty cache and folder each run "
                  f"({args.repeat} runs each, interleaved; bytes and requests of the last run)")
            print(table(rows, ["path", "seconds (median)", "min", "first", "bytes down",
                               "vs torch.save", "requests", "bit-exact"]))
            failures += [r[0] for r in rows if r[-1] != "yes"]
            print(flush=True)
            rows, agree = partial_pull(url, newest_ref, module, x, k, root)
            inputs = ("digits images" if args.quick else
                      f"token rows of {args.docs} docstrings entering the last feed-forward block "
                      f"({FeedForward.__name__}: encoder.layer.{module.layer}.intermediate/output)")
            print(f"2. --planes 2: top-{k} of {len(x)} inputs ({inputs}), new user each")
            print(table(rows, ["path", "seconds", "bytes down", "vs full", "pull", "predict",
                               "requests", "decided at planes", "weights read", "same answers"]))
            if not agree:
                failures.append("progressive answers differ")
            print(flush=True)
            refs = [f"{MODEL}@v{i + 1}" for i in range(len(versions))]
            expected = {ref: fingerprint(sd) for ref, sd in zip(refs, versions)}
            del versions
            lines, errs = load_test(url, hub_path, refs, expected, args, root, server)
            print("3. load: pullers load a random version (Repository(URL).load, each its own "
                  "object cache, kept between its loads); pushers commit a new version of a "
                  "64-64-10 MLP and push it; a token each")
            print("\n".join(lines))
            if errs:
                print("errors:", *errs[:20], sep="\n  ")
            failures += errs
        logged = (root / "hub.log").read_text().splitlines()[1:]  # after its banner
        print("\nthe hub logged:",
              "\n".join(logged[-20:]) if logged else "nothing (no warning, no error)")
    print(f"\ncommand: {command.strip()}")
    print("result:", "OK" if not failures else f"{len(failures)} failure(s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
