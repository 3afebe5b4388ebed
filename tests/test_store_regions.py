"""Region vectors in both stores (the embedded Qdrant Edge store and the server store on
qdrant-client's in-process mode): added to a collection that has only CLS vectors, written
with points or afterwards, searched by MaxSim, recorded with the collection."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.errors import RegionsNotIndexedError
from dinoseek.regions import RegionSpec
from dinoseek.store import EdgeStore, PointRecord, SearchQuery, ServerStore, VectorStore
from tests.helpers import unit_vectors
from tests.test_store_contract import DIM, make_space

SPEC = RegionSpec((16, 16))  # 29 windows
WINDOWS = SPEC.count

StoreFactory = Callable[[], VectorStore]


@pytest.fixture(params=["edge", "server"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the same store again on each call (to check persistence); closes all at the end."""
    opened: list[VectorStore] = []

    def factory() -> VectorStore:
        for previous in opened:
            previous.close()
        store: VectorStore
        if request.param == "edge":
            store = EdgeStore(tmp_path / "data")
        else:
            store = ServerStore(QdrantClient(path=str(tmp_path / "qdrant-local")))
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def ids(count: int) -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))) for i in range(count)]


def windows(count: int, seed: int) -> np.ndarray:
    return unit_vectors(count * WINDOWS, DIM, seed=seed).reshape(count, WINDOWS, DIM)


def test_a_collection_gains_regions_and_keeps_its_vectors(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.ensure_collection("c", make_space())
    points = ids(6)
    cls = unit_vectors(6, DIM, seed=1)
    store.upsert(
        "c", [PointRecord(p, v, {"n": i}) for i, (p, v) in enumerate(zip(points, cls, strict=True))]
    )
    assert store.collection_regions("c") is None
    store.ensure_regions("c", SPEC)
    store.ensure_regions("c", SPEC)  # idempotent
    assert store.collection_regions("c") == SPEC
    assert sorted(store.ids_without_regions("c")) == sorted(points)
    regions = windows(6, seed=2)
    store.set_regions("c", {points[0]: regions[0], points[1]: regions[1], ids(9)[8]: regions[2]})
    assert sorted(store.ids_without_regions("c")) == sorted(points[2:])

    store = store_factory()  # reopened: the layout, the vectors and the CLS vectors stay
    store.acquire("c")
    assert store.collection_regions("c") == SPEC
    assert store.collection_space("c") == make_space()
    got = store.get("c", points, with_vectors=True)
    assert [p.id for p in got] == points
    for point, vector in zip(got, cls, strict=True):
        assert point.vector is not None
        assert np.allclose(point.vector, vector, atol=1e-5)
    scrolled = {p.id: p.vector for p in store.scroll("c", with_vectors=True)}
    assert all(v is not None and v.shape == (DIM,) for v in scrolled.values())


def test_region_queries_score_each_point_by_its_best_window(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.ensure_collection("c", make_space())
    store.ensure_regions("c", SPEC)
    points = ids(8)
    regions = windows(8, seed=3)
    labels = ["a", "b"] * 4
    store.upsert(
        "c",
        [
            PointRecord(p, v, {"label": label}, r)
            for p, v, r, label in zip(
                points, unit_vectors(8, DIM, seed=4), regions, labels, strict=True
            )
        ],
    )
    store.optimize("c")
    target, window = 5, 7
    query = regions[target, window]
    (hits,) = store.search("c", [SearchQuery(query, top_k=3, regions=True)])
    assert hits[0].id == points[target]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].regions is not None
    assert hits[0].regions.shape == (WINDOWS, DIM)
    assert int(np.argmax(hits[0].regions @ query)) == window
    expected = np.max(regions @ query, axis=1)  # MaxSim of a one-vector query: the best window
    assert [h.id for h in hits] == [points[i] for i in np.argsort(-expected)[:3]]
    (filtered,) = store.search(
        "c", [SearchQuery(query, top_k=8, regions=True, filters={"label": "a"})]
    )
    assert {h.payload["label"] for h in filtered} == {"a"}
    assert len(filtered) == 4
    (plain,) = store.search("c", [SearchQuery(query, top_k=3)])
    assert all(h.regions is None for h in plain)


def test_another_layout_is_refused(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.ensure_collection("c", make_space())
    store.ensure_regions("c", SPEC)
    with pytest.raises(RegionsNotIndexedError, match="index into another collection"):
        store.ensure_regions("c", RegionSpec((16, 16), grids=(2, 3)))
    with pytest.raises(RegionsNotIndexedError):
        store.ensure_regions("c", RegionSpec((37, 37)))


def test_the_embedded_region_vector_has_no_graph_and_is_quantized(tmp_path: Path) -> None:
    """An HNSW graph over every image's windows (MaxSim as its distance) takes minutes to
    build for thousands of images: the region vector has none, and is quantized like the
    CLS vector."""
    with EdgeStore(tmp_path / "data") as store:
        store.ensure_collection("c", make_space())
        store.ensure_regions("c", SPEC)
    config = json.loads((tmp_path / "data" / "c" / "shard" / "edge_config.json").read_text())
    regions = config["vectors"]["regions"]
    assert regions["hnsw_config"]["m"] == 0
    assert regions["multivector_config"] == {"comparator": "max_sim"}
    assert regions["quantization_config"] == config["vectors"][""]["quantization_config"]
    recorded = json.loads((tmp_path / "data" / "c" / "collection.json").read_text())
    assert recorded["regions"] == {
        "vector": "regions",
        "grids": [2, 3, 4],
        "patch_grid": [16, 16],
        "pooling": "mean",
    }
    assert recorded["model_id"] == make_space().model_id


def test_a_renamed_collection_keeps_its_regions(store_factory: StoreFactory) -> None:
    """The embedded store moves the collection's directory; a Qdrant server, which cannot
    rename, copies every point: the region vectors and the layout go with them."""
    store = store_factory()
    store.ensure_collection("c", make_space())
    points = ids(5)
    regions = windows(5, seed=5)
    cls = unit_vectors(5, DIM, seed=6)
    store.upsert(
        "c", [PointRecord(p, v, {"n": i}) for i, (p, v) in enumerate(zip(points, cls, strict=True))]
    )
    store.ensure_regions("c", SPEC)
    # Regions added half-way: the first point has none yet.
    store.set_regions("c", dict(zip(points[1:], regions[1:], strict=True)))
    store.rename_collection("c", "d")
    store.acquire("d")
    assert store.collection_regions("d") == SPEC
    assert list(store.ids_without_regions("d")) == [points[0]]
    (hits,) = store.search("d", [SearchQuery(regions[3, 4], top_k=1, regions=True)])
    assert hits[0].id == points[3]
    assert hits[0].regions is not None
    assert np.allclose(hits[0].regions, regions[3], atol=1e-5)
    (got,) = store.get("d", [points[3]], with_vectors=True)
    assert got.vector is not None
    assert np.allclose(got.vector, cls[3], atol=1e-5)
