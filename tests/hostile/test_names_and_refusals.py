"""File names that are not UTF-8, and points the store refuses: reported, never the end of a
run (one such file once aborted every ``dinoseek index`` run, losing its whole batch)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.store import EdgeStore, PointRecord
from indexer.catalog import LabelSource
from indexer.pipeline import IndexOptions, IndexSummary, index_folders
from indexer.report import load_failures
from tests.helpers import write_tree


def run(
    embedder: ImageEmbedder,
    store: EdgeStore,
    photos: Path,
    report: Path,
    labels: LabelSource | None = None,
) -> IndexSummary:
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        failures_report=report,
        batch_size=4,
        workers=0,
        progress="off",
        labels=labels or LabelSource(),
    )
    return index_folders(embedder, store, options)


def test_a_name_that_is_not_utf8_is_reported_and_the_run_goes_on(
    tmp_path: Path, embedder: ImageEmbedder
) -> None:
    photos = tmp_path / "photos"
    good = write_tree(photos, per_class=3, classes=("a",))
    latin1 = os.path.join(os.fsencode(photos / "a"), b"caf\xe9.jpg")  # "café" in latin-1
    with open(latin1, "wb") as handle:
        handle.write(good[0].read_bytes()[:-1] + b"\xd9")  # another content, still a JPEG
    report = tmp_path / "failures.jsonl"
    with EdgeStore(tmp_path / "data") as store:
        first = run(embedder, store, photos, report)
        second = run(embedder, store, photos, report)
    assert (first.embedded, first.points) == (3, 3)
    assert first.failed_by_reason == {"file_name_not_utf8": 1}
    (record,) = load_failures(report).values()
    assert os.fsencode(record.path) == latin1  # the report reads back to the same name
    assert "caf\\xe9.jpg" in record.message
    assert "rename it" in record.message
    json.loads(report.read_text())  # one valid JSON line
    assert (second.embedded, second.known_failures_skipped) == (0, 1)


class RefusingStore(EdgeStore):
    """The embedded store, refusing points whose first path contains ``refused`` as a store
    would refuse a payload it cannot hold. Stands in for a refusal that cannot be provoked
    here once the indexer screens file names itself."""

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        if any("/refused/" in str(p.payload.get("path")) for p in points):
            raise TypeError("failed to extract field Helper::String.0")
        super().upsert(name, points)


def test_a_point_the_store_refuses_fails_alone(tmp_path: Path, embedder: ImageEmbedder) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=4, classes=("a", "refused"))
    with RefusingStore(tmp_path / "data") as store:
        summary = run(embedder, store, photos, tmp_path / "failures.jsonl")
        assert store.count("images") == 4
    assert summary.embedded == 4
    assert summary.points == 4
    assert summary.failed_by_reason == {"store_refused": 4}
    failures = load_failures(tmp_path / "failures.jsonl")
    assert all("refused/" in path for path in failures)
    assert all("the store refused it (TypeError" in r.message for r in failures.values())


class RefusingPayloads(EdgeStore):
    """The embedded store, refusing payload updates of points under ``refused/``."""

    def set_payload(self, name: str, point_id: str, payload: dict[str, object]) -> None:
        if "/refused/" in str(payload.get("path")):
            raise TypeError("failed to extract field Helper::String.0")
        super().set_payload(name, point_id, payload)


def test_a_refused_payload_update_leaves_no_stale_point(
    tmp_path: Path, embedder: ImageEmbedder
) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=3, classes=("a", "refused"))
    report = tmp_path / "failures.jsonl"
    with RefusingPayloads(tmp_path / "data") as store:
        run(embedder, store, photos, report)
        relabelled = run(embedder, store, photos, report, LabelSource(from_folders=True))
        assert store.count("images") == 3  # the refused points are gone, not left stale
        labels = {r.payload["label"] for r in store.scroll("images")}
    assert labels == {"a"}
    assert relabelled.failed_by_reason == {"store_refused": 3}
    assert all("refused/" in path for path in load_failures(report))


class Broken(EdgeStore):
    """The embedded store, refusing every write as a full disk would."""

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        raise OSError(28, "No space left on device")


def test_a_failing_store_ends_the_run(tmp_path: Path, embedder: ImageEmbedder) -> None:
    """Not a bad point: the run ends with the store's error rather than reporting every
    file as refused (and skipping them on later runs)."""
    photos = tmp_path / "photos"
    write_tree(photos, per_class=3, classes=("a",))
    with Broken(tmp_path / "data") as store, pytest.raises(OSError, match="No space left"):
        run(embedder, store, photos, tmp_path / "failures.jsonl")
    assert not (tmp_path / "failures.jsonl").exists()


@pytest.mark.parametrize("error", ["unavailable", "locked"])
def test_an_unreachable_store_still_ends_the_run(
    tmp_path: Path, embedder: ImageEmbedder, error: str
) -> None:
    from dinoseek.errors import StoreLockedError, StoreUnavailableError

    class Gone(EdgeStore):
        def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
            if error == "unavailable":
                raise StoreUnavailableError("the Qdrant server is unreachable")
            raise StoreLockedError("held by another process")

    photos = tmp_path / "photos"
    write_tree(photos, per_class=2, classes=("a",))
    with Gone(tmp_path / "data") as store, pytest.raises((StoreUnavailableError, StoreLockedError)):
        run(embedder, store, photos, tmp_path / "failures.jsonl")
