"""The HTTP API through its ASGI client: the real app and a real embedded store, with the
stand-in model (these tests are about the service, not the model)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from dinoseek.embedder_protocol import ImageEmbedder, Pixels, VectorOrError
from dinoseek.errors import CollectionMismatchError, StoreLockedError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, ServerStore, point_id_for_sha256
from indexer.pipeline import IndexOptions, index_folders
from search_api.app import create_app
from search_api.auth import has_key
from search_api.limits import BodySizeLimit, declared_length
from tests.helpers import admits, bad_image_samples, encode, photo, write_tree
from tests.indexing import indexed_tree


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder) -> tuple[Path, Path]:
    """(data dir, photos dir): a labelled tree indexed into an embedded store."""
    root = tmp_path_factory.mktemp("api")
    return indexed_tree(root, embedder, per_class=5, classes=("cats", "dogs", "birds"))


def make_client(embedder: ImageEmbedder, data_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data_dir, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data_dir)))


@pytest.fixture
def client(embedder: ImageEmbedder, indexed: tuple[Path, Path]) -> Iterator[TestClient]:
    with make_client(embedder, indexed[0]) as test_client:
        yield test_client


def upload(data: bytes, name: str = "query.jpg") -> dict[str, tuple[str, bytes]]:
    return {"image": (name, data)}


def photo_paths(indexed: tuple[Path, Path]) -> list[Path]:
    return sorted(indexed[1].rglob("*.jpg"))


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True
    assert ready["points"] == 15
    assert ready["collection_exists"] is True


def test_exact_copy_comes_first(client: TestClient, indexed: tuple[Path, Path]) -> None:
    path = photo_paths(indexed)[4]
    response = client.post("/search", files=upload(path.read_bytes()), params={"top_k": 5})
    assert response.status_code == 200
    body = response.json()
    assert len(body["results"]) == 5
    first = body["results"][0]
    assert first["path"] == str(path)
    assert first["score"] >= 0.999
    assert first["label"] == path.parent.name
    assert first["id"] == point_id_for_sha256(hashlib.sha256(path.read_bytes()).hexdigest())
    assert set(body["timings_ms"]) >= {"decode", "embed", "search", "total"}
    assert body["collection"] == "images"


def test_filters_offset_and_threshold(client: TestClient, indexed: tuple[Path, Path]) -> None:
    data = photo_paths(indexed)[0].read_bytes()
    dogs = client.post("/search", files=upload(data), params={"label": "dogs", "top_k": 20})
    assert {r["label"] for r in dogs.json()["results"]} == {"dogs"}
    assert len(dogs.json()["results"]) == 5
    rooted = client.post("/search", files=upload(data), params={"root": str(indexed[1])})
    assert len(rooted.json()["results"]) == 10
    elsewhere = client.post("/search", files=upload(data), params={"root": "/elsewhere"})
    assert elsewhere.json()["results"] == []
    full = client.post("/search", files=upload(data), params={"top_k": 6}).json()["results"]
    page = client.post("/search", files=upload(data), params={"top_k": 3, "offset": 3})
    assert [r["id"] for r in page.json()["results"]] == [r["id"] for r in full[3:6]]
    strict = client.post("/search", files=upload(data), params={"score_threshold": 0.9999})
    assert [r["score"] >= 0.9999 for r in strict.json()["results"]] == [True]


@pytest.mark.parametrize(("name", "sample"), sorted(bad_image_samples().items()))
def test_bad_uploads_get_4xx_with_the_error_body(
    client: TestClient, name: str, sample: tuple[bytes, str]
) -> None:
    data, code = sample
    response = client.post("/search", files=upload(data, name))
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["code"] == code
    expected_status = {"unsupported_format": 415, "not_an_image": 415, "too_many_pixels": 413}
    assert response.status_code == expected_status.get(code, 422)


def test_parameter_and_routing_errors(client: TestClient, indexed: tuple[Path, Path]) -> None:
    data = photo_paths(indexed)[0].read_bytes()
    for params in ({"top_k": 0}, {"top_k": 1001}, {"offset": -1}, {"score_threshold": 2}):
        response = client.post("/search", files=upload(data), params=params)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_request"
    missing = client.post("/search", data={"other": "x"})
    assert missing.status_code == 422
    assert "image" in missing.json()["error"]["message"]
    unknown = client.post("/search", files=upload(data), params={"collection": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "collection_not_found"
    for name in ("../x", ""):  # an empty name is not the default collection
        invalid = client.post("/search", files=upload(data), params={"collection": name})
        assert invalid.status_code == 422
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    assert client.get("/search").json()["error"]["code"] == "method_not_allowed"


def test_upload_size_limit(embedder: ImageEmbedder, indexed: tuple[Path, Path]) -> None:
    with make_client(embedder, indexed[0], max_upload_bytes=10_000) as small:
        big = encode(photo(1, (800, 600)), "PNG")
        assert len(big) > 10_000
        declared = small.post("/search", files=upload(big, "big.png"))
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "upload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield (
                b'--abc\r\nContent-Disposition: form-data; name="image"; '
                b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
            )
            for _ in range(20):
                yield b"x" * 1000
            yield b"\r\n--abc--\r\n"

        streamed = small.post(
            "/search",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=abc"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"] == {
            "code": "upload_too_large",
            "message": "the upload is more than the limit of 10,000 bytes "
            "(DINOSEEK_MAX_UPLOAD_BYTES)",
        }
        assert small.get("/health").status_code == 200


def test_batch_search_answers_each_image(client: TestClient, indexed: tuple[Path, Path]) -> None:
    paths = photo_paths(indexed)
    files = [
        ("images", ("a.jpg", paths[0].read_bytes())),
        ("images", ("bad.jpg", b"\xff\xd8\xff\xe0 broken")),
        ("images", ("c.jpg", paths[7].read_bytes())),
    ]
    response = client.post("/search/batch", files=files, params={"top_k": 2})
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["index"] for item in items] == [0, 1, 2]
    assert items[0]["results"][0]["path"] == str(paths[0])
    assert items[1]["error"]["code"] == "corrupt_image"
    assert items[1]["results"] is None
    assert items[2]["results"][0]["path"] == str(paths[7])
    too_many = [("images", ("x.jpg", b"x"))] * 65
    assert client.post("/search/batch", files=too_many).status_code == 413


def test_points_similar_and_image(client: TestClient, indexed: tuple[Path, Path]) -> None:
    path = photo_paths(indexed)[2]
    point_id = client.post("/search", files=upload(path.read_bytes())).json()["results"][0]["id"]

    stored = client.get(f"/points/{point_id}").json()
    assert stored["payload"]["path"] == str(path)

    similar = client.get(f"/points/{point_id}/similar", params={"top_k": 4}).json()
    assert len(similar["results"]) == 4
    assert point_id not in {r["id"] for r in similar["results"]}

    original = client.get(f"/points/{point_id}/image")
    assert original.status_code == 200
    assert original.content == path.read_bytes()
    assert original.headers["content-type"] == "image/jpeg"
    thumbnail = client.get(f"/points/{point_id}/image", params={"size": 64})
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.headers["cache-control"] == "max-age=3600"  # no key: anyone may cache
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 64

    unknown = "00000000-0000-0000-0000-000000000000"
    assert client.get(f"/points/{unknown}").status_code == 404
    assert client.get(f"/points/{unknown}/similar").status_code == 404
    invalid = client.get("/points/..%2F..%2Fetc%2Fpasswd/image")
    assert invalid.status_code in (404, 422)
    assert client.get("/points/not-a-uuid").json()["error"]["code"] == "invalid_point_id"


def test_image_of_a_changed_file_is_not_served(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (path,) = write_tree(photos, per_class=1, classes=("a",))
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        workers=0,
        progress="off",
        failures_report=tmp_path / "f.jsonl",
    )
    with EdgeStore(tmp_path / "data") as store:
        index_folders(embedder, store, options)
    point_id = point_id_for_sha256(hashlib.sha256(path.read_bytes()).hexdigest())
    path.write_bytes(encode(photo(42)))
    with make_client(embedder, tmp_path / "data") as client:
        response = client.get(f"/points/{point_id}/image")
    assert response.status_code == 404
    assert "re-run `dinoseek index`" in response.json()["error"]["message"]


def test_embed_returns_the_stored_vector(
    client: TestClient, indexed: tuple[Path, Path], embedder: ImageEmbedder
) -> None:
    path = photo_paths(indexed)[5]
    body = client.post("/embed", files=upload(path.read_bytes())).json()
    assert body["dim"] == embedder.dim
    vector = np.asarray(body["vector"], dtype=np.float32)
    point_id = point_id_for_sha256(hashlib.sha256(path.read_bytes()).hexdigest())
    service = client.app.state.service  # type: ignore[attr-defined]
    (stored,) = service.store.get("images", [point_id], with_vectors=True)
    assert float(vector @ stored.vector) >= 0.9999
    patches = client.post(
        "/embed", files=upload(path.read_bytes()), params={"patch_tokens": True}
    ).json()
    assert np.asarray(patches["patch_tokens"]).shape == (256, embedder.dim)
    np.testing.assert_allclose(patches["vector"], body["vector"], atol=1e-5)


def test_collections_and_metrics(client: TestClient, indexed: tuple[Path, Path]) -> None:
    (collection,) = client.get("/collections").json()["collections"]
    assert collection["name"] == "images"
    assert collection["points"] == 15
    assert collection["dim"] == 32
    point_id = client.post("/search", files=upload(photo_paths(indexed)[0].read_bytes())).json()[
        "results"
    ][0]["id"]
    client.get(f"/points/{point_id}")
    text = client.get("/metrics").text
    assert 'dinoseek_request_seconds_count{method="POST",route="/search",status="200"}' in text
    assert 'route="/points/{point_id}"' in text
    assert 'dinoseek_stage_seconds_count{stage="decode"}' in text
    assert "dinoseek_batch_size_bucket" in text
    assert "dinoseek_queue_depth" in text


def test_api_key(embedder: ImageEmbedder, indexed: tuple[Path, Path]) -> None:
    with make_client(embedder, indexed[0], api_key="s3cret") as keyed:
        data = photo_paths(indexed)[0].read_bytes()
        assert keyed.post("/search", files=upload(data)).status_code == 401
        wrong = keyed.post("/search", files=upload(data), headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == {
            "code": "unauthorized",
            "message": "missing or wrong X-API-Key header",
        }
        assert wrong.headers["www-authenticate"] == "X-API-Key"
        assert wrong.headers["content-type"] == "application/json"
        assert wrong.headers["content-length"] == str(len(wrong.content))
        assert wrong.headers["connection"] == "close"
        prefix = keyed.post("/search", files=upload(data), headers={"X-API-Key": "s3cre"})
        assert prefix.status_code == 401  # a prefix of the key is not the key
        key = {"X-API-Key": "s3cret"}
        right = keyed.post("/search", files=upload(data), headers=key)
        assert right.status_code == 200
        point_id = right.json()["results"][0]["id"]
        for path in (
            "/collections",
            "/probes",
            "/metrics",
            f"/points/{point_id}",
            f"/points/{point_id}/similar",
            f"/points/{point_id}/image",
        ):
            assert keyed.get(path).status_code == 401, path
            assert keyed.get(path, headers=key).status_code == 200, path
        for path in ("/health", "/ready", "/docs", "/openapi.json"):
            assert keyed.get(path).status_code == 200, path
        for params in ({"size": 32}, {}):  # a thumbnail, the file itself
            image = keyed.get(f"/points/{point_id}/image", params=params, headers=key)
            assert image.headers["cache-control"] == "private, max-age=3600"


def test_cors_is_off_unless_configured(embedder: ImageEmbedder, indexed: tuple[Path, Path]) -> None:
    origin = {"Origin": "https://photos.example"}
    with make_client(embedder, indexed[0]) as plain:
        assert "access-control-allow-origin" not in plain.get("/health", headers=origin).headers
    with make_client(embedder, indexed[0], cors_origins=["https://photos.example"]) as cors:
        headers = cors.get("/health", headers=origin).headers
        assert headers["access-control-allow-origin"] == "https://photos.example"


def test_start_up_refuses_a_collection_of_another_model(
    other_embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    with pytest.raises(CollectionMismatchError), make_client(other_embedder, indexed[0]):
        pass


def test_unreachable_qdrant_is_a_503(embedder: ImageEmbedder, tmp_path: Path) -> None:
    # A real qdrant-client against a closed port: no Qdrant server runs here.
    store = ServerStore.connect("http://127.0.0.1:9", timeout_s=1, retry_delays_s=(0.01,))
    settings = Settings(model=embedder.model_id, device="cpu", qdrant_url="http://127.0.0.1:9")
    with TestClient(create_app(settings, embedder=embedder, store=store)) as client:
        response = client.post("/search", files=upload(encode(photo(1))))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "store_unavailable"
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert client.get("/health").status_code == 200


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan and an async client, on the current event loop."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


def _seed_of(model_id: str) -> int:
    from tests.fakes import fake_model

    return fake_model(model_id).seed


def test_overload_is_a_503_with_retry_after(indexed: tuple[Path, Path]) -> None:
    held = HeldEmbedder()
    settings = Settings(
        model=held.model_id, device="cpu", data_dir=indexed[0], max_queue=2, batch_size=1
    )
    app = create_app(settings, embedder=held, store=EdgeStore(indexed[0]))
    data = photo_paths(indexed)[0].read_bytes()

    async def burst() -> tuple[httpx.Response, list[httpx.Response]]:
        async with serving(app) as http:
            queries = [
                asyncio.create_task(http.post("/search", files=upload(data))) for _ in range(10)
            ]
            try:
                # The model holds every query it takes: the first to answer was refused.
                done, _ = await asyncio.wait(queries, return_when=asyncio.FIRST_COMPLETED)
                first = next(iter(done)).result()
            finally:
                held.release.set()
            return first, await asyncio.gather(*queries)

    first, responses = asyncio.run(burst())
    assert first.status_code == 503
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"


class HeldEmbedder(FakeEmbedder):
    """The stand-in model whose forward passes wait for ``release`` (60 s at most), so that
    queries pile up behind the first whatever the machine's speed; ``entered`` is set when a
    forward pass begins."""

    def __init__(self) -> None:
        super().__init__(model_id="fake/dinov2", seed=_seed_of("fake/dinov2"))
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        self.sizes.append(len(pixels))
        self.entered.set()
        self.release.wait(60)
        return super().embed_each(pixels)

    async def wait_entered(self) -> None:
        """Until a query is in the model (60 s bounds a hang)."""
        assert await asyncio.to_thread(self.entered.wait, 60), "no query reached the model"


def test_concurrent_queries_are_batched_and_each_gets_its_answer(
    indexed: tuple[Path, Path],
) -> None:
    embedder = HeldEmbedder()
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=indexed[0])
    app = create_app(settings, embedder=embedder, store=EdgeStore(indexed[0]))
    paths = photo_paths(indexed)[:8]

    async def concurrent() -> tuple[list[httpx.Response], str]:
        async with serving(app) as http:
            queries = [
                asyncio.create_task(http.post("/search", files=upload(p.read_bytes())))
                for p in paths
            ]
            batcher = app.state.service.batcher
            for _ in range(12000):  # until all eight are in the model's hands or queue
                if embedder.sizes and embedder.sizes[0] + batcher.queue_depth == len(paths):
                    break
                await asyncio.sleep(0.01)
            embedder.release.set()
            responses = await asyncio.gather(*queries)
            return responses, (await http.get("/metrics")).text

    try:
        responses, metrics = asyncio.run(concurrent())
    finally:
        embedder.release.set()
    for path, response in zip(paths, responses, strict=True):
        assert response.status_code == 200
        assert response.json()["results"][0]["path"] == str(path)
    # Eight queries in two forward passes: the one that found the model idle (with any that
    # came with it), then every one that arrived while it ran.
    assert len(embedder.sizes) == 2
    assert sum(embedder.sizes) == len(paths)
    forward_passes = float(metrics.split("dinoseek_batch_size_count ")[1].split()[0])
    assert forward_passes == 2


class WatchedBody:
    """A multipart upload streamed to the app, which records whether the app read any of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield (
            b'--abc\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + self.data + b"\r\n--abc--\r\n"
        )


