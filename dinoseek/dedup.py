"""Near-duplicates of a collection, the LVD-142M way: a kNN graph at a similarity threshold,
its connected components, one point kept per component.

Everything is decided from the stored vectors and payloads: no image is read, no file is
touched. The outcome is written as payload marks (``MARK_FIELDS``):

- every member of a group: ``duplicate_group`` (the kept point's id);
- the kept point: ``duplicate_role: "keep"``, ``duplicate_count`` (how many others) and
  ``duplicate_reason`` (why it is the one kept);
- the others: ``duplicate_role: "duplicate"``, ``duplicate_of`` (the kept point's id) and
  ``duplicate_score`` (cosine similarity to the kept point);
- every point compared: ``dedup_threshold``.

The pairs are found by ``dinoseek.pair_search``: every pair compared (small collections, a
GPU) or through clusters (large ones), each candidate decided exactly; ``DedupPlan.method``
says which ran and why.

The kept point of a group is chosen by a ``KeepRule`` (``dinoseek.dedup_keep``; by default the
most pixels, then the larger file, then the oldest, then the path), and every run decides it
again with the rule it is given; the kept point carries the reason (``duplicate_reason``). A
rerun compares only the points without ``dedup_threshold`` equal to its threshold (new,
re-indexed, or compared at another threshold) with every point, and trusts the groups of the
others.

Writes never leave a collection with fewer marks than it had before the new ones were all
written (``apply_plan``): the plan is computed in full first, every point that keeps or gains
marks is written next, and the marks of the points that leave every group are removed last,
in one store operation. A point's ``dedup_threshold`` is removed before its marks change and
written back after, so a run stopped at any moment leaves every half-written point to be
compared again by the next one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseek.collection_vectors import CollectionVectors
from dinoseek.dedup_keep import KEEP_FIELDS, KeepRule, PointFacts
from dinoseek.errors import ConfigError
from dinoseek.pair_search import (
    FoundPairs,
    PairMethod,
    StageProgress,
    choose_method,
    each_once,
    find_pairs,
)
from dinoseek.payload_table import PayloadTable
from dinoseek.similarity import Pairs, best_matches, exact_scores, rounded
from dinoseek.store import VectorStore

GROUP = "duplicate_group"
ROLE = "duplicate_role"  # a keyword, "keep" or "duplicate": what filters match
KEEP, DUPLICATE = "keep", "duplicate"
COUNT = "duplicate_count"
REASON = "duplicate_reason"
OF = "duplicate_of"
SCORE = "duplicate_score"
THRESHOLD = "dedup_threshold"
MARK_FIELDS = (GROUP, ROLE, COUNT, REASON, OF, SCORE, THRESHOLD)
GROUP_MARKS = tuple(key for key in MARK_FIELDS if key != THRESHOLD)
# What the keep rule and the report need from each payload.
PAYLOAD_FIELDS = (*KEEP_FIELDS, "near_duplicate_of", *MARK_FIELDS)
DEFAULT_THRESHOLD = 0.95


@dataclass(frozen=True)
class DuplicateGroup:
    """A group of near-duplicates: the kept point, the others, the similarity of each other
    to it, and why that point is the one kept."""

    keep: int
    others: tuple[int, ...]
    scores: tuple[float, ...]
    reason: str


@dataclass(frozen=True)
class SimilarPair:
    """Two points between the ``similar`` and the near-duplicate threshold, in no one group:
    listed, never marked."""

    first: int
    second: int
    score: float


@dataclass(frozen=True)
class DedupPlan:
    """What a run found and what it will write: the groups, the points it compared, the
    payload of each point whose marks change (point index -> new payload), the pairs at or
    above the threshold, how they were found (the method and the similarities it computed),
    and the similar pairs."""

    groups: list[DuplicateGroup]
    compared: np.ndarray
    changes: dict[int, dict[str, Any]]
    pairs: int
    method: PairMethod
    comparisons: int
    similar: list[SimilarPair]


class UnionFind:
    """Connected components of 0..n-1 (path halving, union by size)."""

    def __init__(self, count: int) -> None:
        self.parent = np.arange(count)
        self.size = np.ones(count, dtype=np.int64)

    def find(self, item: int) -> int:
        """The representative of ``item``'s component."""
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = int(parent[item])
        return item

    def union(self, first: int, second: int) -> None:
        """Join the components of ``first`` and ``second``."""
        a, b = self.find(first), self.find(second)
        if a == b:
            return
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]

    def components(self, members: Iterable[int]) -> dict[int, list[int]]:
        """``members`` grouped by component."""
        found: dict[int, list[int]] = {}
        for item in members:
            found.setdefault(self.find(item), []).append(item)
        return found


