"""Labelling and training over HTTP, and the write policy: the real app through its ASGI
client, a real embedded store, the stand-in model (these tests are about the service).

The client speaks from 127.0.0.1 unless a test says otherwise (``--allow-writes`` lets only
loopback clients write)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.probe.collection import train_collection_probe
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from indexer.catalog import LabelSource
from indexer.pipeline import IndexOptions, index_folders
from search_api.admission import Admission, AdmittedRoutes
from search_api.app import create_app
from search_api.training import ProbeTrainer
from search_api.writes import WRITE, WritePolicy, WriteRoutes, is_loopback_host
from tests.cli_runner import invoke
from tests.label_support import (  # the fixtures data and indexed too
    HANG_S,
    LOOPBACK,
    data,
    ids_by_name,
    indexed,
    make_client,
    wait_for,
)

__all__ = ["data", "indexed"]  # fixtures

KEY = "label-key"


@pytest.fixture
def client(embedder: ImageEmbedder, data: Path) -> Iterator[TestClient]:
    with make_client(embedder, data) as opened:
        yield opened


def ready_probe(client: TestClient, name: str = "default") -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/probes/{name}").json()
        return body if body["status"] != "training" else None

    return wait_for(done, f"probe {name} to finish training")  # type: ignore[no-any-return]


# -- the write policy ---------------------------------------------------------------------


WRITES = [
    ("post", "/points/labels", {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"], "label": "x"}),
    ("patch", "/points/6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11", {"label": "x"}),
    ("post", "/probes/default/train", {}),
    ("post", "/clusters/0/labels", {"version": "v", "label": "x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_without_a_key_writes_are_refused_unless_allowed(
    embedder: ImageEmbedder, data: Path, method: str, path: str, body: dict[str, Any]
) -> None:
    with make_client(embedder, data, allow_writes=False) as client:
        response = client.request(method, path, json=body)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "writes_not_allowed"
        assert "DINOSEEK_API_KEY" in response.json()["error"]["message"]
        assert client.get("/points").status_code == 200  # reads stay open
        assert client.get("/probes").status_code == 200
    # --allow-writes, but a client on another machine.
    with make_client(embedder, data, client=("192.0.2.7", 4000)) as client:
        response = client.request(method, path, json=body)
        assert response.status_code == 403
        assert "from this machine only" in response.json()["error"]["message"]


def test_with_a_key_a_write_needs_it(embedder: ImageEmbedder, data: Path) -> None:
    # --allow-writes changes nothing when a key is set: the key is what lets a write in.
    with make_client(embedder, data, api_key=KEY, client=("192.0.2.7", 4000)) as client:
        headers = {"X-API-Key": KEY}
        some_id = next(iter(ids_by_name_with(client, headers).values()))
        refused = client.patch(f"/points/{some_id}", json={"label": "owls"})
        assert refused.status_code == 401
        written = client.patch(f"/points/{some_id}", json={"label": "owls"}, headers=headers)
        assert written.status_code == 200
        assert written.json()["payload"]["label"] == "owls"


def ids_by_name_with(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    page = client.get("/points", params={"limit": 200}, headers=headers).json()
    return {Path(p["path"]).name: p["id"] for p in page["points"]}


def test_a_refused_write_is_answered_before_its_body_is_read(
    embedder: ImageEmbedder, data: Path
) -> None:
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data)
    app = create_app(settings, embedder=embedder, store=EdgeStore(data))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/points/labels", "raw_path": b"/points/labels",
        "root_path": "", "query_string": b"", "headers": [(b"content-length", b"50")],
        "client": LOOPBACK, "server": ("127.0.0.1", 8000), "scheme": "http",
        "http_version": "1.1",
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 403


def test_the_write_routes_are_the_routes_declared_writes(client: TestClient) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]
    declared = sorted(
        (method, route.path_format)
        for route in WriteRoutes(app.routes).routes
        for method in route.methods
    )
    assert declared == [
        ("DELETE", "/collections/{name}"),
        ("DELETE", "/points/{point_id}"),
        ("PATCH", "/points/{point_id}"),
        ("POST", "/clusters/{cluster_id}/labels"),
        ("POST", "/collections/{name}/rename"),
        ("POST", "/points"),
        ("POST", "/points/labels"),
        ("POST", "/probes/{name}/train"),
    ]
    schema = client.get("/openapi.json").json()
    marked = sorted(
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("x-dinoseek-write")
    )
    assert marked == declared


def test_a_route_declared_a_write_gets_the_policy_by_construction() -> None:
    """A write route of another module (issue 28's POST /points, say) needs no list."""
    app = FastAPI()

    @app.post("/points", openapi_extra=WRITE)
    async def add() -> dict[str, str]:
        return {"added": "yes"}

    @app.post("/read-only")
    async def read() -> dict[str, str]:
        return {"read": "yes"}

    app.add_middleware(WritePolicy, writes=WriteRoutes(app.routes), key_set=False,
                       allow_writes=False)  # fmt: skip
    with TestClient(app, client=LOOPBACK) as client:
        assert client.post("/points").status_code == 403
        assert client.post("/read-only").status_code == 200


def test_writes_take_places_in_the_admission(embedder: ImageEmbedder) -> None:
    """A write in flight holds a place: with one place, a second write gets 503."""
    app = FastAPI()
    entered, release = asyncio.Event(), asyncio.Event()

    @app.post("/points/labels", openapi_extra=WRITE)
    async def label() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"done": "yes"}

    writes = WriteRoutes(app.routes)
    admitted = Admission(app, admitted=AdmittedRoutes(app.routes), limit=1, max_bytes=10**6,
                         max_reading_bytes=10**6, unknown_length_bytes=100, min_upload_rate=0,
                         timeout_s=60, writes=writes)  # fmt: skip

    async def two() -> tuple[int, int]:
        import httpx

        transport = httpx.ASGITransport(app=admitted)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            first = asyncio.create_task(http.post("/points/labels", json={}))
            await entered.wait()  # the first write is in the route now
            second = await http.post("/points/labels", json={})
            release.set()
            return (await first).status_code, second.status_code

    assert asyncio.run(two()) == (200, 503)


