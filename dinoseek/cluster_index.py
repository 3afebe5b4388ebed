"""Close pairs and nearest neighbours without comparing everything with everything.

The base vectors are clustered (spherical k-means fitted on a sample, then every vector
assigned once), and a query is compared only with the members of the clusters it
**probes**: its nearest centroid, and every further one at most ``margin`` less similar to it
than the nearest (at least ``min_probes``, at most ``max_probes`` clusters). This is
SemDeDup's clustering with a margin instead of one cluster per point.

Two unit vectors at cosine similarity t lie sqrt(2 (1 - t)) apart, so their similarities to
any centroid differ by at most that, and by about that over sqrt(dim) when the difference
points nowhere in particular; the margin for a threshold is ``MARGIN_SPREADS`` times that
typical difference. A pair is missed only when neither point probes the other's cluster:
how often is measured against exact all-pairs (bench/curation.py), not bounded.
Every candidate is decided exactly (``similarity.exact_scores``): a pair found is a pair the
exact path finds, only the recall depends on the clustering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from dinoseek.kmeans import fit_centroids
from dinoseek.similarity import (
    BLOCK_ELEMENTS,
    BLOCK_ELEMENTS_GPU,
    Pairs,
    as_tensor,
    candidate_cut,
    exact_scores,
    top_matches,
)

MARGIN_SPREADS = 2.2
MAX_PROBES = 12
# Nearest-neighbour queries (curate) probe at least this many clusters, and at least this
# share of them: their neighbours lie much farther away than a near-duplicate does, and spread
# over more clusters as a larger base is cut into more (bench/curation.py measures the recall).
NEIGHBOUR_PROBES = 32
NEIGHBOUR_PROBE_SHARE = 8
SAMPLE_PER_CLUSTER = 20
# On a CPU, queries are compared with a cluster at most this many at a time: a small cluster
# would otherwise take tens of thousands of queries per block, copied to float32 beside the
# collection's matrix.
CPU_QUERY_ROWS = 4096
PROBE_ROWS = 65536
ITERATIONS = 5


@dataclass(frozen=True)
class ClusterParameters:
    """How the base is clustered and how many clusters a query probes."""

    clusters: int
    margin: float
    min_probes: int
    max_probes: int
    sample: int
    iterations: int
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The parameters as a report states them."""
        return {**asdict(self), "margin": round(self.margin, 6)}


