"""A run that rewrites marks and fails half-way never leaves fewer marks than before
(issue 24: ``dedup --threshold nan`` removed every duplicate mark, then crashed writing
``dedup_threshold: NaN``).

The store is the real one (the embedded store; the server store on qdrant-client's
in-process mode), with its payload writes counted and the N-th one raising the error the
embedded store raises for a value it cannot hold. That raise is a stand-in: a real refusal
half-way through a run cannot be provoked here (the threshold is checked before any write
now, and the other values written are ids, strings and finite scores). Every N from the
first write to the last of an uninterrupted run is tried, then a rerun must reach the
uninterrupted run's marks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from qdrant_client import QdrantClient

from dinoseek.collection_vectors import read_vectors
from dinoseek.dedup import (
    AGAINST,
    GROUP_MARKS,
    PAYLOAD_FIELDS,
    THRESHOLD,
    Leak,
    apply_leaks,
    apply_plan,
    plan_dedup,
)
from dinoseek.errors import ConfigError
from dinoseek.store import EdgeStore, PointRecord, ServerStore, VectorStore
from tests.cli_runner import invoke, run_json
from tests.helpers import write_tree
from tests.test_store_contract import make_space

REFUSAL = "failed to convert NaN into payload number type"  # what Edge said to the NaN


class FailingWrites:
    """Mixed into a real store: payload writes are counted, and write number ``fail_at``
    raises instead of writing (None: never)."""

    fail_at: int | None = None
    writes: list[str]

    def _count_write(self, kind: str) -> None:
        self.writes.append(kind)
        if len(self.writes) == self.fail_at:
            raise ValueError(REFUSAL)

    def merge_payload(self, name: str, ids: Sequence[str], fields: Mapping[str, Any]) -> None:
        self._count_write("merge")
        super().merge_payload(name, ids, fields)  # type: ignore[misc]

    def delete_payload_fields(self, name: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        self._count_write("delete")
        super().delete_payload_fields(name, ids, keys)  # type: ignore[misc]

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        self._count_write("set")
        super().set_payload(name, point_id, payload)  # type: ignore[misc]


class FailingEdge(FailingWrites, EdgeStore):
    pass


class FailingServer(FailingWrites, ServerStore):
    pass


@pytest.fixture(params=["edge", "server"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens a new, empty store of the kind on each call; closes them all at the end."""
    opened: list[VectorStore] = []

    def make() -> FailingWrites:
        where = tmp_path / f"store-{len(opened)}"
        store: Any
        if request.param == "edge":
            store = FailingEdge(where)
        else:
            store = FailingServer(QdrantClient(path=str(where)))
        store.writes = []
        opened.append(store)
        return store  # type: ignore[no-any-return]

    yield make
    for store in opened:
        store.close()


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


# Group A at 0.95: a0 (the most pixels, kept), a1, a2 (a1 and a2 at 0.999, each ~0.96 from
# a0). Group B: b0, b1 at 0.97. Group C: c0, c1 at 0.999. At 0.99, a0 leaves A (a1, the
# larger file, is kept instead, so a1 and a2 get other marks), B dissolves, C stays.
POINTS = {
    "a0": (unit(0.97, -0.243, 0, 0), {"width": 99, "height": 99, "size": 900}),
    "a1": (unit(1, 0, 0, 0), {"width": 10, "height": 10, "size": 500}),
    "a2": (unit(0.999, 0.0447, 0, 0), {"width": 10, "height": 10, "size": 400}),
    "b0": (unit(0, 1, 0, 0), {"width": 10, "height": 10, "size": 100}),
    "b1": (unit(0, 0.97, 0.243, 0), {"width": 10, "height": 10, "size": 90}),
    "c0": (unit(0, 0, 1, 0), {"width": 10, "height": 10, "size": 100}),
    "c1": (unit(0.0447, 0, 0.999, 0), {"width": 10, "height": 10, "size": 90}),
    "s0": (unit(0, 0, 0, 1), {"width": 10, "height": 10, "size": 100}),
    "s1": (unit(-1, 0, 0, 0), {"width": 10, "height": 10, "size": 100}),
}
IDS = {name: f"00000000-0000-4000-8000-{n:012d}" for n, name in enumerate(POINTS)}
NAMES = {point_id: name for name, point_id in IDS.items()}


def filled(store: Any) -> Any:
    store.ensure_collection("images", make_space(4))
    store.acquire("images")
    store.upsert("images", [
        PointRecord(IDS[name], vector, {"path": f"/photos/{name}.jpg", **facts})
        for name, (vector, facts) in POINTS.items()
    ])  # fmt: skip
    return store


def dedup(store: Any, threshold: float) -> None:
    data = read_vectors(store, "images", PAYLOAD_FIELDS)
    apply_plan(store, "images", data, plan_dedup(data, threshold), threshold)


def marks(store: Any) -> dict[str, dict[str, Any]]:
    """Each point's group marks, by name."""
    return {
        NAMES[p.id]: {k: v for k, v in p.payload.items() if k in GROUP_MARKS}
        for p in store.scroll("images")
    }


