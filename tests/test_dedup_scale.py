"""Dedup at scale: the groups of both methods (every pair, or through clusters) against a
plain reference on random graphs, incremental reruns, decisions at exactly the threshold,
and the method a run states.

The graphs are random geometric graphs: a few hundred unit vectors in a low dimension at a
high threshold, so that many pairs chain into groups of many members. The reference is a
breadth-first search over the pairs numpy finds by comparing everything in float64.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from dinoseek import pair_search
from dinoseek.collection_vectors import CollectionVectors, read_vectors
from dinoseek.dedup import PAYLOAD_FIELDS, apply_plan, plan_dedup
from dinoseek.errors import ConfigError
from dinoseek.pair_search import EXACT_MAX_COMPARISONS, choose_method
from dinoseek.payload_table import PayloadTable
from dinoseek.store import EdgeStore, PointRecord
from tests.helpers import unit_vectors
from tests.test_store_contract import make_space


def reference_groups(vectors: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """Connected components (two points or more) of the pairs at or above ``threshold``,
    rounded to 6 digits as dinoseek shows them, by breadth-first search."""
    similar = np.round(vectors.astype(np.float64) @ vectors.T.astype(np.float64), 6)
    linked = similar >= threshold
    seen: set[int] = set()
    groups = set()
    for start in range(len(vectors)):
        if start in seen:
            continue
        members, queue = {start}, deque([start])
        while queue:
            for other in np.flatnonzero(linked[queue.popleft()]).tolist():
                if other not in members:
                    members.add(other)
                    queue.append(other)
        seen |= members
        if len(members) > 1:
            groups.add(frozenset(members))
    return groups


def in_memory(vectors: np.ndarray) -> CollectionVectors:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(len(vectors))]
    payloads = [{"path": f"/p/{i:04d}.jpg", "width": 10, "height": 10} for i in range(len(ids))]
    return CollectionVectors(ids, vectors, PayloadTable.of(payloads))


def groups_of(plan_groups: list, data: CollectionVectors) -> set[frozenset[int]]:  # type: ignore[type-arg]
    return {frozenset([g.keep, *g.others]) for g in plan_groups}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_groups_are_the_components_of_every_pair(seed: int) -> None:
    vectors = unit_vectors(400, 3, seed=seed)
    expected = reference_groups(vectors, 0.992)
    assert max(len(g) for g in expected) >= 12  # chains: groups of many members
    data = in_memory(vectors)
    plan = plan_dedup(data, 0.992, method="exact")
    assert groups_of(plan.groups, data) == expected
    assert plan.method.name == "exact"
    assert plan.comparisons == 400 * 399 // 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustered_groups_match_the_reference(seed: int) -> None:
    """Through clusters every candidate is decided exactly: a pair found is a true pair, and
    on these graphs none is missed."""
    vectors = unit_vectors(400, 3, seed=seed)
    expected = reference_groups(vectors, 0.992)
    data = in_memory(vectors)
    plan = plan_dedup(data, 0.992, method="clusters")
    assert plan.method.name == "clusters"
    assert plan.method.parameters is not None
    assert plan.comparisons < 400 * 399 // 2
    assert groups_of(plan.groups, data) == expected


@pytest.mark.parametrize("method", ["exact", "clusters"])
def test_float16_candidates_decided_a_few_pairs_at_a_time_give_the_same_groups(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's way: candidates found on a float16 copy, decided on the float32 vectors
    fetched a block of pairs at a time (7 here, so hundreds of blocks)."""
    monkeypatch.setattr(pair_search, "DECIDE_PAIRS", 7)
    vectors = unit_vectors(400, 3, seed=5)
    expected = reference_groups(vectors, 0.992)
    exact = in_memory(vectors)
    fetched: list[int] = []

    def fetch(ids: Sequence[str]) -> dict[str, np.ndarray]:
        fetched.append(len(ids))
        return {i: exact.vectors[exact.ids.index(i)] for i in ids}

    half = CollectionVectors(exact.ids, vectors.astype(np.float16), exact.payloads, fetch)
    plan = plan_dedup(half, 0.992, method=method)
    assert groups_of(plan.groups, half) == expected
    assert max(fetched) <= 2 * 7
    assert len(fetched) > 50
    for group in plan.groups:  # the scores reported are the float32 vectors'
        kept = vectors[group.keep].astype(np.float64)
        for other, score in zip(group.others, group.scores, strict=True):
            assert score == pytest.approx(float(vectors[other].astype(np.float64) @ kept), abs=1e-6)


