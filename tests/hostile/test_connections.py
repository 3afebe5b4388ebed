"""Connections that hold the server without sending a request, or that never end: a real
uvicorn on a loopback port (in a thread of this process), with the server's own limits."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dinoseek.embedding import ImageEmbedder
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from tests.live_server import LiveServer, live_server


@pytest.fixture
def server(tmp_path: Path, embedder: ImageEmbedder) -> Iterator[LiveServer]:
    settings = Settings(
        model=embedder.model_id,
        data_dir=tmp_path / "data",
        header_timeout_s=0.5,
        max_connections=8,
        shutdown_timeout_s=1,
        min_upload_rate=0,  # these bodies trickle on purpose (tests/hostile/test_slow_uploads.py)
    )
    runtime = Runtime.open(
        settings,
        collection="optional",
        policy=ModelPolicy(purpose="serve"),
        store=EdgeStore(tmp_path / "data"),
        embedder=embedder,
    )
    with live_server(runtime) as served:
        yield served


def closed_within(connection: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``connection`` within ``seconds``."""
    connection.settimeout(seconds)
    try:
        return connection.recv(1024) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_a_connection_that_sends_nothing_is_closed(
    server: LiveServer,
) -> None:
    url = server.url
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        assert closed_within(idle, 3.0)
    assert httpx.get(f"{url}/health").status_code == 200


def test_headers_trickled_a_byte_at_a_time_are_cut_off(
    server: LiveServer,
) -> None:
    port = server.port
    with socket.create_connection(("127.0.0.1", port)) as slow:
        started = time.monotonic()
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100:
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > 5:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 3.0, "the trickle went on past the deadline"


def test_a_pipelined_request_has_its_body_deadline_not_the_head_deadline(
    server: LiveServer,
) -> None:
    """A request whose head came with the one before it is being served: its slow body is
    the query deadline's business, not cut off at the head deadline after the first answer."""
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        started = time.monotonic()
        while time.monotonic() - started < 4 * 0.5:  # the head deadline is 0.5 s
            client.sendall(b"x")  # raises once the server has closed the connection
            time.sleep(0.1)
        assert b"200 OK" in client.recv(4096)  # the first answer came meanwhile


def test_connections_beyond_the_limit_get_503(
    server: LiveServer,
) -> None:
    url, port = server.url, server.port
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        time.sleep(0.1)
        assert httpx.get(f"{url}/health").status_code == 503
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    assert httpx.get(f"{url}/health").status_code == 200


def test_shutdown_does_not_wait_for_a_request_that_never_ends(
    server: LiveServer,
) -> None:
    port, instance, thread = server.port, server.server, server.thread
    with socket.create_connection(("127.0.0.1", port)) as trickler:
        trickler.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        time.sleep(0.2)
        started = time.monotonic()
        instance.should_exit = True  # as SIGTERM does
        try:
            while thread.is_alive() and time.monotonic() - started < 10:
                trickler.sendall(b"x")  # it keeps trickling its body
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server cut it off
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert time.monotonic() - started < 4.0, "the server waited for the trickling client"
