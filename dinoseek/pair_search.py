"""How the pairs of vectors at or above a similarity are found: by comparing every pair
(``exact``) or through clusters (``clusters``, see ``dinoseek.cluster_index``), and which
runs when.

``auto`` compares every pair on a GPU, and on a CPU when that is at most
``EXACT_MAX_COMPARISONS`` similarities (about 20,000 points, or 200 new points against
1,000,000); otherwise it goes through clusters. Either way each candidate is decided
exactly, so the two differ only in recall: the exact path finds every pair, the clusters
lose a share that bench/curation.py measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseek.cluster_index import (
    ClusterParameters,
    cluster_base,
    pair_parameters,
    pairs_in_clusters,
)
from dinoseek.similarity import FLOAT16_MARGIN, Pairs, exact_scores, pairs_above

METHODS = ("auto", "exact", "clusters")
EXACT_MAX_COMPARISONS = 200_000_000
DECIDE_PAIRS = 4096

# A stage of the work and its size -> what to call with the units done.
StageProgress = Callable[[str, int], Callable[[int], None]]


@dataclass(frozen=True)
class PairMethod:
    """How the pairs are found, why, and with which parameters."""

    name: str
    reason: str
    parameters: ClusterParameters | None = None

    def describe(self) -> dict[str, Any]:
        """The method as ``--json`` states it."""
        found: dict[str, Any] = {"name": self.name, "reason": self.reason}
        if self.parameters is not None:
            found["parameters"] = self.parameters.describe()
        return found


def all_pairs_comparisons(queries: int, base: int, *, within: bool) -> int:
    """The similarities the exact path computes: each pair once within one set."""
    return base * (base - 1) // 2 if within else queries * base


def choose_method(
    requested: str,
    queries: int,
    base: int,
    dim: int,
    threshold: float,
    device: str,
    *,
    within: bool,
    seed: int = 0,
) -> PairMethod:
    """The method for ``queries`` points against ``base`` points of ``dim`` values
    (``within``: the queries are the base), as asked or, for ``auto``, by the work (see the
    module doc)."""
    exact_work = all_pairs_comparisons(queries, base, within=within)
    if requested not in METHODS:
        raise ValueError(f"method {requested!r}: use one of {', '.join(METHODS)}")
    if requested == "exact":
        return PairMethod("exact", "asked for")
    if requested == "clusters":
        return PairMethod("clusters", "asked for", pair_parameters(base, dim, threshold, seed=seed))
    if device.startswith("cuda"):
        return PairMethod("exact", "auto: on a GPU every pair is compared")
    if exact_work <= EXACT_MAX_COMPARISONS:
        return PairMethod(
            "exact",
            f"auto: {exact_work:,} similarities, at most {EXACT_MAX_COMPARISONS:,} on a CPU",
        )
    return PairMethod(
        "clusters",
        f"auto: all pairs would be {exact_work:,} similarities, more than "
        f"{EXACT_MAX_COMPARISONS:,} on a CPU",
        pair_parameters(base, dim, threshold, seed=seed),
    )


@dataclass(frozen=True)
class FoundPairs:
    """Pairs (query index, base row, exact similarity) at or above a threshold, each once,
    and how many similarities were computed to find them."""

    pairs: Pairs
    comparisons: int


def find_pairs(
    vectors: np.ndarray,
    threshold: float,
    method: PairMethod,
    *,
    query_rows: np.ndarray | None = None,
    exact: Callable[[np.ndarray], np.ndarray] | None = None,
    device: str = "cpu",
    progress: StageProgress | None = None,
) -> FoundPairs:
    """The pairs of rows of ``vectors`` at or above ``threshold``: among all rows (each pair
    once, rows[k] < columns[k]), or of the rows ``query_rows`` against all (rows[k] indexes
    ``query_rows``; a row is not paired with itself). A float16 ``vectors`` finds the
    candidates, and ``exact`` (rows -> their float32 vectors) decides them."""
    if vectors.dtype == np.float32:
        return _find_pairs(vectors, threshold, method, query_rows, device, progress)
    if exact is None:
        raise ValueError("float16 vectors find candidates only: give their exact vectors")
    found = _find_pairs(vectors, threshold - FLOAT16_MARGIN, method, query_rows, device, progress)
    return FoundPairs(_decided(found.pairs, query_rows, threshold, exact), found.comparisons)


def _decided(
    candidates: Pairs,
    query_rows: np.ndarray | None,
    threshold: float,
    exact: Callable[[np.ndarray], np.ndarray],
) -> Pairs:
    """The candidates whose exact similarity is at or above ``threshold``, with it (decided
    ``DECIDE_PAIRS`` at a time: the stored vectors of all of them could be a large read)."""
    first = candidates.rows if query_rows is None else query_rows[candidates.rows]
    scores = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), DECIDE_PAIRS):
        ends = first[start : start + DECIDE_PAIRS], candidates.columns[start : start + DECIDE_PAIRS]
        rows = np.unique(np.concatenate(ends))
        stored = exact(rows)
        scores[start : start + len(ends[0])] = exact_scores(
            stored[np.searchsorted(rows, ends[0])], stored[np.searchsorted(rows, ends[1])]
        )
    kept = scores >= threshold
    return Pairs(candidates.rows[kept], candidates.columns[kept], scores[kept])


def _find_pairs(
    vectors: np.ndarray,
    threshold: float,
    method: PairMethod,
    query_rows: np.ndarray | None,
    device: str,
    progress: StageProgress | None,
) -> FoundPairs:
    count = vectors.shape[0]
    within = query_rows is None
    queries = count if query_rows is None else len(query_rows)
    if method.parameters is None:
        done = _stage(progress, "comparing", queries)
        if query_rows is None:
            found = list(pairs_above(vectors, vectors, threshold, query_offset=0, device=device,
                                     on_rows=done))  # fmt: skip
        else:
            found = [
                _without_self(pairs, query_rows)
                for pairs in pairs_above(
                    vectors[query_rows], vectors, threshold, device=device, on_rows=done
                )
            ]
        work = all_pairs_comparisons(queries, count, within=within)
        return FoundPairs(_joined(found), work)
    clustered = cluster_base(
        vectors, method.parameters, device=device, on_rows=_stage(progress, "clustering", count)
    )
    probes = clustered.probes if query_rows is None else clustered.probes[query_rows]
    result = pairs_in_clusters(
        vectors,
        probes,
        vectors,
        clustered,
        threshold,
        query_rows=np.arange(count) if query_rows is None else query_rows,
        device=device,
        on_rows=_stage(progress, "comparing", queries),
    )
    pairs = result.pairs
    if within:
        pairs = each_once(pairs)
    return FoundPairs(pairs, result.comparisons)


def _stage(progress: StageProgress | None, name: str, total: int) -> Callable[[int], None] | None:
    return None if progress is None else progress(name, total)


def _without_self(pairs: Pairs, query_rows: np.ndarray) -> Pairs:
    other = query_rows[pairs.rows] != pairs.columns
    return Pairs(pairs.rows[other], pairs.columns[other], pairs.scores[other])


def each_once(pairs: Pairs) -> Pairs:
    """Pairs among one set, each unordered pair once (smaller row first)."""
    if not len(pairs.rows):
        return pairs
    low = np.minimum(pairs.rows, pairs.columns).astype(np.int64)
    high = np.maximum(pairs.rows, pairs.columns).astype(np.int64)
    keys = np.stack([low, high], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    return Pairs(low[first], high[first], pairs.scores[first])


def _joined(found: list[Pairs]) -> Pairs:
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros(0, dtype=np.float64))
    return Pairs(
        np.concatenate([p.rows for p in found]).astype(np.int64),
        np.concatenate([p.columns for p in found]).astype(np.int64),
        np.concatenate([p.scores for p in found]),
    )
