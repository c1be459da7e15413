"""Commit versions, then die (os._exit, no cleanup) inside the background repack.

usage: repack_killed.py REPO VERSIONS STEP K
STEP: pack (the K-th pack object renamed into place) or switch (the K-th manifest
switch); the commits themselves always complete (they print their refs).
"""

import os
import sys

import torch

from modelhub_torch import Repository
from modelhub_torch.store import objects, refs

root, versions, step, k = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
calls = [0]


def tripwire(fn):
    def wrapped(*args, **kwargs):
        import threading

        if threading.current_thread().name == "modelhub-repack":
            calls[0] += 1
            if calls[0] > k:
                os._exit(9)
        return fn(*args, **kwargs)

    return wrapped


if step == "pack":
    objects.ObjectWriter.commit = tripwire(objects.ObjectWriter.commit)
else:
    refs.RefStore.set_manifest = tripwire(refs.RefStore.set_manifest)
repo = Repository(root)
g = torch.Generator().manual_seed(0)
w = torch.randn(200_000, generator=g)
for n in range(versions):
    w = w + torch.randn(200_000, generator=g) * 1e-3
    torch.save(w, f"{root}/../v{n + 1}.pt")
    print(repo.commit({"w": w}, "m").ref, flush=True)
repo.wait()
os._exit(0)
