"""Serialises writers of one repository so concurrent commits never corrupt it.

Local repositories use an ``fcntl.flock`` on ``<root>/lock`` (released by the kernel
if the holder dies, so a SIGKILL never leaves a stale lock). Other fsspec locations
are serialised within the process only: there writers of different processes
coordinate through conditional writes instead (numbered refs created if absent, tags
by compare-and-swap, a lease per model for repacks; see commit.py and lease.py).
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from modelhub_torch.errors import LockTimeoutError
from modelhub_torch.store.location import Location

_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_GUARD = threading.Lock()
_HELD = threading.local()  # url -> how deep this thread holds that repository's lock


def held_here(url: str) -> bool:
    """Whether the calling thread holds the writer lock of repository ``url``."""
    return getattr(_HELD, "depth", {}).get(url, 0) > 0


def _count(url: str, step: int) -> None:
    depth = getattr(_HELD, "depth", None)
    if depth is None:
        depth = _HELD.depth = {}
    depth[url] = depth.get(url, 0) + step


class RepoLock:
    def __init__(self, loc: Location, timeout: float = 600.0):
        self.loc = loc
        self.timeout = timeout
        with _GUARD:
            self._thread_lock = _PROCESS_LOCKS.setdefault(loc.url, threading.RLock())
        self._fh = None
        self._depth = 0

    @property
    def across_processes(self) -> bool:
        """Whether holding this lock keeps every other writer out: a local flock, or
        ``memory://`` (which only this process can reach); elsewhere it keeps out the
        other threads of this process only."""
        return self.loc.is_local or self.loc.protocol == "memory"

    def __enter__(self) -> RepoLock:
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise LockTimeoutError(f"repository {self.loc.url} stayed locked for {self.timeout}s")
        self._depth += 1
        if self._depth == 1 and self.loc.is_local:
            self._acquire_file()
        _count(self.loc.url, 1)
        return self

    def _acquire_file(self) -> None:
        import fcntl

        self._fh = open(self.loc.path("lock"), "a+b")  # noqa: SIM115 - held across calls
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._fh.close()
                    self._fh = None
                    self._depth -= 1
                    self._thread_lock.release()
                    raise LockTimeoutError(
                        f"another process has held {self.loc.path('lock')} for over "
                        f"{self.timeout:.0f}s; is a commit or archive stuck?"
                    ) from None
                time.sleep(0.02)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        _count(self.loc.url, -1)
        if self._depth == 0 and self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        self._thread_lock.release()
