"""Connections that hold the server without sending a request, or that never end: a real
uvicorn on a loopback port (in a thread of this process), with the server's own limits."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dinoseek.embedder_protocol import ImageEmbedder
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


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait until ``condition()`` holds; ``seconds`` only bounds a hang (fails the test)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.01)


def open_connections(server: LiveServer) -> int:
    return len(server.server.server_state.connections)


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
        assert closed_within(idle, 60.0)  # the head deadline is 0.5 s: 60 s bounds a hang
    assert httpx.get(f"{url}/health").status_code == 200


def test_headers_trickled_a_byte_at_a_time_are_cut_off(
    server: LiveServer,
) -> None:
    """A head that would take a minute to arrive is cut off long before its end (the head
    deadline is 0.5 s), whatever the machine's speed: the verdict is whether the trickle was
    stopped by the server, not how long it ran."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 1200
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        try:
            for byte in head:
                slow.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < len(head), "the whole trickled head was accepted"


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
        wait_for(lambda: open_connections(server) >= 8, "the server accepting 8 connections")
        assert httpx.get(f"{url}/health").status_code == 503
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: open_connections(server) == 0, "the server seeing the 8 closed")
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
        wait_for(lambda: open_connections(server) >= 1, "the server accepting the trickler")
        instance.should_exit = True  # as SIGTERM does; the server gives requests 1 s
        trickled = 0
        try:
            while thread.is_alive() and trickled < 600:  # a body that would take a minute
                trickler.sendall(b"x")
                trickled += 1
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server cut it off
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert trickled < 600, "the server waited for the trickling client to finish"
