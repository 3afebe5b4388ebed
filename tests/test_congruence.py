"""The same calls on both stores give the same answers.

One side is the embedded Qdrant Edge store; the other is the server store on qdrant-client's
in-process mode, which speaks a Qdrant server's API (no server runs here). Both get the same
points; every read is compared. Collections this small are searched exactly by both (no HNSW
index yet), so ranks and scores must agree, not just overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.search import Searcher
from dinoseek.search_types import Filters, LabelRequest, NeighbourQuery
from dinoseek.store import EdgeStore, SearchHit, SearchQuery, ServerStore, VectorStore
from tests.helpers import encode, photo, unit_vectors
from tests.test_store_contract import DIM, make_space, records


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[VectorStore, VectorStore]]:
    edge = EdgeStore(tmp_path / "edge")
    server = ServerStore(QdrantClient(location=":memory:"))
    try:
        for store in (edge, server):
            store.ensure_collection("images", make_space())
            store.upsert("images", records(60, label_every=3))
        yield edge, server
    finally:
        edge.close()
        server.close()


def same(a: list[list[SearchHit]], b: list[list[SearchHit]]) -> None:
    """The same points in the same order, with the same payloads and scores (float noise aside:
    the engines sum in different orders)."""
    assert [[(h.id, h.payload) for h in hits] for hits in a] == [
        [(h.id, h.payload) for h in hits] for hits in b
    ]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose([h.score for h in x], [h.score for h in y], atol=1e-5)


QUERIES = {
    "plain": {"top_k": 10},
    "label": {"top_k": 30, "filters": {"label": "cat"}},
    "path": {"top_k": 5, "filters": {"paths": "/photos/17.jpg"}},
    "root": {"top_k": 8, "filters": {"roots": "/photos"}},
    "two filters": {"top_k": 30, "filters": {"label": "dog", "roots": "/photos"}},
    "nothing matches": {"top_k": 5, "filters": {"label": "owl"}},
    "offset": {"top_k": 7, "offset": 11},
    "threshold": {"top_k": 60, "score_threshold": 0.05},
    "exclusion": {"top_k": 6, "exclude_ids": (records(60)[4].id,)},
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_searches_agree(stores: tuple[VectorStore, VectorStore], name: str) -> None:
    edge, server = stores
    vectors = unit_vectors(3, DIM, seed=11)
    queries = [SearchQuery(vector=v, **QUERIES[name]) for v in vectors]  # type: ignore[arg-type]
    on_edge, on_server = edge.search("images", queries), server.search("images", queries)
    same(on_edge, on_server)
    if name != "nothing matches":
        assert all(on_edge), "a query that should find something found nothing"


def test_reads_and_writes_agree(stores: tuple[VectorStore, VectorStore]) -> None:
    edge, server = stores
    points = records(60, label_every=3)
    for store in stores:
        store.set_payload("images", points[2].id, {"paths": ["/x.jpg"], "label": "fox", "index": 2})
        store.delete("images", [points[0].id, points[1].id])
    assert edge.count("images") == server.count("images") == 58
    assert edge.collection_info("images").points == server.collection_info("images").points
    ids = [points[i].id for i in (2, 0, 9)]
    got = edge.get("images", ids, with_vectors=True), server.get("images", ids, with_vectors=True)
    assert [(p.id, p.payload) for p in got[0]] == [(p.id, p.payload) for p in got[1]]
    for a, b in zip(*got, strict=True):
        assert a.vector is not None
        assert b.vector is not None
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-6)

    def scrolled(store: VectorStore, **options: object) -> list[tuple[str, object]]:
        return sorted((p.id, p.payload) for p in store.scroll("images", **options))  # type: ignore[arg-type]

    assert scrolled(edge) == scrolled(server)
    assert scrolled(edge, filters={"label": "fox"}) == scrolled(server, filters={"label": "fox"})
    assert edge.collection_space("images") == server.collection_space("images")


def test_probes_agree(stores: tuple[VectorStore, VectorStore]) -> None:
    for store in stores:
        store.probes.save("images", "default", b"\x00bytes", {"classes": ["a", "b"]})
        store.probes.save("images", "other", b"more", {"classes": ["c", "d"]})
        store.probes.delete("images", "other")
    edge, server = stores
    assert edge.probes.list("images") == server.probes.list("images")
    assert edge.probes.load("images", "default") == server.probes.load("images", "default")


def test_the_search_path_agrees(tmp_path: Path, embedder: ImageEmbedder) -> None:
    """Images in, neighbours and labels out: the Searcher over either store."""
    images = [encode(photo(seed, (200, 150), kind)) for seed, kind in
              enumerate(["circles", "stripes", "squares"] * 4)]  # fmt: skip
    edge = EdgeStore(tmp_path / "edge")
    server = ServerStore(QdrantClient(location=":memory:"))
    results = []
    try:
        for store in (edge, server):
            searcher = Searcher(store, embedder, max_image_pixels=10**8)
            store.ensure_collection("images", embedder.space)
            vectors = embedder.embed_pixels(
                np.stack([searcher.prepare(data, "x").pixels for data in images])
            )
            store.upsert(
                "images",
                [
                    _point(i, vector, ["circles", "stripes", "squares"][i % 3])
                    for i, vector in enumerate(vectors)
                ],
            )
            query = NeighbourQuery(top_k=5, filters=Filters(root="/photos"))
            found = searcher.search_images(
                "images", [(d, "q.jpg") for d in images[:3]], query, LabelRequest(with_labels=True)
            )
            similar = searcher.similar("images", _point(0, vectors[0], "").id, NeighbourQuery())
            results.append((found, similar))
    finally:
        edge.close()
        server.close()
    (on_edge, similar_edge), (on_server, similar_server) = results
    assert [n.id for n in similar_edge] == [n.id for n in similar_server]
    for a, b in zip(on_edge, on_server, strict=True):
        assert not isinstance(a, Exception)
        assert not isinstance(b, Exception)
        assert [(n.id, n.label, n.path) for n in a.neighbours] == [
            (n.id, n.label, n.path) for n in b.neighbours
        ]
        np.testing.assert_allclose(
            [n.score for n in a.neighbours], [n.score for n in b.neighbours], atol=1e-5
        )
        assert a.labels is not None
        assert b.labels is not None
        assert [x.label for x in a.labels] == [x.label for x in b.labels]
        np.testing.assert_allclose(
            [x.probability for x in a.labels], [x.probability for x in b.labels], atol=1e-4
        )


def _point(i: int, vector: np.ndarray, label: str) -> object:
    from dinoseek.store import PointRecord, point_id_for_sha256

    return PointRecord(
        point_id_for_sha256(f"{i:064x}"),
        vector,
        {"paths": [f"/photos/{i}.jpg"], "roots": ["/photos"], "label": label, "index": i},
    )
