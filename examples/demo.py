"""End-to-end demo: train on real data with the callback, explore, restore, resume.

1. Train a small CNN on scikit-learn's digits with Lightning and ModelHubCheckpoint:
   every epoch becomes a version (ModelCheckpoint(save_top_k=-1) runs alongside, only
   to compare the bytes users keep today).
2. Explore the repository with the CLI: lineage, storage, one version, a diff.
3. Restore the best version bit for bit and evaluate it.
4. Resume training from it with ``ckpt_path="modelhub://..."`` and start a fine-tune
   with ``modelhub copy``.
5. Query the repository with DQL: metrics, lineage and the recorded network; slice
   the best network's feature extractor, construct a batch-norm variant of it and
   evaluate the variant over a grid of learning rates, keeping the best by successive
   halving.
6. Predict progressively: the high-order bytes first, the rest only where unsure
   (one batch, then single requests, which is where reading less pays).
7. Share: clone the top 2 byte planes into a second repository, predict progressively
   there; a full load fetches the rest from the source; pull the rest.
8. Archive: re-plan storage within a load-time budget, low-order planes to a second
   tier; store one old version lossily, checking its accuracy; verify.
9. A hub: serve a folder over HTTP in another process, publish to it, search it with
   DQL and load from it.

Run it with ``make demo``; the repository is left in ./demo-hub/repo for you to explore
(``.venv/bin/modelhub --repo demo-hub/repo list``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from digits import DigitsCNN, accuracy, loaders  # noqa: E402
from train_digits import train  # noqa: E402

import modelhub_torch  # noqa: E402
from modelhub_torch.callbacks import ModelHubCheckpoint, make_url  # noqa: E402

WORK = ROOT / "demo-hub"
CKPTS = WORK / "lightning-checkpoints"
REPO = WORK / "repo"
EPOCHS = 12
QUERIES = 50  # single progressive requests in step 6


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def modelhub(*args: str, repo: Path = REPO) -> None:
    cmd = [sys.executable, "-m", "modelhub_torch.cli", "--repo", str(repo), *args]
    print("$ modelhub " + shlex.join(args), flush=True)
    # examples/ on the path, so `modelhub eval --module digits:DigitsCNN` can import it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    subprocess.run(cmd, check=True, env=env)


def bits_equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


def hub_step(repo: modelhub_torch.Repository) -> bool:
    """Serve a hub folder, publish digits-cnn to it, search it, load its best version."""
    import socket
    import time
    import urllib.error
    import urllib.request

    hub_dir = WORK / "hub"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    modelhub("init", str(hub_dir), repo=hub_dir)
    token = subprocess.run([sys.executable, "-m", "modelhub_torch.cli", "token", "create", "--scope", "write",
                            "--repo", str(hub_dir)], check=True, capture_output=True, text=True).stdout.split()[0]
    print("$ modelhub token create --scope write   # printed once; clients set MODELHUB_TOKEN or 'modelhub login'")
    os.environ["MODELHUB_TOKEN"] = token
    print(f"$ modelhub serve {hub_dir.relative_to(ROOT)} --port {port} &")
    server = subprocess.Popen([sys.executable, "-m", "modelhub_torch.cli", "serve", str(hub_dir), "--port", str(port)])
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/v1/info", timeout=1)
            except urllib.error.HTTPError:
                break  # it answers (401 without a token)
            except OSError:
                time.sleep(0.2)
        modelhub("publish", url, "digits-cnn")
        modelhub("search", "select m where m.metrics.val_acc > 0.9", "--hub", url)
        remote = modelhub_torch.Repository(url)
        same_hub = bits_equal(remote.load_state_dict("digits-cnn@best"), repo.load_state_dict("digits-cnn@best"))
        print(f"Repository({url!r}).load_state_dict('digits-cnn@best'): bit-identical: {same_hub}")
        return same_hub
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.environ.pop("MODELHUB_TOKEN", None)


def main() -> int:
    if WORK.exists():
        shutil.rmtree(WORK)
    step(f"1. train a digits CNN for {EPOCHS} epochs with ModelHubCheckpoint (every epoch a version)")
    out = train(REPO, EPOCHS, compare=CKPTS)
    mc, ours = out["modelcheckpoint_bytes"], out["repo_bytes"]
    print(f"final val_acc {out['val_acc']:.3f}; best version {out['best']}")
    print(f"storage: ModelCheckpoint(save_top_k=-1) wrote {mc / 1024:.0f} KiB in {EPOCHS} files;"
          f" the repository holds {ours / 1024:.0f} KiB ({mc / ours:.2f}x smaller), every epoch kept")

    step("2. explore")
    modelhub("list")
    modelhub("stats")
    modelhub("desc", "digits-cnn@best")
    modelhub("diff", "digits-cnn@v1", "digits-cnn@best")

    step("3. restore digits-cnn@best bit for bit and evaluate it")
    repo = modelhub_torch.Repository(REPO)
    best = repo.version("digits-cnn@best")
    ckpt = modelhub_torch.load(REPO, "digits-cnn@best")
    original = torch.load(CKPTS / f"epoch={best.info['epoch']}.ckpt", weights_only=True)
    same = bits_equal(ckpt["state_dict"], original["state_dict"])
    restored = DigitsCNN.load_from_checkpoint(make_url(REPO, "digits-cnn@best"))
    print(f"{best.ref} (epoch {ckpt['epoch']}): weights bit-identical to ModelCheckpoint's file: {same};"
          f" val_acc {accuracy(restored):.3f} (logged {best.metrics['val_acc']:.3f})")

    step("4. resume from digits-cnn@best for 3 more epochs, then start a fine-tune from it")
    pl.seed_everything(1, workers=True)
    train_dl, val_dl = loaders()
    hub = ModelHubCheckpoint(REPO, "digits-cnn", monitor="val_acc", mode="max")
    trainer = pl.Trainer(max_epochs=best.info["epoch"] + 4, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[hub])
    url = make_url(REPO, best.ref)
    print(f"trainer.fit(module, ckpt_path={url!r})")
    trainer.fit(DigitsCNN(), train_dl, val_dl, ckpt_path=url)
    modelhub("copy", "digits-cnn@best", "digits-finetune", "-m", "start of a fine-tune")
    modelhub("list")

    step("5. query the repository with DQL: find versions, derive networks, train a grid and keep the best")
    modelhub("query", 'select m where m.name like "digits%" and m.metrics.val_acc > 0.97 '
             'and m["conv*"].next has RELU order by m.metrics.val_acc desc limit 3')
    modelhub("query", f'select m where m.ancestors has "{best.ref}"')
    print("# derive networks from the best version: its feature extractor, and a variant with batch norm")
    modelhub("query", 'slice m2 from m1 where m1.name = "digits-cnn" and m1.tags has "best" '
             'mutate m2.input = m1["conv1"] and m2.output = m1["max_pool2d"] as "digits-features"')
    modelhub("query", 'construct m2 from m1 where m1.name = "digits-cnn" and m1.tags has "best" '
             'mutate m1["conv[1,2]($1)"].insert = BN("bn$1") as "digits-cnn-bn"')
    print("# train the variant over a grid; keep the best 2 after 30 steps (every rung a version)")
    config = WORK / "tune.yaml"
    config.write_text("seed_everything: 0\ntrainer: {max_steps: 90}\n"
                      "data: {class_path: modelhub_torch.trials.digits.DigitsDataModule, init_args: {batch_size: 64}}\n"
                      "optimizer: {class_path: torch.optim.Adam, init_args: {lr: 0.001}}\n")
    modelhub("query", "--save", "bn-variant", 'select m where m.name = "digits-cnn-bn"')
    modelhub("query", "--workers", "2", f'evaluate m from "bn-variant" with config = "{config}" '
             'vary config.optimizer.lr in [0.01, 0.001] and config.net["bn*"].lr auto keep top(2, m["val_loss"], 30)')

    step("6. progressive predict: decide from the high-order bytes, read the rest only when unsure")
    from digits import digits_tensors

    from modelhub_torch.progressive import ProgressiveModel

    x = torch.cat([t.tensors[0] for t in digits_tensors()])
    y = torch.cat([t.tensors[1] for t in digits_tensors()])
    res = ProgressiveModel(DigitsCNN(), REPO, "digits-cnn@latest").predict(x, k=1)
    full = DigitsCNN.load_from_checkpoint(make_url(REPO, "digits-cnn@latest")).eval()
    with torch.no_grad():
        same = torch.equal(res.topk, full(x).topk(1, dim=1).indices)
    shares = ", ".join(f"{t} plane{'s' if t > 1 else ''}: {100 * v:.1f}%" for t, v in sorted(res.share_by_tier().items()))
    print(f"{len(x)} digits: same answers as the full-precision model: {same}; decided with {shares}")
    print(f"as one batch it read {res.bytes_read:,} of {res.bytes_full:,} bytes"
          f" ({100 * res.bytes_read / res.bytes_full:.0f}%: its hardest inputs need every plane);"
          f" accuracy {float((res.topk[:, 0] == y).float().mean()):.3f}")
    # one request at a time, as a server answers them, each with a cold reader: most are
    # decided by the high-order planes, so most requests read a fraction of the weights
    reads, agree = [], True
    for i in range(QUERIES):
        one = ProgressiveModel(DigitsCNN(), REPO, "digits-cnn@latest").predict(x[i : i + 1], k=1)
        reads.append(one.bytes_read / one.bytes_full)
        agree = agree and bool(one.topk[0, 0] == res.topk[i, 0])
    print(f"{QUERIES} single requests: same answers: {agree}; bytes read per request: mean"
          f" {100 * sum(reads) / len(reads):.0f}%, {sum(r < 0.75 for r in reads)} of {QUERIES} read"
          " under 75% of the weights")
    data = WORK / "digits.pt"
    torch.save({"x": x, "y": y}, data)
    # the class comes from the user, never from the repository (it records digits.DigitsCNN)
    modelhub("eval", "digits-cnn@latest", "--data", str(data), "--progressive", "--module", "digits:DigitsCNN")

    step("7. share: a teammate clones only the top 2 byte planes (from a bucket in real life: "
         "s3://...), predicts progressively there, and a full load fetches the rest from the source")
    copy = WORK / "teammate"
    modelhub("clone", str(REPO), str(copy), "digits-cnn", "--planes", "2", repo=copy)
    modelhub("eval", "digits-cnn@latest", "--data", str(data), "--progressive", "--module", "digits:DigitsCNN",
             repo=copy)
    teammate = modelhub_torch.Repository(copy)
    same_copy = bits_equal(teammate.load_state_dict("digits-cnn@best"), repo.load_state_dict("digits-cnn@best"))
    print(f"full load of digits-cnn@best in the copy: bit-identical to the source: {same_copy}")
    modelhub("pull", str(REPO), repo=copy)  # everything else, thin: only what the copy lacks
    modelhub("verify", repo=copy)
    same = same and same_copy

    step("8. archive: least bytes with every version within 2x its fastest load; low-order planes"
         " to a cheaper second tier (any fsspec URL: a bucket; a folder here)")
    modelhub("archive", "--budget", "2", "--cold", str(WORK / "cold-tier"), "--measure")
    modelhub("archive", "--lossy", "quant:4", "--versions", "digits-cnn@v5", "--data", str(data),
             "--module", "digits:DigitsCNN")
    modelhub("verify")
    step("9. a hub: 'modelhub serve' in another process, publish to it over HTTP, search it, "
         "load from it (and browse it: http://127.0.0.1:PORT/)")
    same = hub_step(repo) and same
    print(f"\nDone. Explore it yourself: .venv/bin/modelhub --repo {REPO.relative_to(ROOT)} list")
    print("(eval builds the network's class you name: --module examples.digits:DigitsCNN from the"
          " repository root; modelhub never imports a class a repository names)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
