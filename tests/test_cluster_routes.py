"""Browsing by clusters over HTTP: the real app through its ASGI client, a real embedded store,
the stand-in model. The background computation is held at a gate where a test needs to see
the service while it runs (never a sleep)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dinoseek.clusters import ClusterTree, cluster_collection
from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.store import PointRecord
from search_api.clustering import ClusterCache, changed_enough
from tests.label_support import HANG_S, data, ids_by_name, indexed, make_client, wait_for

__all__ = ["data", "indexed"]  # fixtures


class Gate:
    """Holds each clustering until the test lets it go; counts them."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.runs = 0

    def cluster(self, *args: Any, **kwargs: Any) -> ClusterTree:
        self.runs += 1
        self.entered.release()
        assert self.go.acquire(timeout=HANG_S), "the test never let the clustering go"
        return cluster_collection(*args, **kwargs)


@pytest.fixture
def gated(embedder: ImageEmbedder, data: Path) -> Iterator[tuple[TestClient, Gate]]:
    gate = Gate()
    with make_client(embedder, data) as client:
        labelling = client.app.state.labelling  # type: ignore[attr-defined]
        labelling.clusters = ClusterCache(labelling.searcher, cluster=gate.cluster)
        yield client, gate
        gate.go.release(10)  # nothing left held at shutdown


def clusters_ready(client: TestClient) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        response = client.get("/clusters")
        return response.json() if response.status_code == 200 else None

    return wait_for(ready, "the clusters")  # type: ignore[no-any-return]


def test_the_first_clusters_answer_202_until_ready(gated: tuple[TestClient, Gate]) -> None:
    client, gate = gated
    pending = client.get("/clusters")
    assert pending.status_code == 202
    assert pending.headers["retry-after"] == "1"
    assert pending.json()["status"] == "computing"
    assert gate.entered.acquire(timeout=HANG_S)
    assert client.get("/clusters").status_code == 202  # still computing: not started again
    assert client.get("/clusters/0").status_code == 202
    gate.go.release()
    body = clusters_ready(client)
    assert gate.runs == 1
    assert body["points"] == 15
    assert body["recomputing"] is False
    assert body["levels"] == [4, 2]  # sqrt(15) leaves, cbrt(15) at the top


def test_every_point_is_in_exactly_one_top_cluster(gated: tuple[TestClient, Gate]) -> None:
    client, gate = gated
    client.get("/clusters")
    gate.go.release()
    body = clusters_ready(client)
    version = body["version"]
    members: list[str] = []
    for summary in body["clusters"]:
        page = client.get(f"/clusters/{summary['id']}", params={"version": version, "limit": 200})
        assert page.status_code == 200
        found = page.json()
        assert found["next"] is None
        ids = [m["id"] for m in found["members"]]
        assert len(ids) == summary["size"]
        assert set(summary["representatives"]) <= set(ids)
        assert [c["id"] for c in found["children"]] == summary["children"]
        assert sum(c["size"] for c in found["children"]) == summary["size"]
        members += ids
    assert sorted(members) == sorted(ids_by_name(client).values())
    # A page at a time, and a child's own members.
    first = body["clusters"][0]
    paged = client.get(f"/clusters/{first['id']}", params={"limit": 2, "offset": 2}).json()
    assert len(paged["members"]) == 2
    assert paged["next"] == 4 if first["size"] > 4 else paged["next"] is None
    child = client.get(f"/clusters/{first['children'][0]}").json()
    assert child["cluster"]["parent"] == first["id"]
    assert child["members"][0]["path"]  # members come with their payloads


def test_a_cluster_id_of_another_version_or_none_is_refused(
    gated: tuple[TestClient, Gate],
) -> None:
    client, gate = gated
    client.get("/clusters")
    gate.go.release()
    version = clusters_ready(client)["version"]
    stale = client.get("/clusters/0", params={"version": "0123456789ab"})
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "clusters_changed"
    assert version in stale.json()["error"]["message"]
    missing = client.get("/clusters/999", params={"version": version})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "cluster_not_found"
    assert client.get("/clusters/-1").status_code == 422
    assert client.get("/clusters", params={"collection": "nope"}).status_code == 404


def test_a_changed_collection_is_clustered_again_while_the_last_version_is_served(
    gated: tuple[TestClient, Gate], embedder: ImageEmbedder
) -> None:
    client, gate = gated
    client.get("/clusters")
    gate.go.release()
    first = clusters_ready(client)
    # Two new points (15 -> 17: over 5%), written by another route of the store.
    store = client.app.state.service.store  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    added = ["00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"]
    store.upsert("images", [PointRecord(i, v, {}) for i, v in zip(added, vectors, strict=True)])
    during = client.get("/clusters")
    assert during.status_code == 200
    assert during.json()["version"] == first["version"]  # the last one, meanwhile
    assert during.json()["recomputing"] is True
    assert gate.entered.acquire(timeout=HANG_S)  # the first run's
    assert gate.entered.acquire(timeout=HANG_S)  # the second run
    gate.go.release()

    def new_version() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get("/clusters").json()
        return body if body["version"] != first["version"] else None

    second = wait_for(new_version, "the second version")
    assert second["points"] == 17
    assert second["recomputing"] is False
    assert client.get("/clusters/0", params={"version": first["version"]}).status_code == 409
    assert gate.runs == 2


def test_labelling_a_whole_cluster(gated: tuple[TestClient, Gate]) -> None:
    client, gate = gated
    client.get("/clusters")
    gate.go.release()
    body = clusters_ready(client)
    top = body["clusters"][0]
    response = client.post(
        f"/clusters/{top['id']}/labels", json={"version": body["version"], "label": "group one"}
    )
    assert response.status_code == 200
    assert response.json()["labelled"] == top["size"]
    labelled = client.get("/points", params={"label": "group one", "limit": 200}).json()
    members = client.get(f"/clusters/{top['id']}", params={"limit": 200}).json()["members"]
    assert sorted(p["id"] for p in labelled["points"]) == sorted(m["id"] for m in members)
    assert all(m["payload"]["label_source"] == "api" for m in members)
    stale = client.post(f"/clusters/{top['id']}/labels", json={"version": "x", "label": "y"})
    assert stale.status_code == 409


@pytest.mark.parametrize(
    ("before", "now", "changed"),
    [(100, 100, False), (100, 104, False), (100, 105, True), (100, 95, True), (0, 1, True),
     (3, 4, True), (3, 3, False)],
)  # fmt: skip
def test_what_counts_as_changed_enough(before: int, now: int, changed: bool) -> None:
    assert changed_enough(before, now) is changed
