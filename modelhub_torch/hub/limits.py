"""Per-token request rates and request body sizes: what keeps one client from
starving the others or filling the disk."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body: int = 512 << 20  # bytes in one request (an object batch, a manifest)
    rate: float = 200.0  # requests per second per token (per address when anonymous)
    burst: int = 400


class RateLimiter:
    """A token bucket per key, in this process (each hub process counts its own)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = float(rate), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when the request may go on, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                if len(self._buckets) > 100_000:  # forget idle keys
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
                return 0.0
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate
