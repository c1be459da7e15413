"""Leases: which process may rewrite a model's older versions (repack, prune) on a
location that no lock spans (remote stores, written by several processes at once).

A lease is a small file ``locks/repack-<model>`` holding its owner and when it
expires. It is taken by creating the file if absent (a conditional write), or, once
expired (its holder died or stalled), by replacing it on the ETag that showed it
expired: of two processes racing for it exactly one wins. The holder renews it
before each version it switches once half its time is gone, and stops when a renewal
fails (someone took it over); it deletes the file at the end, on the ETag it wrote.
Expiry compares wall clocks: writers' clocks must agree within minutes, far below
``LEASE_SECONDS``.

On a local disk the repository's flock already excludes other processes, so the lease
there is held at once and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from modelhub_torch.errors import ConflictError
from modelhub_torch.store.location import Location

LOCKS = "locks"
LEASE_SECONDS = 600.0
LEASE_WAIT = 120.0  # how long a prune or an archive waits for a running repack


class Lease:
    """A held (or not held) lease; ``renew`` keeps it, ``release`` gives it back."""

    def __init__(self, loc: Location | None, rel: str, seconds: float, etag: str | None):
        self.loc = loc  # None: a local repository, where the flock is the lease
        self.rel = rel
        self.seconds = seconds
        self.etag = etag
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.renewed = time.time()

    @property
    def held(self) -> bool:
        return self.loc is None or self.etag is not None

    def body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.seconds}).encode()

    def renew(self) -> bool:
        """Extend the lease once half of it is gone; False if it was lost meanwhile
        (another process found it expired and took it): stop rewriting then."""
        if self.loc is None:
            return True
        if self.etag is None:
            return False
        if time.time() - self.renewed < self.seconds / 2:
            return True
        self.etag = self.loc.replace_if_match(self.rel, self.body(), self.etag)
        self.renewed = time.time()
        return self.etag is not None

    def release(self) -> None:
        if self.loc is not None and self.etag is not None:
            self.loc.delete_if_match(self.rel, self.etag)
            self.etag = None


def _expired(raw: bytes) -> bool:
    """Whether a lease file's time is up (an unreadable one counts as expired: a lease
    is only ever written whole, so it is damage, and must not block maintenance)."""
    try:
        doc: Any = json.loads(raw)
        return float(doc["expires"]) < time.time()
    except (ValueError, TypeError, KeyError):
        return True


def _take(lease: Lease) -> bool:
    """One attempt: create the file, or take over an expired one."""
    assert lease.loc is not None
    lease.etag = lease.loc.create_exclusive(lease.rel, lease.body())
    if lease.etag is None:
        try:
            raw, etag = lease.loc.read_with_etag(lease.rel)
        except FileNotFoundError:  # released between the two requests: try again later
            return False
        if _expired(raw):
            lease.etag = lease.loc.replace_if_match(lease.rel, lease.body(), etag)
    lease.renewed = time.time()
    return lease.etag is not None


@contextlib.contextmanager
def model_lease(
    loc: Location, model: str, shared: bool, wait: float = 0.0, seconds: float = LEASE_SECONDS
) -> Iterator[Lease]:
    """The lease on rewriting ``model``'s versions. ``shared``: the location is written
    by processes no lock spans (else the lease is held at once). ``wait``: seconds to
    keep trying while another process holds it; check ``held`` afterwards."""
    if not shared:
        yield Lease(None, "", seconds, None)
        return
    lease = Lease(loc, f"{LOCKS}/repack-{model}", seconds, None)
    deadline = time.monotonic() + wait
    while not _take(lease) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        yield lease
    finally:
        lease.release()


@contextlib.contextmanager
def held_leases(
    loc: Location, models: list[str], shared: bool, what: str, seconds: float = LEASE_SECONDS
) -> Iterator[list[Lease]]:
    """The leases of several models at once (in name order, waiting ``LEASE_WAIT``
    for each), for an operation that rewrites all of them (``what``: its name, for
    the error when another process keeps one)."""
    with contextlib.ExitStack() as stack:
        leases = []
        for model in sorted(set(models)):
            lease = stack.enter_context(model_lease(loc, model, shared, wait=LEASE_WAIT, seconds=seconds))
            if not lease.held:
                raise ConflictError(
                    f"another process has been repacking {model!r} for over {LEASE_WAIT:.0f}s "
                    f"(lease {lease.rel}); retry the {what} later"
                )
            leases.append(lease)
        yield leases
