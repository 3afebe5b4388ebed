"""A real uvicorn serving the real app on a loopback port, in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from dinoseek.runtime import Runtime
from search_api.uvicorn_server import server_config


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class LiveServer:
    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def live_server(runtime: Runtime) -> Iterator[LiveServer]:
    """Serve ``runtime`` with the server's own configuration (limits, deadlines) until the
    block ends; fails if it does not start within 20 s."""
    port = free_port()
    server = uvicorn.Server(server_config(runtime, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the test server did not start within 20 s")
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", port, server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
