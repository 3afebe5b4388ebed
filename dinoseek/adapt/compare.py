"""Before and after: the base model and the adapted one on the same images.

With labels, the labelled images training never saw are embedded by both models and scored
with ``dinoseek eval``'s measures (leave-one-out kNN accuracy, recall@1). kNN takes k = 20
neighbours, or fewer when the smallest class has fewer other images: with more neighbours
than a point's class can give, every point is outvoted by the other classes, and the score
sits at chance whatever the features. Without labels, the
k-NN graphs of both on a sample of the training images are compared (how many of each image's
neighbours stay neighbours): a large change with no labelled check is a warning, not a score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinoseek.evaluation import knn_accuracy, labelled_set, retrieval_metrics

KNN_K = 20
AGREEMENT_K = 10


@dataclass(frozen=True)
class Scores:
    """kNN accuracy (with ``knn_k`` neighbours) and recall@1 of one model on the held-out
    labelled images."""

    knn_accuracy: float
    knn_k: int
    recall_at_1: float


def held_out_split(
    labels: Mapping[Path, str], training: Sequence[Path], fraction: float, seed: int
) -> set[Path]:
    """The labelled images kept out of training: every one outside the training files, and a
    seeded ``fraction`` of each class among them (at least one image per class stays in)."""
    inside = set(training)
    by_class: dict[str, list[Path]] = defaultdict(list)
    held: set[Path] = set()
    for path, label in labels.items():
        if path in inside:
            by_class[label].append(path)
        else:
            held.add(path)
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        members = sorted(by_class[label])
        count = min(len(members) - 1, round(len(members) * fraction))
        for index in rng.permutation(len(members))[:count]:
            held.add(members[int(index)])
    return held


def labelled_scores(
    vectors: np.ndarray, labels: Sequence[str], names: Sequence[str], *, min_per_class: int
) -> Scores:
    """Leave-one-out kNN accuracy (``knn_k``) and recall@1 of unit vectors."""
    data, _ = labelled_set(
        vectors, list(labels), [None] * len(labels), list(names), min_per_class=min_per_class
    )
    k = knn_k(data.labels)
    recall = retrieval_metrics(data, ks=(1,))["recall@1"]
    return Scores(knn_accuracy=knn_accuracy(data, k), knn_k=k, recall_at_1=recall)


def knn_k(labels: np.ndarray) -> int:
    """k for leave-one-out kNN: ``KNN_K``, at most the size of the smallest class less one
    (the neighbours a point of that class can have in its own class), at least 1."""
    smallest = int(np.bincount(labels).min())  # every class index has rows (labelled_set)
    return max(1, min(KNN_K, smallest - 1))


def knn_agreement(before: np.ndarray, after: np.ndarray, k: int = AGREEMENT_K) -> float:
    """Mean share of each row's k nearest neighbours (cosine) that both sets of vectors
    agree on."""
    count = len(before)
    k = max(1, min(k, count - 1))
    pairs = zip(_neighbours(before, k), _neighbours(after, k), strict=True)
    return float(np.mean([len(a & b) / k for a, b in pairs]))


def _neighbours(vectors: np.ndarray, k: int) -> list[set[int]]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return [set(map(int, row)) for row in top]
