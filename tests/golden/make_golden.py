"""Regenerate tests/golden/repo-v1 (only when FORMAT.md's format number changes).

The repository holds deterministic tensors, so tests can assert every value without
this script: see tests/test_format.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from modelhub_torch import Repository

HERE = Path(__file__).resolve().parent


def golden_versions() -> list[dict]:
    out = []
    w = torch.linspace(-1, 1, 300, dtype=torch.float32).reshape(20, 15)
    for i in range(3):
        out.append({
            "epoch": i,
            "state_dict": {
                "w": w + i * 1e-3,
                "b": torch.arange(5, dtype=torch.float16) * (i + 1),
                "steps": torch.tensor(i * 10, dtype=torch.int64),
                "mask": torch.tensor([True, False, i % 2 == 0]),
                "bf": torch.linspace(0, 1, 7, dtype=torch.bfloat16) + i,
            },
            "meta": (i, float("nan"), "x"),
        })
    return out


def main() -> int:
    target = HERE / "repo-v1"
    if target.exists():
        shutil.rmtree(target)
    repo = Repository.init(target)
    for i, v in enumerate(golden_versions()):
        repo.commit(v, "golden", metrics={"loss": 1.0 / (i + 1)}, message=f"v{i + 1}")
    repo.tag("golden@v2", "best")
    tidy(target)
    return 0


def tidy(root: Path) -> None:
    """Leave only what a repository is made of: no index, lock or temp files (an empty
    ``tmp/`` kept by ``.keep``, which verify ignores)."""
    shutil.rmtree(root / "index", ignore_errors=True)
    shutil.rmtree(root / "tmp", ignore_errors=True)
    (root / "tmp").mkdir()
    (root / "tmp" / ".keep").touch()
    (root / "lock").unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
