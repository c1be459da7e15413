"""What a push, pull or clone did: versions moved, what was already there, bytes sent."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SyncReport:
    """The outcome of one transfer, seen from the side that ran it.

    ``versions``: refs that now exist on the destination because of this transfer;
    ``skipped``: refs the destination already held (nothing moved for them);
    ``objects``/``bytes``: objects written to the destination and their bytes (the
    thin encoding: what crossed the wire); ``partial``: refs stored with only their
    top ``planes`` byte planes; ``tags``: aliases created or moved (``model@alias``).
    """

    source: str
    destination: str
    versions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    partial: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    planes: int | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        moved = f"{len(self.versions)} version(s)" + (f" ({len(self.partial)} partial)" if self.partial else "")
        return (
            f"{moved}, {self.objects} object(s), {self.bytes:,} bytes from {self.source} to "
            f"{self.destination}; {len(self.skipped)} already there"
            + (f"; tags {', '.join(self.tags)}" if self.tags else "")
        )