def thresholds(store: Any) -> dict[str, Any]:
    return {NAMES[p.id]: p.payload.get(THRESHOLD) for p in store.scroll("images")}


def test_a_dedup_that_fails_at_any_write_keeps_every_mark(open_store: Any) -> None:
    clean = filled(open_store())
    dedup(clean, 0.95)
    old = marks(clean)
    assert sorted(name for name, m in old.items() if m) == ["a0", "a1", "a2", "b0", "b1",
                                                             "c0", "c1"]  # fmt: skip
    clean.writes.clear()
    dedup(clean, 0.99)
    new, new_thresholds, kinds = marks(clean), thresholds(clean), list(clean.writes)
    assert new["a1"]["duplicate_role"] == "keep"
    assert new["a2"]["duplicate_of"] == IDS["a1"]
    assert not new["a0"]
    assert not new["b0"]
    # Forget the changed points' thresholds; a1's new marks, then its stale ones removed; a2's
    # new marks; a0, b0 and b1 unmarked in one operation; the thresholds written back.
    assert kinds == ["delete", "merge", "delete", "merge", "delete", "merge"]
    removal = len(kinds) - 1 - kinds[::-1].index("delete")  # the one removal of whole marks
    for fail_at in range(1, len(kinds) + 1):
        store = filled(open_store())
        dedup(store, 0.95)
        store.writes.clear()
        store.fail_at = fail_at
        with pytest.raises(ValueError, match="NaN"):
            dedup(store, 0.99)
        store.fail_at = None
        now = marks(store)
        for name, before in old.items():
            if fail_at <= removal + 1 and before:  # the removal not done (or refused whole)
                assert now[name] == before or (new[name] and now[name].items() >= new[name].items())
            elif fail_at > removal + 1:
                assert now[name] == new[name], (fail_at, name)
        dedup(store, 0.99)
        assert marks(store) == new, fail_at
        assert thresholds(store) == new_thresholds, fail_at


TESTSET = [{"path": "/test/x.jpg"}, {"path": "/test/y.jpg"}]


def against(store: Any, leaks: dict[str, int]) -> None:
    """Mark ``name -> test image`` as ``dedup --against`` does (and unmark the rest)."""
    data = read_vectors(store, "images", PAYLOAD_FIELDS)
    row = {NAMES[point_id]: n for n, point_id in enumerate(data.ids)}
    found = [Leak(row[name], other, 0.99) for name, other in leaks.items()]
    apply_leaks(store, "images", data, found, "testset", lambda i: TESTSET[i])


def leaked(store: Any) -> dict[str, Any]:
    return {NAMES[p.id]: p.payload[AGAINST] for p in store.scroll("images")
            if AGAINST in p.payload}  # fmt: skip


def test_against_writes_every_new_mark_before_removing_an_old_one(open_store: Any) -> None:
    first, second = {"a0": 0, "b0": 1}, {"b0": 0, "c0": 1, "s0": 1}  # a0 unmarked, b0 changed
    clean = filled(open_store())
    against(clean, first)
    old = leaked(clean)
    clean.writes.clear()
    against(clean, second)
    new, kinds = leaked(clean), list(clean.writes)
    assert sorted(new) == ["b0", "c0", "s0"]
    assert kinds == ["set"] * 4  # one payload write per point
    for fail_at in range(1, len(kinds) + 1):
        store = filled(open_store())
        against(store, first)
        store.writes.clear()
        store.fail_at = fail_at
        with pytest.raises(ValueError, match="NaN"):
            against(store, second)
        store.fail_at = None
        assert leaked(store)["a0"] == old["a0"]  # removed last: after every new mark
        against(store, second)
        assert leaked(store) == new


def test_dedup_at_nan_changes_no_mark(tmp_path: Path) -> None:
    """The reproduction through the command: NaN is refused before any write."""
    photos = tmp_path / "photos"
    sources = write_tree(photos, per_class=3, classes=("a",))
    Image.open(sources[0]).save(photos / "a" / "copy.png")  # the same pixels
    data = tmp_path / "data"
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data, "-q")
    assert indexed.exit_code == 0, indexed.output
    assert run_json("dedup", "--data-dir", data, "--threshold", "0.99")["duplicates"] == 1
    with EdgeStore(data) as store:
        store.acquire("images")
        before = [p.payload for p in store.scroll("images")]
    for option in (("--threshold", "nan"), ("--against", photos, "--threshold", "nan")):
        refused = invoke("dedup", "--data-dir", data, *option)
        assert refused.exit_code == 2, refused.output
        assert "threshold" in refused.output
        assert "Traceback" not in refused.output
    with EdgeStore(data) as store:
        store.acquire("images")
        assert [p.payload for p in store.scroll("images")] == before
    with pytest.raises(ConfigError, match="threshold"):
        plan_dedup(read_vectors(filled(EdgeStore(tmp_path / "core")), "images", PAYLOAD_FIELDS),
                   float("nan"))  # fmt: skip
