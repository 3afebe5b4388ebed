"""Retrieval-based curation, the second step of LVD-142M: keep the pool images that lie close
to a curated reference set.

- Sample-based: the ``per_image`` nearest pool points of every reference image (N = 4 in the
  paper), for a large reference set.
- Cluster-based: ``cluster_sample`` points of the pool cluster (spherical k-means) of every
  reference image, for a small one.

Deduplication comes first: pool points marked ``duplicate_role: duplicate`` by
``dinoseek dedup`` and pool points that near-duplicate a reference image are never
selected.

The reference images are compared with the pool as ``PoolSearch`` says: with every pool point
(``exact``), or through the pool's clusters (``clusters``, ``dinoseek.cluster_index``): a
reference image's near-duplicates among the clusters within a margin of its nearest, its
nearest points among its ``neighbour_probes`` nearest clusters (32, or an eighth of the
clusters when that is more). A reference image whose clusters hold fewer than N eligible
points is compared with the whole pool, so each gets N (or every eligible point when the pool
has fewer).

Balanced sampling from a hierarchical k-means ("Automatic Data Curation for Self-Supervised
Learning") needs no reference set: ``balanced``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinoseek.cluster_index import (
    ClusteredBase,
    cluster_base,
    nearest_in_clusters,
    pairs_in_clusters,
    probe,
)
from dinoseek.collection_vectors import CollectionVectors
from dinoseek.dedup import DUPLICATE, ROLE
from dinoseek.errors import ConfigError
from dinoseek.kmeans import balanced_sample, hierarchical_kmeans, kmeans
from dinoseek.pair_search import PairMethod
from dinoseek.settings import validate_collection_name
from dinoseek.similarity import best_matches, rounded, top_matches
from dinoseek.store import PointRecord, VectorStore


@dataclass(frozen=True)
class Selected:
    """A selected pool point (its row in the pool), the reference image that selected it
    (None for balanced sampling) and the similarity between them."""

    index: int
    reference: int | None
    score: float | None


@dataclass(frozen=True)
class Curation:
    """The selection, and the count after each step."""

    selected: list[Selected]
    steps: dict[str, int] = field(default_factory=dict)


@dataclass
class PoolSearch:
    """How reference images are compared with the pool: ``method`` (exact or clusters), and
    the pool's clusters once built; ``comparisons`` counts the similarities computed."""

    method: PairMethod
    device: str = "cpu"
    clustered: ClusteredBase | None = None
    comparisons: int = 0

    def clusters_of(self, pool: np.ndarray) -> ClusteredBase:
        """The pool's clusters (built on the first call)."""
        assert self.method.parameters is not None, "only the clusters method has clusters"
        if self.clustered is None:
            self.clustered = cluster_base(pool, self.method.parameters, device=self.device)
        return self.clustered


def exact_search(device: str = "cpu") -> PoolSearch:
    """Every reference image compared with every pool point."""
    return PoolSearch(PairMethod("exact", "asked for"), device)


