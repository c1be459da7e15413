"""Progress bars for long operations (tqdm on stderr, off unless asked for)."""

from __future__ import annotations

from typing import Any


def byte_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar counting bytes; disabled bars cost nothing and print nothing."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
        disable=not enabled, leave=False,
    )
