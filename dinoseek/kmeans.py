"""k-means on unit vectors (spherical: centroids renormalised, assignment by cosine), and
the hierarchical k-means of "Automatic Data Curation for Self-Supervised Learning" (each
level clusters the centroids of the level below).

Assignments are computed a block of rows at a time (``dinoseek.similarity.best_matches``),
so memory stays at one block of similarities. Seeded: the same input and seed give the same
clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dinoseek.similarity import best_matches

DEFAULT_ITERATIONS = 20
SUM_BLOCK_ROWS = 65_536  # rows copied to float32 at once while summing clusters


@dataclass(frozen=True)
class Clusters:
    """Centroids (k, dim) and each vector's cluster."""

    centroids: np.ndarray
    labels: np.ndarray


def kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    device: str = "cpu",
    sample: int | None = None,
) -> Clusters:
    """Spherical k-means of unit ``vectors`` into ``k`` clusters (fewer if there are fewer
    distinct vectors); initialised with k-means++ on a sample. With ``sample``, the
    centroids are fitted on that many random vectors and every vector is then assigned once
    (a million vectors cost one pass, not one per iteration)."""
    centroids = fit_centroids(
        vectors, k, iterations=iterations, seed=seed, device=device, sample=sample
    )
    labels, _ = best_matches(vectors, centroids, device=device)
    return Clusters(centroids, labels)


def fit_centroids(
    vectors: np.ndarray,
    k: int,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    device: str = "cpu",
    sample: int | None = None,
    plus_plus: bool = True,
) -> np.ndarray:
    """The centroids (k, dim) of a spherical k-means of ``vectors``, or of ``sample`` random
    ones of them; seeded by k-means++ or, without ``plus_plus``, by k distinct random
    vectors (cheaper for thousands of clusters)."""
    rng = np.random.default_rng(seed)
    if sample is not None and sample < vectors.shape[0]:
        vectors = vectors[np.sort(rng.choice(vectors.shape[0], sample, replace=False))]
    count = vectors.shape[0]
    k = max(1, min(k, count))
    if plus_plus:
        centroids = _plus_plus(vectors, k, rng)
    else:
        centroids = vectors[rng.choice(count, k, replace=False)].astype(np.float32)
    for _ in range(iterations):
        labels, _ = best_matches(vectors, centroids, device=device)
        updated = _cluster_sums(vectors, labels, k)
        sizes = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if len(empty):  # an empty cluster restarts at a random vector
            updated[empty] = vectors[rng.choice(count, len(empty), replace=False)]
        norms = np.linalg.norm(updated, axis=1, keepdims=True)
        updated = updated / np.where(norms > 0, norms, 1.0)
        if np.allclose(updated, centroids, atol=1e-6):
            break
        centroids = updated.astype(np.float32)
    return centroids.astype(np.float32)


