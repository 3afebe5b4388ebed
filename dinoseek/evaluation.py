"""How good an embedding is on the user's own labelled images: the measures DINOv2's
repository and retrieval papers report, on stored vectors.

- kNN classification, DINO-style: the k nearest other points vote with weight
  exp(similarity / 0.07), leave-one-out;
- retrieval: recall@k (at least one of the k nearest shares the query's label) and mAP@R
  (R = how many other points share it);
- linear probes from a few labelled examples per class (the head ``dinoseek probe train``
  fits), over several random draws, on a held-out split;
- the most confused class pairs, with example paths.

Splits are honest: points of one near-duplicate group (``groups``) are never on both sides
(a group is left out of its members' neighbours and kept on one side of every split).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dinoseek.errors import ConfigError

KNN_TEMPERATURE = 0.07
BLOCK_ELEMENTS = 8 * 1024 * 1024
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class LabelledSet:
    """Unit vectors (N, dim), class index per row, class names, near-duplicate group per
    row (rows of a group share a number), and a name (path) per row."""

    vectors: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray
    names: list[str]


def labelled_set(
    vectors: np.ndarray,
    labels: Sequence[str | None],
    groups: Sequence[str | None],
    names: Sequence[str],
    *,
    min_per_class: int,
) -> tuple[LabelledSet, dict[str, int]]:
    """The rows with a label of a class with at least ``min_per_class`` rows (``ConfigError``
    when fewer than two classes remain), and the classes left out with their sizes."""
    counts = Counter(label for label in labels if label)
    kept = sorted(label for label, count in counts.items() if count >= min_per_class)
    left_out = {label: count for label, count in counts.items() if count < min_per_class}
    if not counts:
        raise ConfigError("no labelled points: index with --labels-from-folders or --labels-csv")
    if len(kept) < 2:
        raise ConfigError(
            f"an evaluation needs at least two classes with {min_per_class} or more labelled "
            f"images; found {dict(counts)}"
        )
    index_of = {label: k for k, label in enumerate(kept)}
    rows = [i for i, label in enumerate(labels) if label in index_of]
    group_ids: dict[str, int] = {}
    group_of = [_group_number(groups[i], i, group_ids) for i in rows]
    data = LabelledSet(
        vectors=np.asarray(vectors[rows], dtype=np.float32),
        labels=np.array([index_of[labels[i]] for i in rows], dtype=np.int64),  # type: ignore[index]
        classes=tuple(kept),
        groups=np.asarray(group_of, dtype=np.int64),
        names=[names[i] for i in rows],
    )
    return data, left_out


def _group_number(group: str | None, row: int, numbers: dict[str, int]) -> int:
    """A group's number (0, 1, ...), or a negative number of the row's own when it has none."""
    if not group:
        return -(row + 1)
    return numbers.setdefault(group, len(numbers))


def _neighbours(data: LabelledSet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows of each row, outside its own group: (indices, scores),
    best first. Blocked: one block of similarities in memory."""
    count = len(data.labels)
    k = max(1, min(k, count - 1))
    index = np.zeros((count, k), dtype=np.int64)
    scores = np.zeros((count, k), dtype=np.float32)
    block = max(1, min(count, BLOCK_ELEMENTS // max(1, count)))
    for start in range(0, count, block):
        stop = min(start + block, count)
        sims = data.vectors[start:stop] @ data.vectors.T
        same = data.groups[start:stop, None] == data.groups[None, :]
        sims[same] = -np.inf  # itself and its near-duplicates are not neighbours
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ordered = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        index[start:stop] = np.take_along_axis(top, ordered, axis=1)
        scores[start:stop] = np.take_along_axis(sims, index[start:stop], axis=1)
    return index, scores


def knn_predictions(data: LabelledSet, k: int, temperature: float = KNN_TEMPERATURE) -> np.ndarray:
    """Leave-one-out kNN class of each row: the k nearest others vote with
    exp(similarity / temperature)."""
    index, scores = _neighbours(data, k)
    weights = np.exp((scores - scores.max(axis=1, keepdims=True)) / temperature)
    weights[~np.isfinite(scores)] = 0.0
    votes = np.zeros((len(data.labels), len(data.classes)))
    np.add.at(votes, (np.arange(len(data.labels))[:, None], data.labels[index]), weights)
    predicted: np.ndarray = votes.argmax(axis=1)
    return predicted


def knn_accuracy(data: LabelledSet, k: int, temperature: float = KNN_TEMPERATURE) -> float:
    """Leave-one-out kNN accuracy."""
    return float(np.mean(knn_predictions(data, k, temperature) == data.labels))


def retrieval_metrics(data: LabelledSet, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """recall@k for each k, and mAP@R, with each row as a query against the others."""
    class_sizes = np.bincount(data.labels, minlength=len(data.classes))
    relevant = class_sizes[data.labels] - 1  # R: the other rows of the query's class
    depth = int(max(max(ks), relevant.max()))
    index, _ = _neighbours(data, depth)
    hits = data.labels[index] == data.labels[:, None]
    metrics = {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}
    precisions = []
    for row in range(len(data.labels)):
        r = int(relevant[row])
        if r == 0:
            continue
        found = hits[row, :r]
        cumulative = np.cumsum(found)
        precisions.append(float((cumulative / np.arange(1, r + 1) * found).sum() / r))
    metrics["map@r"] = float(np.mean(precisions)) if precisions else 0.0
    return metrics


def group_split(
    data: LabelledSet, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): about ``test_fraction`` of each class's groups held out, a
    whole near-duplicate group on one side."""
    train: list[int] = []
    test: list[int] = []
    for k in range(len(data.classes)):
        rows = np.flatnonzero(data.labels == k)
        groups = rng.permutation(np.unique(data.groups[rows]))
        held = set(groups[: max(1, round(test_fraction * len(groups)))].tolist())
        if len(held) == len(groups):  # keep at least one group to train on
            held.discard(int(groups[-1]))
        for row in rows.tolist():
            (test if int(data.groups[row]) in held else train).append(row)
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(test), dtype=np.int64)


def few_shot_accuracy(
    data: LabelledSet,
    shots: Sequence[int | None],
    *,
    draws: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Linear-probe accuracy on a held-out split with ``n`` training examples per class
    (None: all), over ``draws`` random splits and draws: {"n": (mean, std)}."""
    from dinoseek.probe.training import fit_linear_head

    rng = np.random.default_rng(seed)
    results: dict[str, list[float]] = {_shot_name(n): [] for n in shots}
    for draw in range(draws):
        train, test = group_split(data, TEST_FRACTION, rng)
        for n in shots:
            chosen = _per_class(data.labels[train], n, rng)
            rows = train[chosen]
            head = fit_linear_head(
                data.vectors[rows], data.labels[rows], len(data.classes), seed=seed + draw
            )
            logits = data.vectors[test] @ head.weight.T + head.bias
            results[_shot_name(n)].append(
                float(np.mean(logits.argmax(axis=1) == data.labels[test]))
            )
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in results.items()}


def _shot_name(n: int | None) -> str:
    return "all" if n is None else str(n)


def _per_class(labels: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``n`` random rows of each class in ``labels`` (all of a smaller class)."""
    picked = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        picked.append(rows if n is None else rng.permutation(rows)[:n])
    return np.sort(np.concatenate(picked))


@dataclass(frozen=True)
class ConfusedPair:
    """A true class, the class it is taken for, how often, and example rows' names."""

    true: str
    predicted: str
    count: int
    examples: tuple[str, ...]


def confused_pairs(
    data: LabelledSet, predicted: np.ndarray, *, top: int = 5, examples: int = 3
) -> list[ConfusedPair]:
    """The most frequent (true, predicted) mistakes, with the names of a few such rows."""
    wrong = np.flatnonzero(predicted != data.labels)
    pairs = Counter(zip(data.labels[wrong].tolist(), predicted[wrong].tolist(), strict=True))
    found = []
    for (true, guess), count in pairs.most_common(top):
        rows = [r for r in wrong.tolist() if data.labels[r] == true and predicted[r] == guess]
        found.append(
            ConfusedPair(
                data.classes[true],
                data.classes[guess],
                count,
                tuple(data.names[r] for r in rows[:examples]),
            )
        )
    return found