def plan_dedup(
    data: CollectionVectors,
    threshold: float,
    *,
    keep: KeepRule | None = None,
    device: str = "cpu",
    method: str = "auto",
    similar: float | None = None,
    progress: StageProgress | None = None,
) -> DedupPlan:
    """Group the near-duplicates of ``data`` at ``threshold``, choose each group's kept point
    by ``keep`` (the default rule when None), and say which marks change. The pairs are
    found by ``method`` (``dinoseek.pair_search``). With ``similar`` (below ``threshold``),
    the pairs between it and the threshold are listed too, never marked; they are not
    stored, so every point is compared."""
    check_threshold(threshold)
    if similar is not None:
        check_similar(similar, threshold)
    rule = keep or KeepRule()
    count = len(data.ids)
    if similar is None:
        compared = np.array(
            [i for i, t in enumerate(data.payloads.values(THRESHOLD)) if t != threshold],
            dtype=np.int64,
        )
    else:
        compared = np.arange(count, dtype=np.int64)
    links = UnionFind(count)
    touched: set[int] = set()
    for members in _trusted_groups(data, threshold).values():
        touched.update(members)
        for other in members[1:]:
            links.union(members[0], other)
    lowest = threshold if similar is None else similar
    within = len(compared) == count
    if not len(compared):
        chosen = PairMethod("none", "every point was compared at this threshold before")
        found = FoundPairs(Pairs(compared, compared, np.zeros(0)), 0)
    else:
        chosen = choose_method(
            method, len(compared), count, data.vectors.shape[1], lowest, device, within=within
        )
        found = find_pairs(
            data.vectors,
            lowest,
            chosen,
            query_rows=None if within else compared,
            exact=data.exact,
            device=device,
            progress=progress,
        )
    pairs = found.pairs if within else each_once(_in_rows(found.pairs, compared))
    near = pairs.scores >= threshold
    for row, column in zip(pairs.rows[near].tolist(), pairs.columns[near].tolist(), strict=True):
        links.union(row, column)
        touched.update((row, column))
    groups = [
        _group(data, members, rule)
        for members in links.components(sorted(touched)).values()
        if len(members) > 1
    ]
    groups.sort(key=lambda g: (-len(g.others), data.ids[g.keep]))
    listed = _similar_pairs(data, pairs, near, links) if similar is not None else []
    return DedupPlan(
        groups,
        compared,
        _changes(data, groups, threshold),
        int(near.sum()),
        chosen,
        found.comparisons,
        listed,
    )


def _in_rows(pairs: Pairs, rows: np.ndarray) -> Pairs:
    """Pairs whose first index is a position in ``rows``, with that row instead."""
    return Pairs(rows[pairs.rows], pairs.columns, pairs.scores)


def _similar_pairs(
    data: CollectionVectors, pairs: Pairs, near: np.ndarray, links: UnionFind
) -> list[SimilarPair]:
    """The pairs below the near threshold whose points are in no one group, most similar
    first."""
    listed = [
        SimilarPair(row, column, float(score))
        for row, column, score in zip(
            pairs.rows[~near].tolist(),
            pairs.columns[~near].tolist(),
            pairs.scores[~near].tolist(),
            strict=True,
        )
        if links.find(row) != links.find(column)
    ]
    listed.sort(key=lambda p: (-p.score, data.ids[p.first], data.ids[p.second]))
    return listed


def _trusted_groups(data: CollectionVectors, threshold: float) -> dict[str, list[int]]:
    """The groups recorded by earlier runs at this threshold, among the points they compared
    (a point not compared at this threshold is compared again, and its old marks ignored)."""
    groups: dict[str, list[int]] = {}
    for index in data.payloads.having([GROUP]):
        payload = data.payloads[index]
        group = payload.get(GROUP)
        if payload.get(THRESHOLD) == threshold and isinstance(group, str):
            groups.setdefault(group, []).append(index)
    return groups


def exact_copies(payloads: PayloadTable) -> list[tuple[int, list[str]]]:
    """The points with several files of one content (the same hash: one point already), and
    their paths."""
    found = []
    for index in payloads.having(["paths"]):
        listed = payloads[index].get("paths")
        paths = sorted(p for p in listed if isinstance(p, str)) if isinstance(listed, list) else []
        if len(paths) > 1:
            found.append((index, paths))
    return found


