"""A collection by clusters, to browse: a two-level spherical k-means of its stored vectors
(the hierarchical k-means ``dinoseek curate --balanced`` builds, ``dinoseek.kmeans``), fitted
on a sample and applied to every point.

The work is bounded whatever the collection's size:

- the centroids are fitted on the first ``sample`` points in id order (ids are hashes of the
  content, so these are a uniform sample): k-means costs about sample x leaves x dim x 20
  multiply-adds;
- then every point is assigned to its nearest leaf a page of vectors at a time, in one pass
  over the collection (points x leaves x dim multiply-adds); memory is one page of vectors
  plus 20 bytes per point (its id, its leaf, its similarity to it).

Every point is in exactly one leaf, and every leaf in exactly one top-level cluster. A
cluster's members are one slice of the points in member order (clusters in depth-first
order, the points of a leaf most central first), so paging through any cluster is a slice.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dinoseek.errors import ClusterNotFoundError
from dinoseek.kmeans import Hierarchy, hierarchical_kmeans
from dinoseek.similarity import best_matches
from dinoseek.store import VectorStore

MAX_SAMPLE = 20_000
MAX_LEAVES = 256
MAX_TOP = 16
REPRESENTATIVES = 6
PAGE = 2048
SEED = 0


@dataclass(frozen=True)
class ClusterPlan:
    """How much work a clustering may do: the points its centroids are fitted on, the most
    leaves and top-level clusters, the vectors read at once."""

    max_sample: int = MAX_SAMPLE
    max_leaves: int = MAX_LEAVES
    max_top: int = MAX_TOP
    page: int = PAGE
    representatives: int = REPRESENTATIVES
    seed: int = SEED

    def sizes(self, count: int) -> tuple[int, ...]:
        """Clusters per level, finest first: about sqrt(count) leaves and cbrt(count) top-level
        clusters, within the plan's bounds; one level when the two would not differ."""
        leaves = min(self.max_leaves, max(1, round(math.sqrt(count))))
        top = min(self.max_top, max(1, round(count ** (1 / 3))))
        return (leaves, top) if top < leaves else (leaves,)


@dataclass(frozen=True)
class Cluster:
    """A cluster: how many points it holds, the few that show it best, its child clusters
    (none for a leaf) and its parent (None at the top level)."""

    id: int
    size: int
    representatives: tuple[str, ...]
    children: tuple[int, ...]
    parent: int | None


@dataclass(frozen=True)
class ClusterTree:
    """The clusters of a collection (ids: top-level clusters first, then the leaves of each in
    turn), the points in member order, and what was done to find them."""

    clusters: tuple[Cluster, ...]
    top: tuple[int, ...]
    ids: np.ndarray  # (points, 16) uint8: each point's id as its 16 bytes, in member order
    spans: np.ndarray  # (clusters, 2): each cluster's slice of ``ids``
    sample: int
    sizes: tuple[int, ...]

    @property
    def points(self) -> int:
        """The points clustered."""
        return len(self.ids)

    def cluster(self, cluster_id: int) -> Cluster:
        """The cluster of this id (``ClusterNotFoundError`` for one this tree does not have)."""
        if not 0 <= cluster_id < len(self.clusters):
            raise ClusterNotFoundError(
                f"no cluster {cluster_id}: the ids of this version are 0 to "
                f"{len(self.clusters) - 1}"
            )
        return self.clusters[cluster_id]

    def members(self, cluster_id: int, offset: int, limit: int) -> list[str]:
        """Up to ``limit`` point ids of the cluster from ``offset`` (most central first within
        each leaf, the leaves largest first)."""
        self.cluster(cluster_id)
        start, stop = (int(v) for v in self.spans[cluster_id])
        first = min(stop, start + max(0, offset))
        return _texts(self.ids[first : min(stop, first + max(0, limit))])


def cluster_collection(
    store: VectorStore,
    collection: str,
    plan: ClusterPlan | None = None,
    *,
    device: str = "cpu",
    on_points: Callable[[int], None] | None = None,
) -> ClusterTree:
    """Cluster every point of an acquired collection (see the module doc for the work)."""
    plan = plan or ClusterPlan()
    sample = _sample(store, collection, plan)
    if not len(sample):
        return _empty_tree()
    sizes = plan.sizes(len(sample))
    hierarchy = hierarchical_kmeans(sample, sizes, seed=plan.seed, device=device)
    leaf_centroids = hierarchy.levels[0].centroids
    ids, leaves, similarity = _assign(store, collection, leaf_centroids, plan, device, on_points)
    return _tree(hierarchy, ids, leaves, similarity, len(sample), sizes, plan.representatives)


def _sample(store: VectorStore, collection: str, plan: ClusterPlan) -> np.ndarray:
    """The vectors of the first ``plan.max_sample`` points in id order."""
    dim = store.collection_space(collection).dim
    rows = np.empty((plan.max_sample, dim), dtype=np.float32)
    count = 0
    batch = min(plan.page, plan.max_sample)
    for point in store.scroll(collection, with_vectors=True, batch_size=batch):
        if point.vector is None:
            continue
        rows[count] = point.vector
        count += 1
        if count == plan.max_sample:
            break
    return rows[:count]


