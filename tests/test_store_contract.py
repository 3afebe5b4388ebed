"""One contract, two stores: the embedded Qdrant Edge store and the server store.

The server store runs on qdrant-client's in-process mode (``QdrantClient(":memory:")``), which
speaks the same API as a Qdrant server; no server runs here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.errors import (
    CollectionMismatchError,
    CollectionNotAcquiredError,
    CollectionNotFoundError,
    InvalidPointIdError,
)
from dinoseek.space import EmbeddingSpace
from dinoseek.store import (
    UNSET,
    EdgeStore,
    PointRecord,
    SearchHit,
    SearchQuery,
    ServerStore,
    VectorStore,
    point_id_for_sha256,
    validate_point_id,
)
from tests.helpers import unit_vectors

DIM = 16
PREPROCESSING = {"crop": [224, 224]}


def make_space(dim: int = DIM, seed: int = 0, model_id: str = "test/model") -> EmbeddingSpace:
    fingerprint = tuple(float(v) for v in unit_vectors(1, dim, seed=100 + seed)[0])
    return EmbeddingSpace(model_id, dim, dict(PREPROCESSING), fingerprint)


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


@pytest.fixture
def store(store_factory: StoreFactory) -> VectorStore:
    return store_factory()


def records(count: int, *, seed: int = 0, label_every: int = 2) -> list[PointRecord]:
    vectors = unit_vectors(count, DIM, seed=seed)
    return [
        PointRecord(
            id=point_id_for_sha256(f"{seed:04d}{i:060d}"),
            vector=vectors[i],
            payload={
                "paths": [f"/photos/{i}.jpg"],
                "label": "cat" if i % label_every == 0 else "dog",
                "roots": ["/photos"],
                "index": i,
            },
        )
        for i in range(count)
    ]


def test_ensure_creates_and_lists(store: VectorStore) -> None:
    assert store.list_collections() == []
    store.ensure_collection("images", make_space())
    store.ensure_collection("images", make_space())  # idempotent
    assert store.list_collections() == ["images"]
    assert store.count("images") == 0
    info = store.collection_info("images")
    assert info.points == 0
    assert info.space is not None
    assert info.space.model_id == "test/model"
    assert info.space.dim == DIM


def test_mismatched_space_is_refused(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    with pytest.raises(CollectionMismatchError, match="768-d"):
        store.ensure_collection("images", make_space(dim=768))
    with pytest.raises(CollectionMismatchError, match="different model"):
        store.ensure_collection("images", make_space(seed=1, model_id="other/model"))
    # The same weights under another name (a local copy of a hub model) are accepted.
    store.ensure_collection("images", make_space(model_id="/models/local-copy"))


def test_unknown_collection(store: VectorStore) -> None:
    with pytest.raises(CollectionNotFoundError, match="dinoseek index"):
        store.acquire("nope")
    with pytest.raises(CollectionNotFoundError):
        store.collection_space("nope")
    with pytest.raises(CollectionNotFoundError):
        store.collection_info("nope")


def test_points_need_the_collection_acquired(store_factory: StoreFactory) -> None:
    first = store_factory()
    first.ensure_collection("images", make_space())  # created, and acquired
    first.upsert("images", records(3))
    reopened = store_factory()
    assert reopened.collection_info("images").points == 3  # no acquisition needed
    query = SearchQuery(vector=records(1)[0].vector)
    for read in (
        lambda: reopened.count("images"),
        lambda: reopened.search("images", [query]),
        lambda: reopened.get("images", [records(1)[0].id]),
        lambda: list(reopened.scroll("images")),
        lambda: reopened.upsert("images", records(1)),
    ):
        with pytest.raises(CollectionNotAcquiredError, match="acquire"):
            read()
    reopened.acquire("images")
    reopened.acquire("images")  # idempotent
    assert reopened.count("images") == 3
    reopened.release("images")
    with pytest.raises(CollectionNotAcquiredError):
        reopened.count("images")


def test_upsert_get_and_idempotence(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(10)
    store.upsert("images", points)
    store.upsert("images", points[:4])  # same ids again: no duplicates
    assert store.count("images") == 10
    got = store.get(
        "images",
        [points[3].id, "00000000-0000-0000-0000-000000000000", points[1].id],
        with_vectors=True,
    )
    assert [p.id for p in got] == [points[3].id, points[1].id]
    assert got[0].payload["paths"] == ["/photos/3.jpg"]
    assert got[0].vector is not None
    np.testing.assert_allclose(got[0].vector, points[3].vector, atol=1e-6)
    assert store.get("images", [points[0].id])[0].vector is None


def test_search_ranks_the_exact_vector_first(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(50)
    store.upsert("images", points)
    store.optimize("images")
    (hits,) = store.search("images", [SearchQuery(vector=points[7].vector, top_k=5)])
    assert len(hits) == 5
    assert hits[0].id == points[7].id
    assert hits[0].score >= 0.999
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].payload["index"] == 7


def test_search_filters_offset_threshold_and_exclusions(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(40)
    store.upsert("images", points)
    query = points[2].vector  # label "cat"

    def search(**options: object) -> list[SearchHit]:
        (hits,) = store.search("images", [SearchQuery(vector=query, **options)])  # type: ignore[arg-type]
        return hits

    dogs = search(top_k=40, filters={"label": "dog"})
    assert len(dogs) == 20
    assert {h.payload["label"] for h in dogs} == {"dog"}
    by_path = search(top_k=5, filters={"paths": "/photos/5.jpg"})
    assert [h.payload["index"] for h in by_path] == [5]
    full = search(top_k=10)
    paged = search(top_k=5, offset=5)
    assert [h.id for h in paged] == [h.id for h in full[5:10]]
    threshold = full[3].score - 1e-4
    above = search(top_k=40, score_threshold=threshold)
    assert all(h.score >= threshold - 1e-6 for h in above)
    assert len(above) >= 4
    excluded = search(top_k=3, exclude_ids=(points[2].id,))
    assert points[2].id not in {h.id for h in excluded}


def test_unset_matches_a_missing_or_null_field(store: VectorStore) -> None:
    """An unlabelled point: no ``label``, a null one, or one removed by a payload write."""
    store.ensure_collection("images", make_space())
    points = records(6)
    points[1].payload.pop("label")
    points[2].payload["label"] = None
    store.upsert("images", points)
    store.merge_payload("images", [points[3].id], {"label": None})
    unlabelled = {p.id for p in store.scroll("images", filters={"label": UNSET})}
    assert unlabelled == {points[1].id, points[2].id, points[3].id}
    (hits,) = store.search(
        "images", [SearchQuery(vector=points[0].vector, top_k=6, exclude={"label": UNSET})]
    )
    assert {h.id for h in hits} == {points[0].id, points[4].id, points[5].id}


def test_batched_search_matches_single_searches(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(30)
    store.upsert("images", points)
    queries = [
        SearchQuery(vector=points[0].vector, top_k=3),
        SearchQuery(vector=points[1].vector, top_k=5, filters={"label": "cat"}),
    ]
    batched = store.search("images", queries)
    singles = [store.search("images", [q])[0] for q in queries]
    assert [[h.id for h in hits] for hits in batched] == [[h.id for h in hits] for hits in singles]
    assert [len(hits) for hits in batched] == [3, 5]
    assert store.search("images", []) == []


def test_scroll_pages_through_everything(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(23)
    store.upsert("images", points)
    seen = list(store.scroll("images", batch_size=5, with_vectors=True))
    assert sorted(p.id for p in seen) == sorted(p.id for p in points)
    assert all(p.vector is not None and p.vector.shape == (DIM,) for p in seen)
    cats = list(store.scroll("images", filters={"label": "cat"}, batch_size=4))
    assert len(cats) == 12


def test_scroll_from_a_start_id(store: VectorStore) -> None:
    """From the first id at or after ``start``, stored or not (browsing from a random place)."""
    store.ensure_collection("images", make_space())
    store.upsert("images", records(12))
    ids = [p.id for p in store.scroll("images", batch_size=5)]
    assert ids == sorted(ids)
    assert [p.id for p in store.scroll("images", start=ids[7], batch_size=2)] == ids[7:]
    between = ids[3][:-1] + ("0" if ids[3][-1] != "0" else "1")  # not a stored id
    expected = [i for i in ids if i >= between]
    assert [p.id for p in store.scroll("images", start=between)] == expected
    assert list(store.scroll("images", start="ffffffff-ffff-ffff-ffff-ffffffffffff")) == []


def test_delete_and_set_payload(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(6)
    store.upsert("images", points)
    store.delete("images", [points[0].id, points[1].id, "00000000-0000-0000-0000-000000000000"])
    assert store.count("images") == 4
    store.set_payload("images", points[2].id, {"paths": ["/a.jpg", "/b.jpg"], "label": "fox"})
    stored = store.get("images", [points[2].id], with_vectors=True)[0]
    assert stored.payload == {"paths": ["/a.jpg", "/b.jpg"], "label": "fox"}
    assert stored.vector is not None
    np.testing.assert_allclose(stored.vector, points[2].vector, atol=1e-6)


def test_merge_and_delete_payload_fields(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    points = records(4)
    store.upsert("images", points)
    ids = [p.id for p in points]
    store.merge_payload("images", ids[:3], {"mark": "x", "n": 2})
    store.delete_payload_fields("images", ids[1:], ["n", "label", "missing"])
    stored = {p.id: p.payload for p in store.get("images", ids)}
    assert stored[ids[0]] == {**points[0].payload, "mark": "x", "n": 2}
    rest = {k: v for k, v in points[1].payload.items() if k != "label"}
    assert stored[ids[1]] == {**rest, "mark": "x"}
    assert stored[ids[3]] == {k: v for k, v in points[3].payload.items() if k != "label"}
    store.merge_payload("images", [], {"ignored": True})
    store.delete_payload_fields("images", ids, [])


def test_data_survives_reopening(store_factory: StoreFactory) -> None:
    first = store_factory()
    first.ensure_collection("images", make_space())
    first.upsert("images", records(12))
    reopened = store_factory()  # closes the first
    reopened.acquire("images")
    assert reopened.count("images") == 12
    assert reopened.collection_space("images").model_id == "test/model"


def test_delete_collection(store: VectorStore) -> None:
    store.ensure_collection("images", make_space())
    store.ensure_collection("other", make_space())
    store.upsert("images", records(3))
    store.delete_collection("images")
    assert store.list_collections() == ["other"]
    with pytest.raises(CollectionNotFoundError):
        store.delete_collection("images")


def test_point_ids_are_deterministic_uuids() -> None:
    sha = "ab" * 32
    assert point_id_for_sha256(sha) == point_id_for_sha256(sha.upper())
    assert validate_point_id(point_id_for_sha256(sha).upper()) == point_id_for_sha256(sha)
    canonical = point_id_for_sha256(sha)
    # Only the form the API's schema states: no braces, urn, missing hyphens or a newline.
    for text in (
        "not-a-uuid",
        f"{{{canonical}}}",
        f"urn:uuid:{canonical}",
        canonical.replace("-", ""),
        canonical + "\n",
    ):
        with pytest.raises(InvalidPointIdError):
            validate_point_id(text)


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65])
def test_invalid_collection_names_are_refused(store: VectorStore, name: str) -> None:
    with pytest.raises(ValueError, match="invalid collection name"):
        store.ensure_collection(name, make_space())


def test_probes_are_stored_per_collection(store: VectorStore) -> None:
    from dinoseek.errors import ProbeNotFoundError

    store.ensure_collection("images", make_space())
    store.ensure_collection("other", make_space())
    assert store.probes.list("images") == []
    store.probes.save("images", "default", b"\x00weights\xff", {"classes": ["a", "b"]})
    store.probes.save("images", "fine", b"more", {"classes": ["x", "y"], "trained_at": "t"})
    store.probes.save("images", "default", b"\x00replaced", {"classes": ["a", "b", "c"]})
    assert [p.name for p in store.probes.list("images")] == ["default", "fine"]
    assert store.probes.list("images")[0].info == {"classes": ["a", "b", "c"]}
    assert store.probes.load("images", "default") == b"\x00replaced"
    assert store.probes.list("other") == []
    with pytest.raises(ProbeNotFoundError, match="dinoseek probe train"):
        store.probes.load("other", "default")
    store.probes.delete("images", "fine")
    assert [p.name for p in store.probes.list("images")] == ["default"]
    with pytest.raises(ProbeNotFoundError):
        store.probes.delete("images", "fine")
    with pytest.raises(ValueError, match="invalid probe name"):
        store.probes.save("images", "../x", b"", {})
    with pytest.raises(CollectionNotFoundError):
        store.probes.save("nope", "default", b"", {})
    store.delete_collection("images")
    store.ensure_collection("images", make_space())
    assert store.probes.list("images") == []  # a collection's probes go with it


@pytest.mark.parametrize(("status", "data_refused"), [(400, True), (422, True), (500, False)])
def test_a_server_refusing_the_data_is_told_from_a_failing_server(
    status: int, data_refused: bool
) -> None:
    """The indexer isolates a point the store refuses, and ends the run when the store fails:
    a Qdrant server's 4xx is the request's data, its 5xx the server. (A stand-in for the
    server's answer: no Qdrant server runs here.)"""
    import httpx
    from qdrant_client.http.exceptions import UnexpectedResponse

    from dinoseek.errors import PointRefusedError, StoreError
    from dinoseek.store.server_calls import QdrantCalls

    def answer() -> None:
        body = b'{"status": {"error": "payload cannot be stored"}}'
        raise UnexpectedResponse(status, "refused", body, httpx.Headers())

    with pytest.raises(StoreError, match="payload cannot be stored") as caught:
        QdrantCalls("Qdrant server at test", retry_delays_s=())(answer)
    assert isinstance(caught.value, PointRefusedError) is data_refused
