"""One writer process of tests/test_s3.py's concurrency tests.

    python s3_writer.py URL WORKER GO_FILE MODEL:COUNT [MODEL:COUNT ...]

Opens the S3 repository at URL (storage options as JSON in $MODELHUB_TEST_S3_OPTIONS),
prints ``ready``, waits until GO_FILE exists (so the writers start together), commits
COUNT versions of each MODEL in turn (the k-th job's i-th one holds
``weights(WORKER, 1000 * k + i)``, metrics ``{"worker": WORKER, "i": 1000 * k + i}``),
waits for its background repacks and prints one JSON line:
``[{"model", "i", "id", "number", "parent"}...]`` (what each commit returned).
Its catalog cache is its own ($MODELHUB_CACHE), as another machine's would be.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def weights(worker: int, i: int) -> dict[str, torch.Tensor]:
    """A small state_dict drifting from one writer's start: consecutive versions are
    close (deltas pay), and every (worker, i) differs from every other."""
    g = torch.Generator().manual_seed(1000 + worker)
    w = torch.randn(48, 32, generator=g)
    b = torch.randn(32, generator=g)
    step = torch.Generator().manual_seed(100_000 * (worker + 1) + i)
    return {
        "layer.weight": w + 0.01 * i * torch.randn(48, 32, generator=step),
        "layer.bias": b + 0.01 * i,
        "step": torch.tensor([worker, i]),
    }


def main(url: str, worker: int, go: str, jobs: list[str]) -> None:
    from modelhub_torch import Repository

    repo = Repository(url, storage_options=json.loads(os.environ["MODELHUB_TEST_S3_OPTIONS"]))
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("never told to start")
        time.sleep(0.005)
    done = []
    for k, job in enumerate(jobs):
        model, count = job.split(":")
        for i in range(1000 * k, 1000 * k + int(count)):
            v = repo.commit(weights(worker, i), model, metrics={"worker": worker, "i": i})
            done.append({"model": model, "i": i, "id": v.id, "number": v.number, "parent": v.parent})
    repo.wait()
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:])
