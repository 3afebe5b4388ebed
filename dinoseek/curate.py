"""Retrieval-based curation, the second step of LVD-142M: keep the pool images that lie close
to a curated reference set.

- Sample-based: the ``per_image`` nearest pool points of every reference image (N = 4 in the
  paper), for a large reference set.
- Cluster-based: ``cluster_sample`` points of the pool cluster (spherical k-means) of every
  reference image, for a small one.

Deduplication comes first: pool points marked ``duplicate_role: duplicate`` by
``dinoseek dedup`` and pool points that near-duplicate a reference image are never
selected. Balanced sampling from a hierarchical k-means ("Automatic Data Curation for
Self-Supervised Learning") needs no reference set: ``balanced``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinoseek.collection_vectors import CollectionVectors
from dinoseek.dedup import DUPLICATE, ROLE
from dinoseek.errors import ConfigError
from dinoseek.kmeans import balanced_sample, hierarchical_kmeans, kmeans
from dinoseek.settings import validate_collection_name
from dinoseek.similarity import best_matches, top_matches
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


def eligible_rows(
    pool: CollectionVectors,
    reference: np.ndarray | None,
    near_duplicate: float,
    *,
    device: str = "cpu",
) -> tuple[np.ndarray, dict[str, int]]:
    """The pool rows that may be selected: not a marked duplicate, not a near-duplicate of a
    reference image; with the count each step removed."""
    rows = np.array(
        [i for i, payload in enumerate(pool.payloads) if payload.get(ROLE) != DUPLICATE],
        dtype=np.int64,
    )
    steps = {"pool": len(pool.ids), "marked_duplicates": len(pool.ids) - len(rows)}
    if reference is not None and len(rows):
        _, scores = best_matches(pool.vectors[rows], reference, device=device)
        near = scores >= near_duplicate
        steps["near_duplicates_of_reference"] = int(near.sum())
        rows = rows[~near]
    steps["eligible"] = len(rows)
    return rows, steps


def by_neighbours(
    pool: CollectionVectors,
    rows: np.ndarray,
    reference: np.ndarray,
    per_image: int,
    *,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> list[Selected]:
    """The ``per_image`` nearest eligible pool points of each reference image; a point
    chosen by several keeps its most similar reference."""
    best: dict[int, Selected] = {}
    if not len(rows):
        return []
    index, scores = top_matches(
        reference, pool.vectors[rows], per_image, device=device, on_rows=on_rows
    )
    for ref in range(reference.shape[0]):
        for column, score in zip(index[ref].tolist(), scores[ref].tolist(), strict=True):
            row = int(rows[column])
            if row not in best or (best[row].score or -2.0) < score:
                best[row] = Selected(row, ref, round(float(score), 6))
    return sorted(best.values(), key=lambda s: s.index)


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
    cluster smaller than that gives all its points)."""
    if not len(rows):
        return []
    fitted = kmeans(pool.vectors[rows], clusters, seed=seed, device=device)
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