def test_every_write_is_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    some_id = next(iter(ids_by_name(client).values()))
    with caplog.at_level(logging.INFO, logger="search_api"):
        client.patch(f"/points/{some_id}", json={"label": "owls"})
        client.post("/points/labels", json={"ids": [some_id], "label": None})
    lines = [r.getMessage() for r in caplog.records]
    assert f"write: PATCH /points/{some_id} from 127.0.0.1 answered 200" in lines
    assert "write: POST /points/labels from 127.0.0.1 answered 200" in lines
    assert "labelled 1 points of 'images' as 'owls'" in lines


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.1", False), ("example.invalid", False)],
)  # fmt: skip
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# -- labels -------------------------------------------------------------------------------


def test_labelling_points_marks_them_and_shows_in_the_unlabelled_filter(
    client: TestClient,
) -> None:
    ids = ids_by_name(client)
    cats = [ids[f"cats_{i}.jpg"] for i in range(3)]
    response = client.post("/points/labels", json={"ids": cats, "label": "tigers"})
    assert response.status_code == 200
    assert response.json() == {"collection": "images", "label": "tigers", "labelled": 3}
    payload = client.get(f"/points/{cats[0]}").json()["payload"]
    assert (payload["label"], payload["label_source"]) == ("tigers", "api")
    assert payload["path"].endswith("cats_0.jpg")  # the rest kept

    removed = client.patch(f"/points/{cats[1]}", json={"label": None})
    assert removed.status_code == 200
    assert removed.json()["payload"].get("label") is None
    assert removed.json()["payload"]["label_source"] == "api"
    unlabelled = client.get("/points", params={"unlabelled": "true"}).json()["points"]
    assert [p["id"] for p in unlabelled] == [cats[1]]
    assert unlabelled[0]["label"] is None
    both = client.get("/points", params={"unlabelled": "true", "label": "cats"}).json()
    assert both["points"] == []
    tigers = client.get("/points", params={"label": "tigers"}).json()["points"]
    assert sorted(p["id"] for p in tigers) == sorted([cats[0], cats[2]])