def check_similar(similar: float, threshold: float) -> None:
    """``ConfigError`` unless the ``similar`` tier's threshold lies below ``threshold``."""
    check_threshold(similar)
    if similar >= threshold:
        raise ConfigError(
            f"--similar {similar:g} must be below --threshold {threshold:g}: pairs at or "
            "above --threshold are near-duplicates, those between the two are similar"
        )


def check_threshold(threshold: float) -> None:
    """``ConfigError`` unless ``threshold`` is a similarity in (0, 1] (NaN compares with
    nothing, so a run at NaN would find no pair and unmark every point)."""
    if not (math.isfinite(threshold) and 0.0 < threshold <= 1.0):
        raise ConfigError(f"threshold {threshold!r}: give a similarity above 0 and at most 1")


def _group(data: CollectionVectors, members: list[int], rule: KeepRule) -> DuplicateGroup:
    facts = [PointFacts.from_payload(data.ids[i], data.payloads[i]) for i in members]
    position, reason = rule.choose(facts)
    keep = members[position]
    others = sorted((i for i in members if i != keep), key=lambda i: data.ids[i])
    stored = data.exact(np.array([keep, *others], dtype=np.int64))
    scores = exact_scores(stored[1:], np.broadcast_to(stored[0], stored[1:].shape))
    return DuplicateGroup(keep, tuple(others), tuple(float(s) for s in scores), reason)


def marks_of(data: CollectionVectors, groups: list[DuplicateGroup]) -> dict[int, dict[str, Any]]:
    """The group marks each point should carry (points in no group carry none)."""
    marks: dict[int, dict[str, Any]] = {}
    for group in groups:
        keeper_id = data.ids[group.keep]
        marks[group.keep] = {
            GROUP: keeper_id,
            ROLE: KEEP,
            COUNT: len(group.others),
            REASON: group.reason,
        }
        for other, score in zip(group.others, group.scores, strict=True):
            marks[other] = {GROUP: keeper_id, ROLE: DUPLICATE, OF: keeper_id, SCORE: score}
    return marks


def _changes(
    data: CollectionVectors, groups: list[DuplicateGroup], threshold: float
) -> dict[int, dict[str, Any]]:
    """Phase 1: the group marks of every point whose marks differ (its ``dedup_threshold``
    left as it was)."""
    marks = marks_of(data, groups)
    changes: dict[int, dict[str, Any]] = {}
    # A point in no group and without marks stays as it is: only the others are looked at.
    for index in sorted(set(marks) | set(data.payloads.having(GROUP_MARKS))):
        payload = data.payloads[index]
        wanted = marks.get(index, {})
        current = {key: payload[key] for key in MARK_FIELDS if key in payload and key != THRESHOLD}
        if current != wanted:
            changes[index] = wanted
    return changes


WRITE_BATCH = 1024


def apply_plan(
    store: VectorStore,
    collection: str,
    data: CollectionVectors,
    plan: DedupPlan,
    threshold: float,
    *,
    on_points: Callable[[int], None] | None = None,
) -> int:
    """Write the plan: forget that the points whose marks change were compared; write the
    marks of every point that is in a group (never fewer marks on it at any moment); remove
    the marks of the points that leave every group, in one store operation; then record
    ``dedup_threshold`` on the changed points and on every point compared.

    A failure before the last two steps leaves every mark the collection had (some points
    with their new marks instead); a run stopped anywhere leaves each half-written point
    without ``dedup_threshold``, so the next run compares it again. Returns the points
    written."""
    check_threshold(threshold)
    forget_compared(store, collection, data, plan)
    for index, marks in plan.changes.items():
        if marks:
            write_marks(store, collection, data, index, marks)
            if on_points is not None:
                on_points(1)
    leaving = [data.ids[i] for i, marks in plan.changes.items() if not marks]
    if leaving:
        store.delete_payload_fields(collection, leaving, GROUP_MARKS)
        if on_points is not None:
            on_points(len(leaving))
    # An array, not a set of a million ints: the write phase is where the store's pages add up.
    done = np.union1d(plan.compared, np.fromiter(plan.changes, dtype=np.int64))
    for start in range(0, len(done), WRITE_BATCH):
        batch = [data.ids[i] for i in done[start : start + WRITE_BATCH].tolist()]
        store.merge_payload(collection, batch, {THRESHOLD: threshold})
        if on_points is not None:
            on_points(len(batch))
    return len(done)


