"""A hostile or merely greedy client against the service: uploads that would fill memory,
queries that never end, and request lines that would grow the metrics without bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder, Pixels, VectorOrError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.helpers import encode, photo
from tests.test_api import serving


class Gated(FakeEmbedder):
    """The stand-in model, whose forward pass waits until ``gate`` is set (60 s at most):
    ``entered`` is set when a forward pass begins, ``finished`` when one ends."""

    def __init__(self, model: ImageEmbedder) -> None:
        super().__init__(model_id=model.model_id, seed=model.seed)  # type: ignore[attr-defined]
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        self.entered.set()
        self.gate.wait(timeout=60)
        self.finished.set()
        return super().embed_each(pixels)

    async def wait_entered(self) -> None:
        """Until a query is in the model (60 s bounds a hang)."""
        assert await asyncio.to_thread(self.entered.wait, 60), "no query reached the model"


@pytest.fixture
def data_dir(tmp_path: Path, embedder: ImageEmbedder) -> Path:
    with EdgeStore(tmp_path / "data") as store:
        store.ensure_collection("images", embedder.space)
    return tmp_path / "data"


class Body:
    """A multipart upload of ``size`` bytes streamed to the app; records whether it was read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + self.data + b"\r\n--b--\r\n"
        )


def multipart(body: Body) -> dict[str, str]:
    length = len(body.data) + 124  # the framing above
    return {"content-type": "multipart/form-data; boundary=b", "content-length": str(length)}


def test_uploads_in_flight_are_bounded_in_bytes(data_dir: Path, embedder: ImageEmbedder) -> None:
    image = encode(photo(1, (640, 480)), "PNG")  # a few hundred KB
    settings = Settings(
        model=embedder.model_id, data_dir=data_dir, max_inflight_bytes=len(image) + 1000
    )
    gated = Gated(embedder)
    app = create_app(settings, embedder=gated, store=EdgeStore(data_dir))
    first, second = Body(image), Body(image)

    async def two() -> tuple[httpx.Response, httpx.Response]:
        async with serving(app) as http:
            running = asyncio.create_task(
                http.post("/search", content=first, headers=multipart(first))
            )
            try:
                await gated.wait_entered()
                refused = await http.post("/search", content=second, headers=multipart(second))
            finally:
                gated.gate.set()
            return await running, refused

    done, refused = asyncio.run(two())
    assert done.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "DINOSEEK_MAX_INFLIGHT_BYTES" in refused.json()["error"]["message"]
    assert not second.read


def test_thumbnails_are_admitted_like_queries(data_dir: Path, embedder: ImageEmbedder) -> None:
    """A thumbnail decodes an image too: it counts against the same limit, so thumbnails
    cannot crowd out the queries (nor the reverse) past it."""
    settings = Settings(model=embedder.model_id, data_dir=data_dir, max_queue=1)
    gated = Gated(embedder)
    app = create_app(settings, embedder=gated, store=EdgeStore(data_dir))
    thumbnail = "/points/00000000-0000-5000-8000-000000000000/image"

    async def during_a_query() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with serving(app) as http:
            files = {"image": ("q.jpg", encode(photo(2)))}
            running = asyncio.create_task(http.post("/search", files=files))
            try:
                await gated.wait_entered()
                refused = await http.get(thumbnail, params={"size": 64})
            finally:
                gated.gate.set()
            await running
            return refused, await http.get(thumbnail, params={"size": 64}), await running

    refused, after, query = asyncio.run(during_a_query())
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert after.status_code == 404  # admitted once the place is free: no such point
    assert query.status_code == 200


def test_matches_are_admitted_like_queries(data_dir: Path, embedder: ImageEmbedder) -> None:
    """A match decodes two images and runs the model: it counts against the same limit."""
    settings = Settings(model=embedder.model_id, data_dir=data_dir, max_queue=1)
    gated = Gated(embedder)
    app = create_app(settings, embedder=gated, store=EdgeStore(data_dir))
    point = "00000000-0000-5000-8000-000000000000"

    async def during_a_query() -> tuple[httpx.Response, ...]:
        async with serving(app) as http:
            files = {"image": ("q.jpg", encode(photo(2)))}
            running = asyncio.create_task(http.post("/search", files=files))
            await gated.wait_entered()
            refused_get = await http.get(f"/points/{point}/match/{point}")
            refused_post = await http.post(f"/points/{point}/match", files=files)
            gated.gate.set()
            await running
            after = await http.get(f"/points/{point}/match/{point}")
            return refused_get, refused_post, after, await running

    refused_get, refused_post, after, query = asyncio.run(during_a_query())
    for refused in (refused_get, refused_post):
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
    assert after.status_code == 404  # admitted once the place is free: no such point
    assert query.status_code == 200