def neighbour_probes(clusters: int) -> int:
    """How many clusters a nearest-neighbour query probes: ``NEIGHBOUR_PROBES``, or an
    ``NEIGHBOUR_PROBE_SHARE``-th of the clusters when that is more (all when fewer)."""
    return min(clusters, max(NEIGHBOUR_PROBES, clusters // NEIGHBOUR_PROBE_SHARE))


def default_clusters(count: int) -> int:
    """About the square root of three times the base: the k at which assigning every vector
    to a centroid costs about what comparing it with its probed clusters does."""
    return max(1, min(count, round(math.sqrt(3 * count))))


def pair_parameters(count: int, dim: int, threshold: float, *, seed: int = 0) -> ClusterParameters:
    """The parameters for the pairs of ``count`` vectors of ``dim`` values at or above
    ``threshold``."""
    clusters = default_clusters(count)
    return ClusterParameters(
        clusters=clusters,
        margin=MARGIN_SPREADS * math.sqrt(2.0 * max(0.0, 1.0 - threshold) / max(1, dim)),
        min_probes=1,
        max_probes=min(MAX_PROBES, clusters),
        sample=min(count, SAMPLE_PER_CLUSTER * clusters),
        iterations=ITERATIONS,
        seed=seed,
    )


@dataclass(frozen=True)
class ClusteredBase:
    """The base's centroids, its rows by cluster (cluster j's rows are
    ``order[starts[j]:starts[j + 1]]``), and the clusters each base row probes (-1: none)."""

    centroids: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    probes: np.ndarray
    parameters: ClusterParameters

    def members(self, cluster: int) -> np.ndarray:
        """The base rows whose nearest centroid is ``cluster``."""
        return self.order[self.starts[cluster] : self.starts[cluster + 1]]


def cluster_base(
    base: np.ndarray,
    parameters: ClusterParameters,
    *,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> ClusteredBase:
    """Fit the centroids on a sample of ``base``, then assign every row (``on_rows`` counts
    the rows assigned)."""
    centroids = fit_centroids(
        base,
        parameters.clusters,
        iterations=parameters.iterations,
        seed=parameters.seed,
        device=device,
        sample=parameters.sample,
        plus_plus=False,
    )
    probes = probe(base, centroids, parameters, device=device, on_rows=on_rows)
    home = probes[:, 0]
    order = np.argsort(home, kind="stable")
    starts = np.searchsorted(home[order], np.arange(len(centroids) + 1))
    return ClusteredBase(centroids, order, starts, probes, parameters)


def probe(
    vectors: np.ndarray,
    centroids: np.ndarray,
    parameters: ClusterParameters,
    *,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The clusters each vector probes, nearest first, -1 after the last (int32, one row per
    vector, ``max_probes`` columns, fewer when there are fewer clusters). Worked out a block
    of vectors at a time, so only the int32 answer grows with the vectors."""
    width = max(1, min(parameters.max_probes, len(centroids)))
    probes = np.empty((vectors.shape[0], width), dtype=np.int32)
    rank = np.arange(width)[None, :]
    for start in range(0, vectors.shape[0], PROBE_ROWS):
        stop = min(start + PROBE_ROWS, vectors.shape[0])
        index, scores = top_matches(vectors[start:stop], centroids, width, device=device)
        wanted = (scores >= scores[:, :1] - parameters.margin) | (rank < parameters.min_probes)
        probes[start:stop] = np.where(wanted, index, -1)
        if on_rows is not None:
            on_rows(stop - start)
    return probes


def _query_rows(members: int, device: str) -> int:
    """How many queries are compared with a cluster of ``members`` at a time."""
    if device.startswith("cuda"):
        return max(1, BLOCK_ELEMENTS_GPU // members)
    return max(1, min(CPU_QUERY_ROWS, BLOCK_ELEMENTS // members))


def _by_cluster(probes: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """The queries probing each cluster: query indices sorted by cluster, and where each
    cluster's start (cluster j's are ``queries[starts[j]:starts[j + 1]]``)."""
    index = np.int32 if probes.shape[0] < 2**31 else np.int64  # a row per probe: keep it small
    queries = np.repeat(np.arange(probes.shape[0], dtype=index), probes.shape[1])
    probed = probes.reshape(-1)
    kept = probed >= 0
    queries, probed = queries[kept], probed[kept]
    order = np.argsort(probed, kind="stable")
    starts = np.searchsorted(probed[order], np.arange(clusters + 1))
    return queries[order], starts


@dataclass(frozen=True)
class ClusterPairs:
    """Pairs (query index, base row, exact similarity) at or above a threshold, and the
    number of similarities computed to find them."""

    pairs: Pairs
    comparisons: int


def pairs_in_clusters(
    queries: np.ndarray,
    query_probes: np.ndarray,
    base: np.ndarray,
    clustered: ClusteredBase,
    threshold: float,
    *,
    query_rows: np.ndarray | None = None,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> ClusterPairs:
    """Every pair (query i, base row j) with j in a cluster query i probes and an exact
    similarity at or above ``threshold``. Query i is ``queries[query_rows[i]]`` (``queries[i]``
    without ``query_rows``); when ``queries`` is ``base``, a row is never paired with itself.
    ``on_rows`` counts the queries whose clusters are all done."""
    count = query_probes.shape[0]
    rows = np.arange(count) if query_rows is None else query_rows
    same = queries is base
    by_cluster, starts = _by_cluster(query_probes, len(clustered.centroids))
    last = np.max(query_probes, axis=1)
    finished = np.bincount(last[last >= 0], minlength=len(clustered.centroids))
    if on_rows is not None and int((last < 0).sum()):
        on_rows(int((last < 0).sum()))
    cut = candidate_cut(threshold, device)
    found: list[Pairs] = []
    comparisons = 0
    for cluster in range(len(clustered.centroids)):
        members = clustered.members(cluster)
        asking = by_cluster[starts[cluster] : starts[cluster + 1]]
        if len(members) and len(asking):
            member_vectors = as_tensor(base[members], device)
            block = _query_rows(len(members), device)
            for start in range(0, len(asking), block):
                chunk = asking[start : start + block]
                chunk_rows = rows[chunk]
                similar = as_tensor(queries[chunk_rows], device) @ member_vectors.T
                hit = (similar >= cut).nonzero().cpu().numpy()
                comparisons += len(chunk) * len(members)
                if not hit.size:
                    continue
                query_at, member_at = chunk[hit[:, 0]], members[hit[:, 1]]
                if same:
                    other = rows[query_at] != member_at
                    query_at, member_at = query_at[other], member_at[other]
                scores = exact_scores(queries[rows[query_at]], base[member_at])
                kept = scores >= threshold
                found.append(Pairs(query_at[kept], member_at[kept], scores[kept]))
        if on_rows is not None and finished[cluster]:
            on_rows(int(finished[cluster]))
    return ClusterPairs(_concatenated(found), comparisons)


def _concatenated(found: list[Pairs]) -> Pairs:
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros(0, dtype=np.float64))
    return Pairs(
        np.concatenate([p.rows for p in found]),
        np.concatenate([p.columns for p in found]),
        np.concatenate([p.scores for p in found]),
    )


def nearest_in_clusters(
    queries: np.ndarray,
    base: np.ndarray,
    clustered: ClusteredBase,
    k: int,
    *,
    allowed: np.ndarray | None = None,
    probes: int | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, int]:
    """For each query, the ``k`` most similar allowed base rows among the members of its
    ``probes`` (default ``neighbour_probes``) nearest clusters, best first (-1 and -inf where
    there are fewer), and the number of similarities computed. ``allowed`` is a mask over the
    base rows (None: all)."""
    import torch

    count = min(probes or neighbour_probes(len(clustered.centroids)), len(clustered.centroids))
    fixed = replace(clustered.parameters, margin=0.0, min_probes=count, max_probes=count)
    query_probes = probe(queries, clustered.centroids, fixed, device=device)
    by_cluster, starts = _by_cluster(query_probes, len(clustered.centroids))
    best = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    comparisons = 0
    for cluster in range(len(clustered.centroids)):
        members = clustered.members(cluster)
        if allowed is not None:
            members = members[allowed[members]]
        asking = by_cluster[starts[cluster] : starts[cluster + 1]]
        if not len(members) or not len(asking):
            continue
        member_vectors = as_tensor(base[members], device)
        take = min(k, len(members))
        block = _query_rows(len(members), device)
        for start in range(0, len(asking), block):
            chunk = asking[start : start + block]
            similar = as_tensor(queries[chunk], device) @ member_vectors.T
            top = torch.topk(similar, take, dim=1)
            comparisons += len(chunk) * len(members)
            merged_rows = np.concatenate([best[chunk], members[top.indices.cpu().numpy()]], 1)
            merged = np.concatenate([scores[chunk], top.values.float().cpu().numpy()], 1)
            order = np.argsort(-merged, axis=1, kind="stable")[:, :k]
            best[chunk] = np.take_along_axis(merged_rows, order, 1)
            scores[chunk] = np.take_along_axis(merged, order, 1)
    return best, scores, comparisons
