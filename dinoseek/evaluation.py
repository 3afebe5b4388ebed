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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dinoseek.errors import ConfigError
from dinoseek.messages import short_list

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
    check_classes(counts, min_per_class=min_per_class)
    kept = sorted(label for label, count in counts.items() if count >= min_per_class)
    left_out = {label: count for label, count in counts.items() if count < min_per_class}
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


def check_classes(counts: Counter[str], *, min_per_class: int) -> None:
    """``ConfigError`` unless at least two classes have ``min_per_class`` or more images
    (``counts``: images per label), naming the largest few."""
    if not counts:
        raise ConfigError("no labelled points: index with --labels-from-folders or --labels-csv")
    qualifying = sum(1 for count in counts.values() if count >= min_per_class)
    if qualifying < 2:
        found = short_list(f"{label} ({count})" for label, count in counts.most_common())
        raise ConfigError(
            f"an evaluation needs at least two classes with {min_per_class} or more labelled "
            f"images; {qualifying} of {len(counts):,} classes have that many "
            f"(images per class: {found})"
        )


def _group_number(group: str | None, row: int, numbers: dict[str, int]) -> int:
    """A group's number (0, 1, ...), or a negative number of the row's own when it has none."""
    if not group:
        return -(row + 1)
    return numbers.setdefault(group, len(numbers))


def _neighbour_blocks(
    data: LabelledSet, k: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """For a block of rows at a time: (start, stop, indices, scores) of the ``k`` nearest
    other rows outside each row's group, best first; a row with fewer such rows gets
    ``-inf`` scores for the rest. One block of similarities in memory."""
    count = len(data.labels)
    k = max(1, min(k, count - 1))
    block = max(1, min(count, BLOCK_ELEMENTS // max(1, count)))
    for start in range(0, count, block):
        stop = min(start + block, count)
        sims = data.vectors[start:stop] @ data.vectors.T
        same = data.groups[start:stop, None] == data.groups[None, :]
        sims[same] = -np.inf  # itself and its near-duplicates are not neighbours
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ordered = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        index = np.take_along_axis(top, ordered, axis=1)
        yield start, stop, index, np.take_along_axis(sims, index, axis=1)


def knn_predictions(data: LabelledSet, k: int, temperature: float = KNN_TEMPERATURE) -> np.ndarray:
    """Leave-one-out kNN class of each row: the k nearest others (outside its group) vote
    with exp(similarity / temperature)."""
    predicted = np.zeros(len(data.labels), dtype=np.int64)
    for start, stop, index, scores in _neighbour_blocks(data, k):
        finite = np.isfinite(scores)
        best = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
        weights = np.where(finite, np.exp((scores - np.where(np.isfinite(best), best, 0.0))
                                          / temperature), 0.0)  # fmt: skip
        votes = np.zeros((stop - start, len(data.classes)))
        np.add.at(votes, (np.arange(stop - start)[:, None], data.labels[index]), weights)
        predicted[start:stop] = votes.argmax(axis=1)
    return predicted


def knn_accuracy(data: LabelledSet, k: int, temperature: float = KNN_TEMPERATURE) -> float:
    """Leave-one-out kNN accuracy."""
    return float(np.mean(knn_predictions(data, k, temperature) == data.labels))


def relevant_counts(data: LabelledSet) -> np.ndarray:
    """R of each row: the rows of its class outside its own group (what can be retrieved)."""
    class_sizes = np.bincount(data.labels, minlength=len(data.classes))
    pairs = np.stack([data.labels, data.groups], axis=1)
    _, where, sizes = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    counts: np.ndarray = class_sizes[data.labels] - sizes[where.reshape(-1)]
    return counts


def retrieval_metrics(data: LabelledSet, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """recall@k for each k, and mAP@R, with each row as a query against the others outside
    its group; computed a block of rows at a time."""
    relevant = relevant_counts(data)
    depth = int(max(max(ks), relevant.max()))
    recalled = dict.fromkeys(ks, 0)
    precisions: list[float] = []
    for start, stop, index, scores in _neighbour_blocks(data, depth):
        hits = (data.labels[index] == data.labels[start:stop, None]) & np.isfinite(scores)
        for k in ks:
            recalled[k] += int(hits[:, :k].any(axis=1).sum())
        for offset, row in enumerate(range(start, stop)):
            r = int(relevant[row])
            if r == 0:
                continue
            found = hits[offset, :r]
            cumulative = np.cumsum(found)
            precisions.append(float((cumulative / np.arange(1, r + 1) * found).sum() / r))
    count = len(data.labels)
    metrics = {f"recall@{k}": recalled[k] / count for k in ks}
    metrics["map@r"] = float(np.mean(precisions)) if precisions else 0.0
    return metrics


def group_split(
    data: LabelledSet, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): about ``test_fraction`` of the groups of each class held
    out (a group counts for its most frequent label), each group wholly on one side, even a
    group whose members carry different labels. A class keeps at least one group to train
    on. ``ConfigError`` when nothing can be held out."""
    groups, where = np.unique(data.groups, return_inverse=True)
    where = where.reshape(-1)
    majority = np.array([np.bincount(data.labels[where == g]).argmax() for g in range(len(groups))])
    held = np.zeros(len(groups), dtype=bool)
    for k in range(len(data.classes)):
        members = rng.permutation(np.flatnonzero(majority == k))
        take = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        held[members[:take]] = True
    test = np.flatnonzero(held[where])
    if not len(test):
        raise ConfigError(
            "no images can be held out for the linear probes: every class is a single group "
            "of near-duplicates; add images, or evaluate without dinoseek dedup's groups"
        )
    return np.flatnonzero(~held[where]), test


def few_shot_accuracy(
    data: LabelledSet,
    shots: Sequence[int | None],
    *,
    draws: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Linear-probe accuracy on a held-out split with ``n`` training examples per class
    (None: all), over ``draws`` random splits and draws: {"n": (mean, std)}."""
    from dinoseek.probe.training import feature_statistics, fit_linear_head

    rng = np.random.default_rng(seed)
    results: dict[str, list[float]] = {_shot_name(n): [] for n in shots}
    for draw in range(draws):
        train, test = group_split(data, TEST_FRACTION, rng)
        # The features are standardised with the whole training side (no labels needed):
        # from one or two examples per class the statistics would be noise.
        statistics = feature_statistics(data.vectors[train])
        for n in shots:
            chosen = _per_class(data.labels[train], n, rng)
            rows = train[chosen]
            head = fit_linear_head(
                data.vectors[rows],
                data.labels[rows],
                len(data.classes),
                seed=seed + draw,
                statistics=statistics,
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