MULTIPART = {"content-type": "multipart/form-data; boundary=abc"}


def test_a_busy_service_answers_503_before_reading_the_upload(indexed: tuple[Path, Path]) -> None:
    held = HeldEmbedder()
    settings = Settings(model=held.model_id, device="cpu", data_dir=indexed[0], max_queue=1)
    app = create_app(settings, embedder=held, store=EdgeStore(indexed[0]))
    data = photo_paths(indexed)[0].read_bytes()
    watched = WatchedBody(data)

    async def two() -> tuple[httpx.Response, httpx.Response]:
        async with serving(app) as http:
            first = asyncio.create_task(http.post("/search", files=upload(data)))
            try:
                await held.wait_entered()  # the first one is in the model now
                second = await http.post("/search", content=watched, headers=MULTIPART)
            finally:
                held.release.set()
            return await first, second

    first, second = asyncio.run(two())
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "overloaded"
    assert not watched.read, "the upload was read before the 503"


def test_a_keyless_upload_is_refused_before_it_is_read(
    embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    settings = Settings(model=embedder.model_id, data_dir=indexed[0], api_key="s3cret")
    app = create_app(settings, embedder=embedder, store=EdgeStore(indexed[0]))
    watched = WatchedBody(photo_paths(indexed)[0].read_bytes())

    async def keyless() -> httpx.Response:
        async with serving(app) as http:
            return await http.post("/search", content=watched, headers=MULTIPART)

    response = asyncio.run(keyless())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert not watched.read, "the upload was read before the 401"


def test_a_declared_upload_over_the_limit_is_refused_before_it_is_read(
    embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    """413 from the Content-Length alone: not a byte of the body is received."""
    settings = Settings(model=embedder.model_id, data_dir=indexed[0], max_upload_bytes=10_000)
    app = create_app(settings, embedder=embedder, store=EdgeStore(indexed[0]))
    data = encode(photo(1, (800, 600)), "PNG")
    watched = WatchedBody(data)
    declared = {**MULTIPART, "content-length": str(len(data) + 200)}

    async def too_big() -> httpx.Response:
        async with serving(app) as http:
            return await http.post("/search", content=watched, headers=declared)

    response = asyncio.run(too_big())
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "upload_too_large",
        "message": f"{len(data) + 200:,} bytes is more than the limit of 10,000 bytes "
        "(DINOSEEK_MAX_UPLOAD_BYTES)",
    }
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["connection"] == "close"
    assert not watched.read, "the upload was read before the 413"


def test_a_query_on_another_collection_does_not_keep_it(
    embedder: ImageEmbedder, indexed: tuple[Path, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed[0], data)
    with EdgeStore(data) as store:  # a second collection, of the same model
        store.ensure_collection("other", store.collection_space("images"))
    with make_client(embedder, data) as client:
        assert len(client.get("/collections").json()["collections"]) == 2  # counted, not kept
        query = upload(photo_paths(indexed)[0].read_bytes())
        other = client.post("/search", files=query, params={"collection": "other"})
        assert other.status_code == 200
        with EdgeStore(data) as indexer:  # as `dinoseek index -c other` would
            indexer.acquire("other")
            with pytest.raises(StoreLockedError):
                indexer.acquire("images")  # the one it serves stays its own
        listed = client.get("/collections").json()["collections"]
        assert [c["name"] for c in listed] == ["images", "other"]


def test_ready_reports_a_collection_of_another_model(
    embedder: ImageEmbedder, other_embedder: ImageEmbedder, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with make_client(embedder, data) as client:
        assert client.get("/ready").json()["collection_exists"] is False
        with EdgeStore(data) as store:  # created meanwhile, with another model
            store.ensure_collection("images", other_embedder.space)
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "collection_mismatch"


def test_search_in_a_collection_of_another_model_answers_409(
    embedder: ImageEmbedder,
    other_embedder: ImageEmbedder,
    indexed: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed[0], data)
    with EdgeStore(data) as store:
        store.ensure_collection("other", other_embedder.space)
    query = photo_paths(indexed)[0].read_bytes()
    with make_client(embedder, data) as client:
        assert client.post("/search", files=upload(query)).status_code == 200
        refused = client.post("/search", files=upload(query), params={"collection": "other"})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "collection_mismatch"
        assert "fake/other" in error["message"]
        assert client.get("/points", params={"collection": "other"}).status_code == 409


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"content-length", b"123")], 123),
        ([(b"content-type", b"image/png"), (b"content-length", b"7")], 7),
        ([(b"content-length", b"-5")], 0),
        ([(b"content-length", b"many")], None),
        ([(b"x-content-length", b"9")], None),
    ],
)
def test_declared_length_reads_only_a_numeric_content_length(
    headers: list[tuple[bytes, bytes]], expected: int | None
) -> None:
    assert declared_length({"type": "http", "headers": headers}) == expected