def forget_compared(
    store: VectorStore, collection: str, data: CollectionVectors, plan: DedupPlan
) -> None:
    """Remove ``dedup_threshold`` from the points whose marks are about to change."""
    changing = [data.ids[i] for i in plan.changes if THRESHOLD in data.payloads[i]]
    for start in range(0, len(changing), WRITE_BATCH):
        store.delete_payload_fields(collection, changing[start : start + WRITE_BATCH], [THRESHOLD])


def write_marks(
    store: VectorStore,
    collection: str,
    data: CollectionVectors,
    index: int,
    marks: Mapping[str, Any],
) -> None:
    """Replace point ``index``'s group marks by ``marks`` (its ``dedup_threshold`` and the
    rest of its payload kept): the new marks first, then the old ones it no longer has."""
    store.merge_payload(collection, [data.ids[index]], marks)
    stale = [key for key in GROUP_MARKS if key in data.payloads[index] and key not in marks]
    if stale:
        store.delete_payload_fields(collection, [data.ids[index]], stale)


def clear_marks(
    store: VectorStore, collection: str, *, on_points: Callable[[int], None] | None = None
) -> int:
    """Remove every dedup mark (and every ``--against`` mark) from the collection."""
    keys = [*MARK_FIELDS, AGAINST]
    marked = [
        point.id
        for point in store.scroll(collection, batch_size=1024)
        if any(key in point.payload for key in keys)
    ]
    for start in range(0, len(marked), WRITE_BATCH):
        store.delete_payload_fields(collection, marked[start : start + WRITE_BATCH], keys)
        if on_points is not None:
            on_points(len(marked[start : start + WRITE_BATCH]))
    return len(marked)


def _rewrite(
    store: VectorStore,
    collection: str,
    updates: Sequence[tuple[str, Mapping[str, Any]]],
    merge: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]],
    on_points: Callable[[int], None] | None,
) -> int:
    """Read each point's whole payload, merge, write it back (a payload is replaced whole)."""
    written = 0
    for start in range(0, len(updates), WRITE_BATCH):
        batch = dict(updates[start : start + WRITE_BATCH])
        for point in store.get(collection, list(batch)):
            store.set_payload(collection, point.id, merge(point.payload, batch[point.id]))
            written += 1
        if on_points is not None:
            on_points(len(batch))
    return written


# -- near-duplicates of another set ---------------------------------------------------------

AGAINST = "near_duplicate_of"


@dataclass(frozen=True)
class Leak:
    """A pool point that near-duplicates a point of the other set."""

    pool_index: int
    other_index: int
    score: float


def find_leaks(
    pool: np.ndarray,
    other: np.ndarray,
    threshold: float,
    *,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> list[Leak]:
    """The pool points whose most similar vector in ``other`` is at least ``threshold``."""
    check_threshold(threshold)
    best, scores = best_matches(pool, other, device=device, on_rows=on_rows)
    shown = rounded(scores)
    return [
        Leak(i, int(best[i]), float(shown[i])) for i in np.flatnonzero(shown >= threshold).tolist()
    ]


def apply_leaks(
    store: VectorStore,
    collection: str,
    data: CollectionVectors,
    leaks: list[Leak],
    against: str,
    describe: Callable[[int], dict[str, Any]],
    *,
    on_points: Callable[[int], None] | None = None,
) -> int:
    """Mark the leaked points (``near_duplicate_of[against]``: the other point and the
    similarity) and unmark the points an earlier run against the same set marked: every
    mark is written before the first one is removed (a point at a time: the marks of all
    sets share one payload field)."""
    wanted = {
        leak.pool_index: {**describe(leak.other_index), "score": leak.score} for leak in leaks
    }
    updates: list[tuple[str, Mapping[str, Any]]] = []
    for index in sorted(set(wanted) | set(data.payloads.having([AGAINST]))):
        current = (data.payloads[index].get(AGAINST) or {}).get(against)
        if current != wanted.get(index):
            updates.append((data.ids[index], {against: wanted.get(index)}))
    updates.sort(key=lambda update: update[1][against] is None)  # stable: removals last

    def merge(payload: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
        marks = {**(payload.get(AGAINST) or {}), **change}
        marks = {name: mark for name, mark in marks.items() if mark is not None}
        rest = {k: v for k, v in payload.items() if k != AGAINST}
        return {**rest, AGAINST: marks} if marks else rest

    return _rewrite(store, collection, updates, merge, on_points)