def eligible_rows(
    pool: CollectionVectors,
    reference: np.ndarray | None,
    near_duplicate: float,
    *,
    search: PoolSearch | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """The pool rows that may be selected: not a marked duplicate, not a near-duplicate of a
    reference image; with the count each step removed."""
    search = search or exact_search()
    rows = np.array(
        [i for i, role in enumerate(pool.payloads.values(ROLE)) if role != DUPLICATE],
        dtype=np.int64,
    )
    steps = {"pool": len(pool.ids), "marked_duplicates": len(pool.ids) - len(rows)}
    if reference is not None and len(rows):
        near = _near_reference(pool.vectors, rows, reference, near_duplicate, search)
        steps["near_duplicates_of_reference"] = int(near.sum())
        rows = rows[~near]
    steps["eligible"] = len(rows)
    return rows, steps


def _near_reference(
    vectors: np.ndarray,
    rows: np.ndarray,
    reference: np.ndarray,
    threshold: float,
    search: PoolSearch,
) -> np.ndarray:
    """Which of ``rows`` are at or above ``threshold`` to some reference image (a mask)."""
    if search.method.parameters is None:
        _, scores = best_matches(vectors[rows], reference, device=search.device)
        search.comparisons += len(rows) * len(reference)
        return rounded(scores) >= threshold
    clustered = search.clusters_of(vectors)
    query_probes = probe(reference, clustered.centroids, search.method.parameters,
                         device=search.device)  # fmt: skip
    found = pairs_in_clusters(reference, query_probes, vectors, clustered, threshold,
                              device=search.device)  # fmt: skip
    search.comparisons += found.comparisons
    return np.isin(rows, found.pairs.columns)


def by_neighbours(
    pool: CollectionVectors,
    rows: np.ndarray,
    reference: np.ndarray,
    per_image: int,
    *,
    search: PoolSearch | None = None,
) -> list[Selected]:
    """The ``per_image`` nearest eligible pool points of each reference image; a point
    chosen by several keeps its most similar reference."""
    search = search or exact_search()
    best: dict[int, Selected] = {}
    if not len(rows):
        return []
    index, scores = nearest_rows(pool.vectors, rows, reference, per_image, search)
    for ref in range(reference.shape[0]):
        for row, score in zip(index[ref].tolist(), scores[ref].tolist(), strict=True):
            if row not in best or (best[row].score or -2.0) < score:
                best[row] = Selected(row, ref, round(float(score), 6))
    return sorted(best.values(), key=lambda s: s.index)


def nearest_rows(
    vectors: np.ndarray,
    rows: np.ndarray,
    reference: np.ndarray,
    per_image: int,
    search: PoolSearch,
) -> tuple[np.ndarray, np.ndarray]:
    """For each reference image, its ``per_image`` nearest of ``rows`` (pool rows, best
    first; fewer only when ``rows`` has fewer) and their similarities."""
    k = min(per_image, len(rows))
    if search.method.parameters is None:
        index, scores = top_matches(reference, vectors[rows], k, device=search.device)
        search.comparisons += len(reference) * len(rows)
        return rows[index], scores
    allowed = np.zeros(len(vectors), dtype=bool)
    allowed[rows] = True
    found, scores, work = nearest_in_clusters(reference, vectors, search.clusters_of(vectors), k,
                                              allowed=allowed, device=search.device)  # fmt: skip
    search.comparisons += work
    short = np.flatnonzero((found < 0).any(axis=1))
    if len(short):  # too few eligible points in its clusters: the whole pool
        index, exact = top_matches(reference[short], vectors[rows], k, device=search.device)
        search.comparisons += len(short) * len(rows)
        found[short], scores[short] = rows[index], exact
    return found, scores


def by_clusters(
    pool: CollectionVectors,
    rows: np.ndarray,
    reference: np.ndarray,
    per_image: int,
    clusters: int,
    *,
    seed: int = 0,
    device: str = "cpu",
) -> list[Selected]:
    """``per_image`` random eligible points of the pool cluster of each reference image (a
    cluster smaller than that gives all its points). The k-means is fitted on at most
    ``KMEANS_SAMPLE_PER_CLUSTER`` points per cluster, then every eligible point assigned."""
    if not len(rows):
        return []
    sample = min(len(rows), KMEANS_SAMPLE_PER_CLUSTER * clusters)
    fitted = kmeans(pool.vectors[rows], clusters, seed=seed, device=device, sample=sample)
    home, _ = best_matches(reference, fitted.centroids, device=device)
    rng = np.random.default_rng(seed)
    chosen: dict[int, Selected] = {}
    for ref, cluster in enumerate(home.tolist()):
        members = np.flatnonzero(fitted.labels == cluster)
        picked = rng.choice(members, min(per_image, len(members)), replace=False)
        for column in picked.tolist():
            row = int(rows[column])
            score = round(float(pool.vectors[row] @ reference[ref]), 6)
            if row not in chosen or (chosen[row].score or -2.0) < score:
                chosen[row] = Selected(row, ref, score)
    return sorted(chosen.values(), key=lambda s: s.index)


KMEANS_SAMPLE_PER_CLUSTER = 50


def derived_clusters(count: int) -> int:
    """The default k of cluster-based retrieval: about the square root of the pool."""
    return max(1, round(math.sqrt(count)))


def level_sizes(count: int, levels: int) -> list[int]:
    """Cluster counts of a hierarchy of ``levels`` over ``count`` points, finest first,
    evenly spaced on a log scale (count ** (L / (L + 1)), ..., count ** (1 / (L + 1)))."""
    return [max(2, round(math.pow(count, (levels - i) / (levels + 1)))) for i in range(levels)]


@dataclass(frozen=True)
class Balance:
    """The balanced sample, and the top-level cluster shares before and after."""

    rows: np.ndarray
    shares_before: list[float]
    shares_after: list[float]


def balanced(
    pool: CollectionVectors,
    rows: np.ndarray,
    count: int,
    sizes: list[int],
    *,
    seed: int = 0,
    device: str = "cpu",
) -> Balance:
    """``count`` eligible points sampled evenly over a hierarchical k-means of the pool."""
    if not len(rows):
        raise ConfigError("no pool image is eligible: the pool is empty or all duplicates")
    hierarchy = hierarchical_kmeans(pool.vectors[rows], sizes, seed=seed, device=device)
    picked = balanced_sample(hierarchy, count, seed=seed)
    top = hierarchy.top_labels()
    clusters = int(top.max()) + 1 if len(top) else 0
    before = np.bincount(top, minlength=clusters) / max(1, len(top))
    after = np.bincount(top[picked], minlength=clusters) / max(1, len(picked))
    return Balance(rows[picked], before.tolist(), after.tolist())


COPY_BATCH = 512


def check_new_collection(store: VectorStore, target: str) -> None:
    """``ConfigError`` unless ``target`` is a valid name of no collection yet (a command checks
    this before its work, and again when it creates the collection)."""
    try:
        validate_collection_name(target)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if target in store.list_collections():
        raise ConfigError(
            f"collection {target!r} already exists; choose another --into name, or delete it "
            f"first (`dinoseek collection delete {target}`)"
        )


def copy_selection(
    store: VectorStore,
    pool: CollectionVectors,
    source: str,
    target: str,
    selected: list[Selected],
    describe: Callable[[Selected], dict[str, Any]],
) -> int:
    """Create ``target`` with ``source``'s embedding space and copy the selected points into
    it, vectors and payloads as they are (no re-embedding), plus ``describe``'s fields."""
    check_new_collection(store, target)
    store.ensure_collection(target, store.collection_space(source))
    store.acquire(target)
    for start in range(0, len(selected), COPY_BATCH):
        batch = selected[start : start + COPY_BATCH]
        points = store.get(source, [pool.ids[s.index] for s in batch], with_vectors=True)
        by_id = {p.id: p for p in points}
        records = [
            PointRecord(
                id=pool.ids[s.index],
                vector=by_id[pool.ids[s.index]].vector,  # type: ignore[arg-type]
                payload={**by_id[pool.ids[s.index]].payload, **describe(s)},
            )
            for s in batch
            if pool.ids[s.index] in by_id
        ]
        store.upsert(target, records)
    return store.count(target)