def test_no_key_is_not_a_key_whatever_the_key(
    embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    """A request without the header is refused even for odd keys (nothing stands in for a
    missing key), and ``has_key`` agrees."""
    for key in ("XXXX", "x"):
        with make_client(embedder, indexed[0], api_key=key) as keyed:
            assert keyed.get("/collections").status_code == 401
            assert keyed.get("/collections", headers={"X-API-Key": ""}).status_code == 401
            assert keyed.get("/collections", headers={"X-API-Key": key}).status_code == 200
        assert not has_key(None, SecretStr(key))
        assert not has_key("", SecretStr(key))
        assert has_key(key, SecretStr(key))
    assert has_key(None, None)


def test_a_streamed_body_over_the_limit_is_refused_even_by_a_plain_asgi_app() -> None:
    """Below FastAPI (an app that lets the error through), the middleware answers itself."""
    received: list[bytes] = []

    async def reads_everything(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body"):
                break

    app = BodySizeLimit(reads_everything, max_bytes=10)
    chunks = [b"x" * 6, b"x" * 6, b"x" * 6]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": []}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {  # type: ignore[arg-type]
        "error": {
            "code": "upload_too_large",
            "message": "the upload is more than the limit of 10 bytes (DINOSEEK_MAX_UPLOAD_BYTES)",
        }
    }
    assert len(received) == 1  # cut off at the second chunk, never the third


def run_limited(app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[Any]:
    """Send ``chunks`` as a request body through ``BodySizeLimit(max_bytes=10)``."""
    sent: list[Any] = []
    pending = list(chunks)

    async def receive() -> dict[str, object]:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": headers}
    asyncio.run(BodySizeLimit(app, max_bytes=10)(scope, receive, send))  # type: ignore[arg-type]
    return sent


async def echo_size(scope: Any, receive: Any, send: Any) -> None:
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_the_limit_itself_is_allowed_declared_or_streamed() -> None:
    exactly = run_limited(echo_size, [b"x" * 4, b"x" * 6], [(b"content-length", b"10")])
    assert [m.get("status") for m in exactly] == [200, None]
    assert exactly[1]["body"] == b"10"
    streamed = run_limited(echo_size, [b"x" * 4, b"x" * 6], [])
    assert streamed[1]["body"] == b"10"
    over = run_limited(echo_size, [b"x" * 11], [(b"content-length", b"11")])
    assert over[0]["status"] == 413


def test_no_413_after_the_app_has_started_its_answer() -> None:
    """An app that answers before reading everything: the limit cuts the body off but sends
    no second response."""

    async def answers_first(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        while (await receive()).get("more_body"):
            pass

    sent = run_limited(answers_first, [b"x" * 6, b"x" * 6, b"x"], [])
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert sent[0]["status"] == 202


def test_admission_guards_exactly_the_routes_that_decode_images(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """Read from the routes' own mark, not a list kept by hand: every route that takes an
    upload or reads an image file is admitted, and nothing else."""
    from search_api.admission import AdmittedRoutes

    app = create_app(Settings(model=embedder.model_id, data_dir=tmp_path), embedder=embedder)
    admitted = AdmittedRoutes(app.routes)
    point = "6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"
    for method, path in [
        ("POST", "/search"),
        ("POST", "/search/batch"),
        ("POST", "/embed"),
        ("POST", "/embed/pca"),
        ("POST", "/classify"),
        ("GET", f"/points/{point}/image"),
        ("GET", f"/points/{point}/match/{point}"),
        ("POST", f"/points/{point}/match"),
        ("POST", "/points"),
    ]:
        assert admits(admitted, method, path), (method, path)
    for method, path in [
        ("GET", "/search"),
        ("GET", f"/points/{point}"),
        ("GET", f"/points/{point}/similar"),
        ("GET", "/points"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", f"/points/{point}/image"),
        ("GET", f"/points/{point}/image/extra"),
        ("DELETE", f"/points/{point}"),
        ("DELETE", "/collections/images"),
    ]:
        assert not admits(admitted, method, path), (method, path)