@pytest.mark.parametrize("method", ["exact", "clusters"])
def test_an_incremental_rerun_ends_with_the_groups_of_a_full_run(
    method: str, tmp_path: Path
) -> None:
    """The first 380 points, then 20 more: the rerun compares only the 20, and the groups
    are those of all 400 compared at once."""
    vectors = unit_vectors(400, 3, seed=7)
    expected = reference_groups(vectors, 0.992)
    with EdgeStore(tmp_path / "data") as store:
        store.ensure_collection("images", make_space(3))
        store.acquire("images")
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(400)]

        def add(rows: range) -> None:
            store.upsert("images", [PointRecord(ids[i], vectors[i], {"path": f"/{i}.jpg"})
                                    for i in rows])  # fmt: skip

        add(range(380))
        first = read_vectors(store, "images", PAYLOAD_FIELDS)
        apply_plan(store, "images", first, plan_dedup(first, 0.992, method=method), 0.992)
        add(range(380, 400))
        second = read_vectors(store, "images", PAYLOAD_FIELDS)
        plan = plan_dedup(second, 0.992, method=method)
        assert len(plan.compared) == 20
        assert plan.method.name == method
        assert plan.comparisons <= 20 * 400
        rows = [int(i.rsplit("-", 1)[1]) for i in second.ids]
        found = {frozenset(rows[i] for i in group) for group in groups_of(plan.groups, second)}
    assert found == expected


def test_a_pair_exactly_at_the_threshold_is_in() -> None:
    """0.95 in float32 is 0.94999999; its product with a unit vector as shown is 0.95."""
    first = np.array([1.0, 0.0], dtype=np.float32)
    second = np.array([0.95, np.sqrt(1 - 0.95**2)], dtype=np.float32)
    third = np.array([0.0, 1.0], dtype=np.float32)
    data = in_memory(np.stack([first, second, third]))
    for method in ("exact", "clusters"):
        plan = plan_dedup(data, 0.95, method=method)
        assert groups_of(plan.groups, data) == {frozenset({0, 1})}, method
        assert plan.groups[0].scores == (0.95,)


def test_identical_vectors_are_one_group_at_threshold_one() -> None:
    """A vector whose float32 product with itself falls below 1.0 is still at 1.0 with its
    copies."""
    vectors = unit_vectors(200, 768, seed=3)
    low = next(v for v in vectors[20:] if np.float32(v @ v) < 1.0)
    data = in_memory(np.stack([low, low, low, *vectors[:20]]))
    for method in ("exact", "clusters"):
        plan = plan_dedup(data, 1.0, method=method)
        assert groups_of(plan.groups, data) == {frozenset({0, 1, 2})}, method
        assert plan.groups[0].scores == (1.0, 1.0)


def test_the_method_is_chosen_by_the_work_and_stated() -> None:
    small = choose_method("auto", 20_000, 20_000, 768, 0.95, "cpu", within=True)
    assert small.name == "exact"
    assert f"199,990,000 similarities, at most {EXACT_MAX_COMPARISONS:,}" in small.reason
    large = choose_method("auto", 100_000, 100_000, 768, 0.95, "cpu", within=True)
    assert large.name == "clusters"
    assert large.parameters is not None
    described = large.describe()
    assert described["parameters"]["clusters"] == 548
    assert described["parameters"]["margin"] == pytest.approx(2.2 * np.sqrt(0.1 / 768), 1e-5)
    rerun = choose_method("auto", 200, 1_000_000, 768, 0.95, "cpu", within=False)
    assert rerun.name == "exact"  # 200 new points against a million: every pair
    assert choose_method("auto", 10**6, 10**6, 768, 0.95, "cuda", within=True).name == "exact"
    assert choose_method("exact", 10**6, 10**6, 768, 0.95, "cpu", within=True).reason == (
        "asked for"
    )


def test_similar_pairs_are_listed_apart_and_never_grouped() -> None:
    base = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    near = np.array([0.99, np.sqrt(1 - 0.99**2), 0.0], dtype=np.float32)
    similar = np.array([0.9, 0.0, np.sqrt(1 - 0.81)], dtype=np.float32)
    data = in_memory(np.stack([base, near, similar, np.array([0, 0, 1], np.float32)]))
    plan = plan_dedup(data, 0.95, method="exact", similar=0.85)
    assert groups_of(plan.groups, data) == {frozenset({0, 1})}
    assert [(p.first, p.second, p.score) for p in plan.similar] == [
        (0, 2, 0.9),
        (1, 2, round(float(np.float64(near) @ np.float64(similar)), 6)),
    ]
    assert len(plan.compared) == 4
    with pytest.raises(ConfigError, match="below --threshold"):
        plan_dedup(data, 0.95, similar=0.95)


def test_without_vectors_keeps_what_the_writes_need_and_lets_the_matrix_go() -> None:
    data = in_memory(unit_vectors(50, 3, seed=1))
    light = data.without_vectors()
    assert light.ids == data.ids
    assert list(light.payloads) == list(data.payloads)
    assert light.vectors.shape == (0, 3)
    assert light.fetch is None
    assert not np.shares_memory(light.vectors, data.vectors)
