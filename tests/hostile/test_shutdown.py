"""SIGTERM under load (issue 24, item 9): the requests the shutdown cuts off are answered 503
with ``Retry-After`` and the usual error body, never 500.

A real ``dinoseek serve`` process (``tests.fake_cli``: the stand-in model, 3 s per forward
pass, 1 s for requests in flight at shutdown). Before the signal, the test holds requests in
flight whatever the machine's speed: uploads whose body has not ended (the server has said
``100 Continue``) and whole uploads waiting for the slow model; and a thread keeps sending
queries throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import encode, photo
from tests.live_server import free_port
from tests.raw_http import Answer, read_answer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent.parent
IMAGE = encode(photo(2))
BODY = (
    b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n" + IMAGE + b"\r\n--b--\r\n"
)
HEAD = (
    b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n\r\n" % len(BODY)
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The server process, its port and its log."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DINOSEEK_TEST_EMBED_DELAY_S": "3",
        "DINOSEEK_TEST_PIDS": str(tmp_path / "pids"),
        "DINOSEEK_SHUTDOWN_TIMEOUT_S": "1",
        "DINOSEEK_MIN_UPLOAD_RATE": "0",  # held uploads stay in flight until the shutdown
        "DINOSEEK_REQUEST_TIMEOUT_S": "600",
    }
    command = [sys.executable, "-m", "tests.fake_cli", "serve", "--model", "fake/dinov2"]
    command += ["--data-dir", str(tmp_path / "data"), "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=output)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    try:
        yield process, port, log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def in_flight(port: int, *, whole: bool) -> socket.socket:
    """A request the server has begun to serve (it said ``100 Continue``): its whole body sent,
    or only the first half."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(HEAD)
    assert read_answer(connection).status == 100
    connection.sendall(BODY if whole else BODY[: len(BODY) // 2])
    return connection


def keep_querying(port: int, stop: threading.Event, statuses: Counter[object]) -> None:
    """Queries one after the other until ``stop``; their statuses, or the connection error."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            try:
                response = client.post(
                    f"http://127.0.0.1:{port}/embed", files={"image": ("q.jpg", IMAGE)}
                )
                statuses[response.status_code] += 1
            except httpx.TransportError as error:  # the server is gone or going
                statuses[type(error).__name__] += 1
                if isinstance(error, httpx.ConnectError):
                    return


def test_requests_cut_off_by_sigterm_get_503(
    server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    process, port, log = server
    stop = threading.Event()
    background: Counter[object] = Counter()
    load = threading.Thread(target=keep_querying, args=(port, stop, background))
    load.start()
    try:
        unfinished = [in_flight(port, whole=False) for _ in range(4)]
        waiting = [in_flight(port, whole=True) for _ in range(4)]
        process.send_signal(signal.SIGTERM)
        cut = [read_answer(connection) for connection in unfinished]
        served = [read_answer(connection) for connection in waiting]
    finally:
        stop.set()
        load.join(timeout=60)
    process.wait(timeout=60)
    output = log.read_text()

    # Uploads still arriving when the time was up: cut off, each told so.
    assert [answer.status for answer in cut] == [503] * 4, output
    for answer in cut:
        assert_cut_off(answer)
    # Waiting for the model (3 s a pass): answered if their pass ended in time, else cut off.
    assert {answer.status for answer in served} <= {200, 503}, output
    for answer in served:
        if answer.status == 503:
            assert_cut_off(answer)
    assert {s for s in background if isinstance(s, int) and s >= 500} <= {503}, background
    assert "Exception in ASGI application" not in output


def assert_cut_off(answer: Answer) -> None:
    assert answer.error_code() == "shutting_down"
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"] == "application/json"
