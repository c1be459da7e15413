"""Background repacks: the coding a commit defers, on a worker thread of the process
that committed.

A commit returns once the new version is durable; re-encoding its parent as a reverse
delta and the context re-codes (``repack.py``) then run here while the caller goes on
(training, mostly). The caller never sees a half-done state: every ``Repository``
operation first waits for the repacks it scheduled on that repository (``wait``), so
a process observes the same layouts as with ``repack: "commit"``, only the commit call
returns sooner. The worker is not a daemon: an interpreter that exits finishes the
repack in progress first; a process killed meanwhile leaves every version loadable (a
repack switches one version at a time) and the next repack finishes the job.
"""

from __future__ import annotations

import threading
import warnings
from collections import deque
from typing import Any

from modelhub_torch.errors import ModelHubWarning
from modelhub_torch.store.lock import held_here

_cond = threading.Condition()
_queue: deque[tuple[Any, list[str]]] = deque()
_pending: dict[str, int] = {}
_worker: threading.Thread | None = None
# versions of the committed model a background repack looks at: the new one, its parent
# (to become a reverse delta), grandparent (to take the parent's delta as context) and
# one more, so one missed repack (a killed process) is made up by the next commit's
WINDOW = 4


def schedule(store: Any, models: list[str]) -> None:
    """Repack ``models`` of ``store`` (a RepoStore) on the worker thread."""
    global _worker
    with _cond:
        _queue.append((store, models))
        _pending[store.url] = _pending.get(store.url, 0) + 1
        if _worker is None:
            _worker = threading.Thread(target=_run, name="modelhub-repack", daemon=False)
            _worker.start()


def repack_now(store: Any, models: list[str]) -> None:
    """Run the repack a commit left out on the calling thread (``repack: "commit"`` on
    a remote store, where commits never re-encode their parent themselves); a failure
    is a warning: the version has landed."""
    from modelhub_torch.repack import repack

    try:
        repack(store, models, newest=WINDOW)
    except Exception as exc:
        _warn_failed(store, models, exc)


def after_commit(store: Any, models: list[str]) -> None:
    """The repository's ``repack`` setting applied after a commit to ``models``:
    "background" schedules it, "commit" runs it here (remote stores leave their parent
    to repack), "manual" leaves it to ``modelhub gc --repack``."""
    mode = store.settings.get("repack", "background")
    if mode == "background":
        schedule(store, models)
    elif mode == "commit" and not store.lock.across_processes:
        repack_now(store, models)


def wait(url: str) -> None:
    """Block until the repacks scheduled on repository ``url`` have run. A thread
    holding that repository's lock returns at once: no repack can be running then
    (it would hold the lock), and one queued must wait for this thread anyway."""
    if held_here(url):
        return
    with _cond:
        while _pending.get(url):
            _cond.wait()


def _finish_all() -> None:
    """At interpreter exit, before thread pools refuse new work: let the worker finish."""
    with _cond:
        while _worker is not None:
            _cond.wait()


def _register_exit_hook() -> None:
    # concurrent.futures stops accepting work in a threading-exit hook, which runs
    # before non-daemon threads are joined; hooks run last-registered first, so this
    # one (registered after concurrent.futures is imported) waits for the repack first
    import concurrent.futures.thread  # noqa: F401 - registers its hook before ours

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_finish_all)


_register_exit_hook()


def _warn_failed(store: Any, models: list[str], exc: Exception) -> None:
    warnings.warn(
        f"repack of {', '.join(models)} in {store.url} failed ({exc}); the versions "
        "stay loadable as committed; 'modelhub gc --repack' retries",
        ModelHubWarning,
        stacklevel=2,
    )


def _run() -> None:
    global _worker
    from modelhub_torch.repack import repack

    while True:
        with _cond:
            if not _queue:
                _worker = None
                _cond.notify_all()
                return
            store, models = _queue.popleft()
        try:
            repack(store, models, newest=WINDOW)
        except Exception as exc:  # a failed repack loses nothing: versions stay as committed
            _warn_failed(store, models, exc)
        finally:
            with _cond:
                _pending[store.url] -= 1
                if not _pending[store.url]:
                    del _pending[store.url]
                _cond.notify_all()
