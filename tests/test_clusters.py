"""Browsing by clusters, in the core: the two-level spherical k-means of a collection's stored
vectors (``dinoseek.clusters``), on the real embedded store with vectors of known groups."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dinoseek.clusters import ClusterPlan, ClusterTree, cluster_collection
from dinoseek.errors import ClusterNotFoundError
from dinoseek.space import EmbeddingSpace
from dinoseek.store import EdgeStore, PointRecord, StoredPoint

DIM = 16


def grouped_vectors(groups: int, per_group: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``groups`` orthogonal directions (cosine ~0.95 to their own, ~0
    to the others), and each one's group."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM, dtype=np.float32)[:groups]
    labels = np.repeat(np.arange(groups), per_group)
    vectors = centres[labels] + 0.1 * rng.standard_normal((len(labels), DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


def store_vectors(store: EdgeStore, vectors: np.ndarray, labels: np.ndarray) -> list[str]:
    space = EmbeddingSpace("test/model", DIM, {}, (1.0, 0.0, 0.0, 0.0))
    store.ensure_collection("images", space)
    # Hashes, as the indexer's ids are (uuid5 of the content): id order is a random order.
    ids = [str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))) for i in range(len(vectors))]
    records = [
        PointRecord(i, v, {"group": int(g)}) for i, v, g in zip(ids, vectors, labels, strict=True)
    ]
    store.upsert("images", records)
    return ids


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    with EdgeStore(tmp_path / "data") as opened:
        yield opened


def all_members(tree: ClusterTree, cluster_id: int) -> list[str]:
    return tree.members(cluster_id, 0, tree.points + 1)


def test_three_groups_are_three_top_clusters_and_every_point_is_in_one(store: EdgeStore) -> None:
    vectors, groups = grouped_vectors(3, 40)
    ids = store_vectors(store, vectors, groups)
    group_of = dict(zip(ids, groups.tolist(), strict=True))
    tree = cluster_collection(store, "images", ClusterPlan(max_top=3))
    assert tree.points == 120
    assert tree.sizes == (11, 3)  # sqrt(120) leaves, capped at 3 on top
    assert len(tree.top) == 3
    tops = [tree.cluster(c) for c in tree.top]
    members = [all_members(tree, c.id) for c in tops]
    assert sorted(m for ms in members for m in ms) == sorted(ids)  # each point exactly once
    for cluster, found in zip(tops, members, strict=True):
        assert cluster.size == len(found) == 40
        assert cluster.parent is None
        assert len({group_of[m] for m in found}) == 1, "a top cluster mixes groups"
        assert set(cluster.representatives) <= set(found)
        assert len(cluster.representatives) == 6
        # The children split the parent's members, in order.
        children = [tree.cluster(child) for child in cluster.children]
        assert all(child.parent == cluster.id and not child.children for child in children)
        assert [m for child in children for m in all_members(tree, child.id)] == found
        assert sum(child.size for child in children) == cluster.size
        assert [c.size for c in children] == sorted((c.size for c in children), reverse=True)
    assert [c.size for c in tops] == sorted((c.size for c in tops), reverse=True)
    assert len(tree.clusters) == 3 + sum(len(c.children) for c in tops)


def test_a_leaf_lists_its_most_central_points_first(store: EdgeStore) -> None:
    vectors, groups = grouped_vectors(2, 30, seed=3)
    ids = store_vectors(store, vectors, groups)
    vector_of = dict(zip(ids, vectors, strict=True))
    tree = cluster_collection(store, "images")
    leaves = [c for c in tree.clusters if c.parent is not None]
    assert leaves
    for leaf in leaves:
        found = all_members(tree, leaf.id)
        centroid = np.sum([vector_of[m] for m in found], axis=0)
        # Not the k-means centroid exactly (that is the sample's), but close to it.
        similarity = [float(vector_of[m] @ centroid) for m in found]
        assert similarity[0] >= np.median(similarity)
        assert list(leaf.representatives) == found[: len(leaf.representatives)]


def test_paging_through_a_cluster(store: EdgeStore) -> None:
    vectors, groups = grouped_vectors(2, 25)
    store_vectors(store, vectors, groups)
    tree = cluster_collection(store, "images", ClusterPlan(max_top=2))
    first = tree.top[0]
    every = all_members(tree, first)
    pages = [tree.members(first, offset, 7) for offset in range(0, len(every), 7)]
    assert [m for page in pages for m in page] == every
    assert tree.members(first, len(every), 7) == []
    assert tree.members(first, 10**9, 10) == []
    with pytest.raises(ClusterNotFoundError, match="no cluster 99"):
        tree.members(99, 0, 1)
    with pytest.raises(ClusterNotFoundError, match="no cluster -1"):
        tree.cluster(-1)


def test_the_centroids_come_from_a_bounded_sample_and_every_point_is_assigned(
    store: EdgeStore,
) -> None:
    """A sample of 60 of 600 points, read 50 at a time: the work is bounded, and still every
    point gets a cluster."""
    vectors, groups = grouped_vectors(3, 200, seed=5)
    ids = store_vectors(store, vectors, groups)
    group_of = dict(zip(ids, groups.tolist(), strict=True))
    read: list[int] = []
    plan = ClusterPlan(max_sample=60, max_top=3, page=50)
    tree = cluster_collection(store, "images", plan, on_points=read.append)
    assert tree.sample == 60
    assert tree.sizes == (8, 3)  # of the sample: sqrt(60) leaves
    assert read == [50] * 12  # every point assigned, a page at a time
    assert tree.points == 600
    for top in tree.top:
        assert len({group_of[m] for m in all_members(tree, top)}) == 1


def test_the_same_collection_gives_the_same_clusters(store: EdgeStore) -> None:
    vectors, groups = grouped_vectors(4, 20, seed=9)
    store_vectors(store, vectors, groups)
    first = cluster_collection(store, "images")
    second = cluster_collection(store, "images")
    assert first.clusters == second.clusters
    assert np.array_equal(first.ids, second.ids)


def test_small_and_empty_collections(store: EdgeStore) -> None:
    store_vectors(store, np.zeros((0, DIM), dtype=np.float32), np.zeros(0, dtype=np.int64))
    empty = cluster_collection(store, "images")
    assert empty.clusters == ()
    assert empty.top == ()
    assert empty.points == 0
    vectors, groups = grouped_vectors(1, 2)
    ids = store_vectors(store, vectors, groups)
    tiny = cluster_collection(store, "images")
    assert tiny.sizes == (1,)  # one level: one cluster of both
    (only,) = tiny.clusters
    assert only.children == ()
    assert sorted(all_members(tiny, only.id)) == sorted(ids)


def test_points_without_a_vector_are_not_clustered(store: EdgeStore) -> None:
    """The store's scroll may give a point without its vector (none here does, but the code
    must not count one it skips)."""
    vectors, groups = grouped_vectors(2, 10)
    store_vectors(store, vectors, groups)
    original = store.scroll

    def holes(name: str, **options: object) -> Iterator[StoredPoint]:
        for index, point in enumerate(original(name, **options)):  # type: ignore[arg-type]
            yield point if index % 5 else StoredPoint(point.id, point.payload, None)

    store.scroll = holes  # type: ignore[method-assign]
    tree = cluster_collection(store, "images")
    assert tree.points == 16