def _assign(
    store: VectorStore,
    collection: str,
    centroids: np.ndarray,
    plan: ClusterPlan,
    device: str,
    on_points: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every point's id (16 bytes), nearest leaf and similarity to it, a page at a time."""
    capacity = max(1, store.count(collection))
    ids = np.empty((capacity, 16), dtype=np.uint8)
    leaves = np.empty(capacity, dtype=np.int32)
    similarity = np.empty(capacity, dtype=np.float32)
    dim = centroids.shape[1]
    page = np.empty((plan.page, dim), dtype=np.float32)
    page_ids: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        nonlocal done, ids, leaves, similarity
        if not page_ids:
            return
        count = len(page_ids)
        if done + count > len(ids):  # points added while reading
            grown = max(2 * len(ids), done + count)
            ids = np.resize(ids, (grown, 16))
            leaves, similarity = np.resize(leaves, grown), np.resize(similarity, grown)
        best, scores = best_matches(page[:count], centroids, device=device)
        ids[done : done + count] = page_ids
        leaves[done : done + count] = best
        similarity[done : done + count] = scores
        done += count
        page_ids.clear()
        if on_points is not None:
            on_points(count)

    for point in store.scroll(collection, with_vectors=True, batch_size=plan.page):
        if point.vector is None:
            continue
        page[len(page_ids)] = point.vector
        page_ids.append(np.frombuffer(uuid.UUID(point.id).bytes, dtype=np.uint8))
        if len(page_ids) == plan.page:
            flush()
    flush()
    return ids[:done], leaves[:done], similarity[:done]


def _tree(
    hierarchy: Hierarchy,
    ids: np.ndarray,
    leaves: np.ndarray,
    similarity: np.ndarray,
    sample: int,
    sizes: tuple[int, ...],
    representatives: int,
) -> ClusterTree:
    """Number the clusters that have points (the top level by size, then the leaves of each
    by size) and order the points by leaf, most central first."""
    layout = _layout(hierarchy, np.bincount(leaves, minlength=len(hierarchy.levels[0].centroids)))
    leaf_order = [leaf for _, children in layout for leaf in children]
    rank = np.empty(len(hierarchy.levels[0].centroids), dtype=np.int64)
    rank[leaf_order] = np.arange(len(leaf_order))
    order = np.lexsort((-similarity, rank[leaves]))
    ordered = ids[order]
    bounds = np.searchsorted(rank[leaves][order], np.arange(len(leaf_order) + 1))
    leaf_span = {leaf: (int(bounds[i]), int(bounds[i + 1])) for i, leaf in enumerate(leaf_order)}
    two_levels = len(hierarchy.levels) > 1

    clusters: list[Cluster] = []
    spans: list[tuple[int, int]] = []
    leaf_clusters: list[tuple[int, int, int]] = []  # (id, leaf, parent id)
    next_id = len(layout)
    for top_id, (_, children) in enumerate(layout):
        child_spans = [leaf_span[leaf] for leaf in children]
        start, stop = child_spans[0][0], child_spans[-1][1]
        shown = _round_robin(ordered, child_spans, representatives)
        child_ids: tuple[int, ...] = ()
        if two_levels:
            child_ids = tuple(range(next_id, next_id + len(children)))
            leaf_clusters += [
                (i, leaf, top_id) for i, leaf in zip(child_ids, children, strict=True)
            ]
            next_id += len(children)
        clusters.append(Cluster(top_id, stop - start, shown, child_ids, None))
        spans.append((start, stop))
    for cluster_id, leaf, parent in leaf_clusters:
        start, stop = leaf_span[leaf]
        shown = tuple(_texts(ordered[start : min(stop, start + representatives)]))
        clusters.append(Cluster(cluster_id, stop - start, shown, (), parent))
        spans.append((start, stop))
    return ClusterTree(
        clusters=tuple(clusters),
        top=tuple(range(len(layout))),
        ids=ordered,
        spans=np.asarray(spans, dtype=np.int64).reshape(-1, 2),
        sample=sample,
        sizes=sizes,
    )


def _layout(hierarchy: Hierarchy, leaf_sizes: np.ndarray) -> list[tuple[int, list[int]]]:
    """The top-level clusters that have points, largest first, each with its leaves that have
    points, largest first (with one level, each leaf is its own top-level cluster)."""
    groups: dict[int, list[int]] = {}
    parents = hierarchy.levels[1].labels if len(hierarchy.levels) > 1 else None
    for leaf in np.flatnonzero(leaf_sizes).tolist():
        groups.setdefault(leaf if parents is None else int(parents[leaf]), []).append(leaf)
    by_size = [
        (top, sorted(children, key=lambda leaf: (-int(leaf_sizes[leaf]), leaf)))
        for top, children in groups.items()
    ]
    return sorted(by_size, key=lambda item: (-int(leaf_sizes[item[1]].sum()), item[0]))


def _round_robin(ids: np.ndarray, spans: list[tuple[int, int]], count: int) -> tuple[str, ...]:
    """The most central point of each child in turn (largest child first), then the second
    of each, until ``count``: a top-level cluster shows its variety."""
    chosen: list[bytes] = []
    depth = 0
    while len(chosen) < count and any(start + depth < stop for start, stop in spans):
        for start, stop in spans:
            if start + depth < stop and len(chosen) < count:
                chosen.append(ids[start + depth].tobytes())
        depth += 1
    return tuple(str(uuid.UUID(bytes=b)) for b in chosen)


def _texts(ids: np.ndarray) -> list[str]:
    """Ids of 16 bytes (rows of ``uint8``) as UUID strings."""
    return [str(uuid.UUID(bytes=row.tobytes())) for row in ids]


def _empty_tree() -> ClusterTree:
    return ClusterTree(
        clusters=(),
        top=(),
        ids=np.empty((0, 16), dtype=np.uint8),
        spans=np.empty((0, 2), dtype=np.int64),
        sample=0,
        sizes=(),
    )