def test_a_query_past_its_deadline_is_a_503_and_frees_its_place(
    data_dir: Path, embedder: ImageEmbedder
) -> None:
    settings = Settings(
        model=embedder.model_id, data_dir=data_dir, request_timeout_s=0.3, max_queue=1
    )
    gated = Gated(embedder)
    app = create_app(settings, embedder=gated, store=EdgeStore(data_dir))
    upload = {"image": ("q.jpg", encode(photo(2)))}

    async def late_then_in_time() -> tuple[httpx.Response, httpx.Response]:
        async with serving(app) as http:
            try:
                late = await http.post("/search", files=upload)
                # At the deadline, while the model still held the query (its gate was shut).
                assert not gated.finished.is_set(), "answered only when the model was done"
            finally:
                gated.gate.set()
            return late, await http.post("/search", files=upload)

    late, in_time = asyncio.run(late_then_in_time())
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "timeout"
    assert in_time.status_code == 200  # the one place in flight was given back


def test_a_trickled_upload_is_cut_off_at_the_deadline(
    data_dir: Path, embedder: ImageEmbedder
) -> None:
    settings = Settings(model=embedder.model_id, data_dir=data_dir, request_timeout_s=0.3)
    app = create_app(settings, embedder=embedder, store=EdgeStore(data_dir))

    chunks = 600  # a body that would take a minute to arrive
    sent: list[int] = []

    async def trickle() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n'
        for _ in range(chunks):
            await asyncio.sleep(0.1)
            sent.append(1)
            yield b"\xff"

    async def slowloris() -> httpx.Response:
        async with serving(app) as http:
            headers = {"content-type": "multipart/form-data; boundary=b"}
            return await http.post("/search", content=trickle(), headers=headers)

    response = asyncio.run(slowloris())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "timeout"
    assert len(sent) < chunks, "the whole trickled body was read"


def test_client_chosen_methods_and_paths_do_not_grow_the_metrics(
    data_dir: Path, embedder: ImageEmbedder
) -> None:
    settings = Settings(model=embedder.model_id, data_dir=data_dir, api_key="k")
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data_dir))) as client:

        def metrics_size() -> int:
            return len(client.get("/metrics", headers={"X-API-Key": "k"}).content)

        def hostile_requests(start: int, count: int) -> None:
            key = {"X-API-Key": "k"}
            for i in range(start, start + count):
                method = f"M{i:04d}" + "X" * 4096
                client.request(method, f"/random/{i}/" + "p" * 500)  # 401: no key
                client.request(method, f"/random/{i}/" + "p" * 500, headers=key)  # 404
                client.request(method, f"/points/{i}", headers=key)  # a route, another method
                client.request("GET", f"/points/{i}")  # 401: no key

        hostile_requests(0, 2)
        metrics_size()  # its own series, recorded once it has answered
        before = metrics_size()
        hostile_requests(2, 200)
        after = metrics_size()
    # 200 more methods and paths never seen: the same series, only their counts grew.
    assert after - before < 300, "each new method or path became a new series"


def test_ready_tells_a_stranger_only_whether_it_is_ready(
    data_dir: Path, embedder: ImageEmbedder
) -> None:
    settings = Settings(model=embedder.model_id, data_dir=data_dir, api_key="k")
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data_dir))) as client:
        stranger = client.get("/ready").json()
        assert stranger == {"ready": True}
        known = client.get("/ready", headers={"X-API-Key": "k"}).json()
        assert known["store"].startswith("embedded store at")
        assert known["points"] == 0


def test_a_405_says_which_methods_are_allowed(data_dir: Path, embedder: ImageEmbedder) -> None:
    settings = Settings(model=embedder.model_id, data_dir=data_dir)
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data_dir))) as client:
        answer = client.get("/search")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "POST"
        assert answer.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("mode", "dtype", "fmt", "size"),
    [
        ("I;16", "<u2", "PNG", (4000, 4000)),
        ("I", "<i4", "TIFF", (4000, 4000)),
        ("F", "<f4", "TIFF", (4000, 4000)),
        ("F", "<f4", "TIFF", (9_000_000, 1)),  # one long row: blocks within the row
    ],
)
def test_a_high_depth_image_is_scaled_without_a_float_copy(
    mode: str, dtype: str, fmt: str, size: tuple[int, int]
) -> None:
    import io
    import tracemalloc

    import numpy as np
    from PIL import Image

    from dinoseek.images import decode_image

    width, height = size
    ramp = np.tile(np.arange(width, dtype=dtype) * (16 if width < 65536 else 1), (height, 1))
    ramp[0, 0] = -70_000 if mode == "I" else ramp[0, 0]  # outside 16 bits: scaled by its range
    wide = Image.new(mode, size)
    wide.frombytes(ramp.tobytes())
    buffer = io.BytesIO()
    wide.save(buffer, fmt, **({"compression": "tiff_deflate"} if fmt == "TIFF" else {}))
    del wide, ramp
    tracemalloc.start()
    try:
        decoded = decode_image(buffer.getvalue(), max_pixels=40_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.image.size == size
    grey = np.asarray(decoded.image)[-1, :, 0]  # a row past the outlier pixel of I
    assert grey[: width // 8].max() < grey[-width // 8 :].min()  # the ramp is still a ramp
    # Pillow's own buffers are not traced; numpy's are. A float64 copy of the image alone is
    # 128 MB (and its temporaries as much again); the 8-bit result is 16 MB.
    assert peak < 64 * 1024 * 1024, f"{peak:,} bytes"
