"""A hub served by a real uvicorn on 127.0.0.1 (a free port) in a thread of the test
process, for the HTTP and browser tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from modelhub_torch.hub.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_hub(location: str, **app_options: Any) -> Iterator[str]:
    """Serve ``create_app(location, **app_options)``; yields the hub's URL."""
    with running_app(create_app(str(location), **app_options)) as url:
        yield url


@contextlib.contextmanager
def running_app(app: Any) -> Iterator[str]:
    """Serve any ASGI app; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test hub did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