def test_a_label_write_with_an_unknown_id_writes_nothing(client: TestClient) -> None:
    ids = ids_by_name(client)
    unknown = "6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"
    response = client.post(
        "/points/labels", json={"ids": [ids["dogs_0.jpg"], unknown], "label": "wolves"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "point_not_found"
    assert unknown in response.json()["error"]["message"]
    assert client.get(f"/points/{ids['dogs_0.jpg']}").json()["payload"]["label"] == "dogs"
    assert client.patch(f"/points/{unknown}", json={"label": "x"}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"ids": [], "label": "x"},
        {"ids": ["not-a-uuid"], "label": "x"},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"] * 1001, "label": "x"},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"], "label": " padded"},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"], "label": ""},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"], "label": "a\nb"},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"], "label": 7},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"]},
        {"ids": ["6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"], "label": "x", "other": 1},
    ],
)
def test_bad_label_writes_are_422(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/points/labels", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_label_set_over_http_survives_the_next_index_run(
    embedder: ImageEmbedder, data: Path, indexed: tuple[Path, Path], tmp_path: Path
) -> None:
    with make_client(embedder, data) as client:
        some_id = ids_by_name(client)["birds_2.jpg"]
        assert client.patch(f"/points/{some_id}", json={"label": "owls"}).status_code == 200
    options = IndexOptions(
        roots=(indexed[1],), collection="images", failures_report=tmp_path / "f.jsonl",
        workers=0, progress="off", labels=LabelSource(from_folders=True),
    )  # fmt: skip
    with EdgeStore(data) as store:
        summary = index_folders(embedder, store, options)
        store.acquire("images")
        (point,) = store.get("images", [some_id])
    assert summary.labels_kept == 1
    assert point.payload["label"] == "owls"


# -- training -----------------------------------------------------------------------------


