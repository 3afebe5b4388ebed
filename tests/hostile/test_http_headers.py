"""What a client controls in the request's headers must not shape the answer: no redirect is
built from the ``Host`` it sent, and every kind of response, the API docs included, carries
the same security headers. The real app and a real embedded store, through its ASGI client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.indexing import indexed_tree

HOSTILE_HOST = "attacker.example"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder) -> Path:
    root = tmp_path_factory.mktemp("headers")
    return indexed_tree(root, embedder, per_class=2, classes=("cats", "dogs"))[0]


def make_client(embedder: ImageEmbedder, data_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data_dir, **overrides)  # type: ignore[arg-type]
    app = create_app(settings, embedder=embedder, store=EdgeStore(data_dir))
    return TestClient(app, follow_redirects=False)


@pytest.fixture
def client(embedder: ImageEmbedder, data_dir: Path) -> Iterator[TestClient]:
    with make_client(embedder, data_dir) as test_client:
        yield test_client


def test_no_redirect_is_built_from_the_clients_host(client: TestClient) -> None:
    point_id = client.get("/points", params={"limit": 1}).json()["points"][0]["id"]
    for method, path in (
        ("GET", "/points/"),
        ("GET", "/collections/"),
        ("GET", "/health/"),
        ("GET", f"/points/{point_id}/"),
        ("GET", f"/points/{point_id}/similar/"),
        ("GET", "/docs/"),
        ("GET", "/ui"),
        ("POST", "/search/"),
    ):
        answer = client.request(method, path, headers={"Host": HOSTILE_HOST})
        assert "location" not in answer.headers, (path, answer.headers)
        assert answer.status_code == 404, (path, answer.status_code)
        assert answer.json()["error"]["code"] == "not_found", path
        assert HOSTILE_HOST not in str(answer.headers), path


def assert_secured(answer_headers: object, what: str) -> None:
    headers = dict(answer_headers)  # type: ignore[call-overload]
    policy = headers.get("content-security-policy", "")
    assert "default-src 'self'" in policy, what
    assert "script-src 'self';" in policy, what
    assert "frame-ancestors 'none'" in policy, what
    assert "http" not in policy, what  # no other origin, no CDN
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("referrer-policy") == "no-referrer", what


def test_every_kind_of_response_carries_the_same_security_headers(
    embedder: ImageEmbedder, data_dir: Path
) -> None:
    with make_client(embedder, data_dir) as open_client:
        point_id = open_client.get("/points", params={"limit": 1}).json()["points"][0]["id"]
        for path in (
            "/",
            "/ui/app.js",
            "/docs",
            "/redoc",
            "/openapi.json",
            "/health",
            "/ready",
            "/metrics",
            "/points?limit=1",
            f"/points/{point_id}/image",
            f"/points/{point_id}/image?size=32",
            "/points/",
            "/nothing-here",
            "/points?limit=-1",
        ):
            answer = open_client.get(path)
            assert answer.status_code < 500, path
            assert_secured(answer.headers, f"GET {path} -> {answer.status_code}")
        too_large = open_client.post(
            "/search", content=b"x", headers={"content-length": str(1 << 40)}
        )
        assert too_large.status_code == 413
        assert_secured(too_large.headers, "413")
    with make_client(embedder, data_dir, api_key="k") as keyed:
        refused = keyed.get("/collections")
        assert refused.status_code == 401
        assert_secured(refused.headers, "401")
        for path in ("/docs", "/redoc", "/openapi.json"):
            answer = keyed.get(path)
            assert answer.status_code == 200, path
            assert_secured(answer.headers, f"keyed {path}")
