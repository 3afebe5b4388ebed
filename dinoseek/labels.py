"""Predicted labels: the one type every method returns, and the kNN vote (no training).

A ``PredictedLabel`` comes from a trained linear probe (``method="probe"``, calibrated
probabilities; ``dinoseek.probe``) or from a similarity-weighted vote of a query's neighbours
(``method="knn"``, ``knn_vote``). The CLI and the HTTP API both show this type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dinoseek.errors import ConfigError

UNKNOWN_LABEL = "unknown"
LabelMethod = Literal["probe", "knn"]


@dataclass(frozen=True)
class PredictedLabel:
    """One predicted label: its probability, the method, the probe that produced it, and for
    a kNN vote the number of neighbours it was taken over."""

    label: str
    probability: float
    method: LabelMethod
    probe: str | None = None
    neighbours: int | None = None


def knn_vote(
    neighbour_labels: Sequence[str | None], scores: Sequence[float], top_k: int = 5
) -> list[PredictedLabel]:
    """Label probabilities from a similarity-weighted vote of a query's neighbours.

    Each labelled neighbour votes for its label with weight ``max(score, 0)`` (a non-finite
    score counts 0); unlabelled ones (``None``) do not vote. The probabilities sum to 1 over
    all labels voted for, and the ``top_k`` most probable come back, ties in the order of
    the neighbours. Should every labelled neighbour have weight 0, each counts 1 instead.
    Empty when no neighbour has a label.
    """
    check_top_k(top_k)
    if len(neighbour_labels) != len(scores):
        raise ValueError(f"{len(neighbour_labels)} labels but {len(scores)} scores")
    votes: dict[str, float] = {}
    counts: dict[str, int] = {}
    for label, score in zip(neighbour_labels, scores, strict=True):
        if label is None:
            continue
        weight = float(score) if math.isfinite(score) and score > 0 else 0.0
        votes[label] = votes.get(label, 0.0) + weight
        counts[label] = counts.get(label, 0) + 1
    if not votes:
        return []
    total = sum(votes.values())
    if total <= 0:
        votes, total = (
            {label: float(count) for label, count in counts.items()},
            sum(counts.values()),
        )
    ranked = sorted(votes.items(), key=lambda item: -item[1])  # stable: ties keep first-seen
    voters = len(neighbour_labels)
    return [
        PredictedLabel(label, round(weight / total, 6), "knn", neighbours=voters)
        for label, weight in ranked[:top_k]
    ]


def check_top_k(top_k: int) -> None:
    """``ConfigError`` unless at least one label is asked for."""
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