class Gate:
    """Holds a training until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.go.wait(HANG_S), "the test never let the training go"
        return train_collection_probe(*args, **kwargs)


def test_a_probe_trained_from_the_service_is_used_at_once(
    client: TestClient, indexed: tuple[Path, Path]
) -> None:
    assert client.get("/probes/default").status_code == 404
    started = client.post("/probes/default/train", json={"min_per_class": 2, "holdout": 0.4})
    assert started.status_code == 202
    assert started.json() == {"probe": "default", "collection": "images", "status": "training"}
    status = ready_probe(client)
    assert status["status"] == "ready", status
    assert status["error"] is None
    report = status["report"]
    assert report["classes"] == ["birds", "cats", "dogs"]
    assert report["holdout_size"] == 6  # 2 of each class's 5
    assert len(report["confusion"]) == 3
    assert [c["label"] for c in report["per_class"]] == ["birds", "cats", "dogs"]
    assert status["probe"]["accuracy"] == report["accuracy"]
    listed = client.get("/probes").json()
    assert listed["default"] == "default"
    image = sorted(indexed[1].rglob("cats_1.jpg"))[0]
    classified = client.post("/classify", files={"image": ("q.jpg", image.read_bytes())})
    assert classified.status_code == 200
    (best, *_) = classified.json()["labels"]
    assert (best["method"], best["probe"], best["label"]) == ("probe", "default", "cats")


def test_a_retrained_probe_replaces_the_served_one(client: TestClient) -> None:
    """Trained, relabelled, trained again within a second: the new classes serve at once."""
    ids = ids_by_name(client)
    client.post("/probes/default/train", json={"min_per_class": 2})
    assert ready_probe(client)["status"] == "ready"
    dogs = [i for name, i in ids.items() if name.startswith("dogs")]
    client.post("/points/labels", json={"ids": dogs, "label": "wolves"})
    client.post("/probes/default/train", json={"min_per_class": 2})
    assert ready_probe(client)["report"]["classes"] == ["birds", "cats", "wolves"]
    predicted = client.get("/predictions", params={"ids": dogs[:1]}).json()
    assert predicted["probe"] == "default"
    assert predicted["predictions"][0]["labels"][0]["label"] in ("birds", "cats", "wolves")
    assert client.get("/probes").json()["probes"][0]["classes"] == ["birds", "cats", "wolves"]


def test_one_training_at_a_time_per_probe(client: TestClient) -> None:
    labelling = client.app.state.labelling  # type: ignore[attr-defined]
    gate = Gate()
    labelling.trainer = ProbeTrainer(labelling.searcher, train=gate.train)
    assert client.post("/probes/default/train", json={"min_per_class": 2}).status_code == 202
    assert gate.entered.wait(HANG_S)
    again = client.post("/probes/default/train", json={"min_per_class": 2})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "probe_training"
    assert client.get("/probes/default").json()["status"] == "training"
    other = client.post("/probes/other/train", json={"min_per_class": 2})
    assert other.status_code == 202  # another name may train meanwhile
    third = client.post("/probes/third/train", json={"min_per_class": 2})
    assert third.status_code == 429  # two at once at most
    assert third.json()["error"]["code"] == "too_many_trainings"
    assert third.headers["retry-after"] == "1"
    gate.go.set()
    assert ready_probe(client)["status"] == "ready"
    assert ready_probe(client, "other")["status"] == "ready"


def test_a_training_that_cannot_work_fails_with_the_reason(client: TestClient) -> None:
    response = client.post("/probes/default/train", json={"min_per_class": 6})
    assert response.status_code == 202
    status = ready_probe(client)
    assert status["status"] == "failed"
    assert status["error"]["code"] == "probe_training_failed"
    assert "at least 2 classes with 6 or more labelled examples" in status["error"]["message"]
    assert status["probe"] is None
    assert client.get("/probes").json()["probes"] == []


@pytest.mark.parametrize(
    "body",
    [{"min_per_class": 1}, {"holdout": 0.9}, {"min_confidence": 2}, {"epochs": 3}, []],
)
def test_bad_training_requests_are_422(client: TestClient, body: Any) -> None:
    assert client.post("/probes/default/train", json=body).status_code == 422


def test_a_bad_probe_name_is_422(client: TestClient) -> None:
    assert client.post("/probes/..%2Fx/train", json={}).status_code in (404, 422)
    assert client.get("/probes/-x").status_code == 422


# -- what the probe says of the collection --------------------------------------------------


def test_predictions_and_the_points_to_label_next(client: TestClient) -> None:
    ids = ids_by_name(client)
    everything = list(ids.values())
    none_yet = client.get("/predictions", params={"ids": everything[:3]})
    assert none_yet.json() == {"collection": "images", "probe": None, "predictions": []}
    assert client.get("/probes/default/uncertain").status_code == 404

    client.post("/probes/default/train", json={"min_per_class": 2})
    assert ready_probe(client)["status"] == "ready"
    unlabelled = [ids[f"{kind}_{i}.jpg"] for kind in ("cats", "dogs", "birds") for i in (3, 4)]
    client.post("/points/labels", json={"ids": unlabelled, "label": None})

    predicted = client.get("/predictions", params={"ids": [*unlabelled, everything[0]]}).json()
    assert predicted["probe"] == "default"
    assert len(predicted["predictions"]) == 7
    assert all(len(p["labels"]) == 1 for p in predicted["predictions"])
    two = client.get("/predictions", params={"ids": unlabelled[:1], "top_k": 2}).json()
    assert len(two["predictions"][0]["labels"]) == 2

    following = client.get("/probes/default/uncertain", params={"limit": 4}).json()
    assert following["candidates"] == 6
    assert len(following["points"]) == 4
    assert {p["point"]["id"] for p in following["points"]} <= set(unlabelled)
    margins = [p["margin"] for p in following["points"]]
    assert margins == sorted(margins)
    assert all(p["point"]["label"] is None for p in following["points"])
    assert client.get("/predictions", params={"ids": ["bad"]}).status_code == 422
    too_many = [everything[0]] * 201
    assert client.get("/predictions", params={"ids": too_many}).status_code == 422


def test_serve_refuses_allow_writes_on_other_interfaces(tmp_path: Path) -> None:
    """Refused before the model or the store is opened."""
    for host in ("0.0.0.0", "192.0.2.1"):
        result = invoke("serve", "--allow-writes", "--host", host, "--data-dir", tmp_path / "data")
        assert result.exit_code == 2, result.output
        assert "--allow-writes" in result.output
        assert f"--host {host}" in result.output
        assert not (tmp_path / "data").exists()
