"""Slow uploads against the model routes (issue 24, item 4): one client address holding many
connections that send a declared body a byte at a time must not shut out everyone else.

The attack runs on a real uvicorn (in a thread of this process) from 127.0.0.3, the real
clients from 127.0.0.2. Every attacking connection asks for ``100 Continue``, so the test knows
the server's decision on each (reading its body, or refused) before any real request is sent;
no verdict waits on a clock other than generous bounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.helpers import encode, photo
from tests.live_server import live_server
from tests.raw_http import Answer, read_answer
from tests.test_api import serving

ATTACKER = "127.0.0.3"
CLIENT = "127.0.0.2"
DECLARED = 100_000
UPLOAD_HEAD = (
    b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
    b"Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n\r\n" % DECLARED
)
PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n'


def start_upload(port: int) -> tuple[socket.socket, Answer]:
    """A connection from the attacker's address that declares a 100 kB upload, and the server's
    first answer: ``100 Continue`` (it is reading the body) or a refusal."""
    connection = socket.create_connection(
        ("127.0.0.1", port), timeout=60, source_address=(ATTACKER, 0)
    )
    connection.sendall(UPLOAD_HEAD)
    answer = read_answer(connection)
    if answer.status == 100:
        connection.sendall(PART_HEAD)  # the file's bytes come next, one at a time
    return connection, answer


@contextmanager
def attack(port: int, connections: int) -> Iterator[list[tuple[socket.socket, Answer]]]:
    """``connections`` slow uploads, each with the server's first answer; closed at the end."""
    opened = [start_upload(port) for _ in range(connections)]
    try:
        yield opened
    finally:
        for connection, _ in opened:
            connection.close()


@contextmanager
def serve(tmp_path: Path, embedder: ImageEmbedder, **limits: object) -> Iterator[int]:
    """A live server with these limits; its port."""
    settings = Settings(
        model=embedder.model_id,
        data_dir=tmp_path / "data",
        request_timeout_s=600,  # the attack is ended by the limits under test, not the deadline
        **limits,  # type: ignore[arg-type]
    )
    runtime = Runtime.open(
        settings,
        collection="optional",
        policy=ModelPolicy(purpose="serve"),
        store=EdgeStore(tmp_path / "data"),
        embedder=embedder,
    )
    with live_server(runtime) as served:
        yield served.port


def real_queries(port: int, count: int) -> Counter[int]:
    """Statuses of ``count`` embeddings of a real image, sent from the real clients' address."""
    image = encode(photo(3))
    transport = httpx.HTTPTransport(local_address=CLIENT)
    with httpx.Client(transport=transport, timeout=120) as client:
        return Counter(
            client.post(
                f"http://127.0.0.1:{port}/embed", files={"image": ("q.jpg", image)}
            ).status_code
            for _ in range(count)
        )


@pytest.mark.slow
def test_slow_uploads_from_one_address_do_not_shut_out_the_others(
    tmp_path: Path, embedder: ImageEmbedder
) -> None:
    """The audit's reproduction: more trickling uploads than the model's queue holds. Those
    within the address's cap are read (they hold no place in the queue), the rest are refused
    429, and every real query from another address is answered."""
    limits = {"max_queue": 8, "max_client_connections": 32, "min_upload_rate": 0}
    with serve(tmp_path, embedder, **limits) as port, attack(port, 48) as uploads:
        statuses = Counter(answer.status for _, answer in uploads)
        assert statuses == {100: 32, 429: 16}, statuses
        refused = next(answer for _, answer in uploads if answer.status == 429)
        assert refused.error_code() == "too_many_connections"
        assert refused.headers["retry-after"] == "1"
        assert ATTACKER in refused.error_message()
        for connection, _ in uploads:
            connection.sendall(b"x")  # they go on sending
        assert real_queries(port, 20) == {200: 20}


@pytest.mark.slow
def test_an_upload_slower_than_the_minimum_rate_is_cut_off_with_408(
    tmp_path: Path, embedder: ImageEmbedder
) -> None:
    limits = {"max_client_connections": 0, "min_upload_rate": 1000}
    with serve(tmp_path, embedder, **limits) as port, attack(port, 8) as uploads:
        assert [answer.status for _, answer in uploads] == [100] * 8
        answers: dict[socket.socket, Answer] = {}
        deadline = time.monotonic() + 60  # the rule cuts them off after about 2 s
        while len(answers) < len(uploads) and time.monotonic() < deadline:
            waiting = [c for c, _ in uploads if c not in answers]
            for connection in waiting:
                with contextlib.suppress(OSError):  # it may be closed already
                    connection.sendall(b"x")  # one byte per second
            readable, _, _ = select.select(waiting, [], [], 1.0)
            for connection in readable:
                answers[connection] = read_answer(connection)
        assert len(answers) == len(uploads), "trickling uploads were not cut off"
        assert {a.status for a in answers.values()} == {408}
        assert {a.error_code() for a in answers.values()} == {"upload_too_slow"}
        assert (
            "DINOSEEK_MIN_UPLOAD_RATE"
            in json.loads(answers[uploads[0][0]].body)["error"]["message"]
        )
        assert real_queries(port, 3) == {200: 3}  # a whole upload is not slow


class HeldBody:
    """A multipart upload of ``DECLARED`` bytes that stops after its first part until
    ``release`` is set; ``reading`` is set once the app has asked for its first bytes."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.release = asyncio.Event()
        self.first = (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n'
        )
        self.last = b"\r\n--b--\r\n"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.reading.set()
        yield self.first
        await self.release.wait()
        yield b"x" * (DECLARED - len(self.first) - len(self.last)) + self.last


def test_uploads_still_arriving_hold_their_own_budget_not_places_in_the_queue(
    tmp_path: Path, embedder: ImageEmbedder
) -> None:
    """With one place in the model's queue, two uploads still arriving are read side by side,
    a third would pass the reading budget (503 before its body is read), and a query whose
    body is in is answered meanwhile."""
    settings = Settings(
        model=embedder.model_id,
        data_dir=tmp_path / "data",
        max_queue=1,
        max_reading_bytes=2 * DECLARED + 50_000,
        min_upload_rate=0,
    )
    app = create_app(settings, embedder=embedder, store=EdgeStore(tmp_path / "data"))
    headers = {
        "content-type": "multipart/form-data; boundary=b",
        "content-length": str(DECLARED),
    }

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with serving(app) as http:
            bodies = [HeldBody() for _ in range(3)]
            held = []
            for body in bodies[:2]:
                held.append(asyncio.create_task(http.post("/embed", content=body, headers=headers)))
                await asyncio.wait_for(body.reading.wait(), 30)
            third = await http.post("/embed", content=bodies[2], headers=headers)
            whole = await http.post("/embed", files={"image": ("q.jpg", encode(photo(1)))})
            answers = []
            for body, task in zip(bodies, held, strict=False):  # one place: one after the other
                body.release.set()
                answers.append(await task)
            return answers, third, whole

    held, third, whole = asyncio.run(scenario())
    assert third.status_code == 503
    assert third.json()["error"]["code"] == "overloaded"
    assert "DINOSEEK_MAX_READING_BYTES" in third.json()["error"]["message"]
    assert whole.status_code == 200
    # Read to their end, then decoded: not an image (their bytes are filler).
    assert [r.status_code for r in held] == [415, 415]