def _cluster_sums(vectors: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The sum of each cluster's vectors, (k, dim) float32, whatever the vectors' dtype (by
    ``index_add_``: ``np.add.at`` is unbuffered, many times slower). Float32 copies are made
    a block of rows at a time."""
    import torch  # here: the search path imports this module's callers without torch

    sums = torch.zeros((k, vectors.shape[1]), dtype=torch.float32)
    index = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    for start in range(0, vectors.shape[0], SUM_BLOCK_ROWS):
        block = np.ascontiguousarray(vectors[start : start + SUM_BLOCK_ROWS], dtype=np.float32)
        sums.index_add_(0, index[start : start + SUM_BLOCK_ROWS], torch.from_numpy(block))
    return sums.numpy()


def _plus_plus(vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds, drawn from a sample of at most 50 k vectors."""
    sample = vectors[rng.choice(len(vectors), min(len(vectors), 50 * k), replace=False)]
    chosen = [int(rng.integers(len(sample)))]
    distance = 1.0 - sample @ sample[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(distance, 0.0, None)
        total = weights.sum()
        pick = (
            int(rng.choice(len(sample), p=weights / total))
            if total > 0
            else int(rng.integers(len(sample)))
        )
        chosen.append(pick)
        distance = np.minimum(distance, 1.0 - sample @ sample[pick])
    return sample[chosen].astype(np.float32)


@dataclass(frozen=True)
class Hierarchy:
    """The levels of a hierarchical k-means, finest first: ``levels[0].labels`` assigns the
    vectors, ``levels[i].labels`` assigns the centroids of level ``i - 1``."""

    levels: list[Clusters]

    def top_labels(self) -> np.ndarray:
        """Each vector's cluster at the top level."""
        labels = self.levels[0].labels
        for level in self.levels[1:]:
            labels = level.labels[labels]
        return labels


def hierarchical_kmeans(
    vectors: np.ndarray, sizes: Sequence[int], *, seed: int = 0, device: str = "cpu"
) -> Hierarchy:
    """k-means of the vectors into ``sizes[0]`` clusters, of those centroids into
    ``sizes[1]``, and so on."""
    levels = []
    points = vectors
    for depth, k in enumerate(sizes):
        clusters = kmeans(points, k, seed=seed + depth, device=device)
        levels.append(clusters)
        points = clusters.centroids
    return Hierarchy(levels)


def balanced_sample(hierarchy: Hierarchy, count: int, *, seed: int = 0) -> np.ndarray:
    """``count`` vector indices drawn as evenly as possible over the clusters of each level,
    from the top down: each cluster gets an equal share of its parent's, and a cluster too
    small for its share gives the rest to its siblings."""
    rng = np.random.default_rng(seed)
    members = _members(hierarchy)
    top = len(hierarchy.levels) - 1
    roots = list(range(len(hierarchy.levels[top].centroids)))
    chosen = _share(hierarchy, members, top, roots, count, rng)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _members(hierarchy: Hierarchy) -> list[dict[int, list[int]]]:
    """For each level, cluster -> its children (vector indices at level 0, else clusters of
    the level below)."""
    found = []
    for level in hierarchy.levels:
        children: dict[int, list[int]] = {}
        for child, parent in enumerate(level.labels.tolist()):
            children.setdefault(parent, []).append(child)
        found.append(children)
    return found


def _share(
    hierarchy: Hierarchy,
    members: list[dict[int, list[int]]],
    level: int,
    clusters: list[int],
    count: int,
    rng: np.random.Generator,
) -> list[int]:
    """``count`` vectors spread evenly over ``clusters`` of ``level``."""
    capacity = {c: _size(members, level, c) for c in clusters}
    quota = _even_split(capacity, count, rng)
    chosen: list[int] = []
    for cluster, take in quota.items():
        if take == 0:
            continue
        children = members[level].get(cluster, [])
        if level == 0:
            chosen += rng.choice(children, take, replace=False).tolist()
        else:
            chosen += _share(hierarchy, members, level - 1, children, take, rng)
    return chosen


def _size(members: list[dict[int, list[int]]], level: int, cluster: int) -> int:
    children = members[level].get(cluster, [])
    if level == 0:
        return len(children)
    return sum(_size(members, level - 1, child) for child in children)


def _even_split(capacity: dict[int, int], count: int, rng: np.random.Generator) -> dict[int, int]:
    """``count`` split as evenly as the capacities allow (water filling); what cannot be
    split evenly goes to clusters in a random order."""
    quota = dict.fromkeys(capacity, 0)
    remaining = min(count, sum(capacity.values()))
    open_clusters = [c for c in rng.permutation(list(capacity)).tolist() if capacity[c] > 0]
    while remaining > 0 and open_clusters:
        share = max(1, remaining // len(open_clusters))
        for cluster in list(open_clusters):
            give = min(share, capacity[cluster] - quota[cluster], remaining)
            quota[cluster] += give
            remaining -= give
            if quota[cluster] == capacity[cluster]:
                open_clusters.remove(cluster)
            if remaining == 0:
                break
    return quota
