"""Labels by hand and the points to label next, in the core (``dinoseek.labelling``), on the
real embedded store with vectors of known classes and a probe trained on them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dinoseek.errors import ConfigError, InvalidPointIdError, PointNotFoundError
from dinoseek.labelling import check_label, least_certain, predict_points, set_labels
from dinoseek.probe import LinearProbe
from dinoseek.space import EmbeddingSpace
from dinoseek.store import UNSET, EdgeStore, PointRecord
from tests.test_clusters import DIM, grouped_vectors


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    with EdgeStore(tmp_path / "data") as opened:
        yield opened


def fill(store: EdgeStore, vectors: np.ndarray, labels: list[str | None]) -> list[str]:
    store.ensure_collection("images", EmbeddingSpace("test/model", DIM, {}, (1.0, 0.0)))
    ids = [str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))) for i in range(len(vectors))]
    records = [
        PointRecord(i, v, {"label": label, "path": f"/p/{n}.jpg"})
        for n, (i, v, label) in enumerate(zip(ids, vectors, labels, strict=True))
    ]
    store.upsert("images", records)
    return ids


def two_class_probe() -> LinearProbe:
    """Class a along the first axis, b along the second; calibrated as trained."""
    weight = np.zeros((2, DIM), dtype=np.float32)
    weight[0, 0] = weight[1, 1] = 10.0
    return LinearProbe(
        classes=("a", "b"), weight=weight, bias=np.zeros(2, np.float32), temperature=1.0,
        name="default", model_id="test/model", dim=DIM, accuracy=1.0,
        trained_at="2026-12-01T00:00:00+00:00", train_size=10,
    )  # fmt: skip


def test_labels_are_written_and_marked_and_a_missing_id_writes_nothing(store: EdgeStore) -> None:
    vectors, _ = grouped_vectors(2, 3)
    ids = fill(store, vectors, [None] * 6)
    assert set_labels(store, "images", [ids[0], ids[1], ids[0].upper()], "cats") == ids[:2]
    payloads = {p.id: p.payload for p in store.get("images", ids)}
    assert payloads[ids[0]]["label"] == "cats"
    assert payloads[ids[0]]["label_source"] == "api"
    assert payloads[ids[0]]["path"] == "/p/0.jpg"  # the rest of the payload kept
    assert "label_source" not in payloads[ids[2]]
    unknown = str(uuid.uuid4())
    with pytest.raises(PointNotFoundError, match=f"no point with id {unknown}"):
        set_labels(store, "images", [ids[2], unknown], "dogs")
    assert store.get("images", [ids[2]])[0].payload.get("label") is None  # nothing written
    assert set_labels(store, "images", [ids[3], unknown], "dogs", skip_missing=True) == [ids[3]]
    with pytest.raises(InvalidPointIdError):
        set_labels(store, "images", ["not-an-id"], "dogs")


@pytest.mark.parametrize("bad", ["", " cats", "cats ", "ca\nts", "\x00", "x" * 201])
def test_a_label_must_be_plain_text(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid label"):
        check_label(bad)


def test_labels_that_are_fine() -> None:
    assert check_label("big cats") == "big cats"
    assert check_label("chats noirs à poil long") == "chats noirs à poil long"
    assert check_label("x" * 200) == "x" * 200
    assert check_label(None) is None


def test_removing_a_label_makes_a_point_unlabelled_for_the_filter(store: EdgeStore) -> None:
    vectors, _ = grouped_vectors(2, 2)
    ids = fill(store, vectors, ["a", "a", "b", "b"])
    set_labels(store, "images", [ids[0]], None)
    unlabelled = {p.id for p in store.scroll("images", filters={"label": UNSET})}
    assert unlabelled == {ids[0]}


def test_the_least_certain_points_come_first(store: EdgeStore) -> None:
    """Points between the two classes' axes are the toss-ups; labelled points never come."""
    # From class a's axis to class b's, a little off the diagonal, so no two tie.
    angles = np.linspace(0, np.pi / 2, 11) + 0.02
    vectors = np.zeros((11, DIM), dtype=np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    labels: list[str | None] = [None] * 11
    labels[5] = "a"  # the most uncertain one is labelled: it is not offered
    ids = fill(store, vectors, labels)
    page = least_certain(store, "images", two_class_probe(), 3)
    assert page.candidates == 10
    assert [u.point.id for u in page.points] == [ids[4], ids[6], ids[3]]
    margins = [u.margin for u in page.points]
    assert margins[0] < margins[1] < margins[2]
    assert all(u.point.vector is None for u in page.points)
    assert page.points[0].predicted[0].label in ("a", "b")


def test_the_candidates_are_bounded_and_read_from_a_random_place(store: EdgeStore) -> None:
    vectors, _ = grouped_vectors(2, 50)
    ids = fill(store, vectors, [None] * 100)
    seen: set[str] = set()
    for _ in range(5):
        page = least_certain(store, "images", two_class_probe(), 200, max_candidates=30, page=7)
        assert page.candidates == 30
        assert len(page.points) == 30
        assert len({u.point.id for u in page.points}) == 30
        seen |= {u.point.id for u in page.points}
    assert len(seen) > 30  # other samples each time
    assert seen <= set(ids)


def test_predictions_for_stored_points(store: EdgeStore) -> None:
    vectors, groups = grouped_vectors(2, 3)
    ids = fill(store, vectors, [None] * 6)
    found = predict_points(store, "images", two_class_probe(), [*ids, str(uuid.uuid4())])
    assert sorted(found) == sorted(ids)  # the unknown id is left out
    for point_id, group in zip(ids, groups.tolist(), strict=True):
        (predicted,) = found[point_id]
        assert predicted.label == "ab"[group]
        assert predicted.probability > 0.9
        assert predicted.method == "probe"
