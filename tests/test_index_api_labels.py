"""Labels set over HTTP (the page) survive index runs: the real indexer on the real embedded
store, with the stand-in model. The label is written as the service writes it
(``dinoseek.labelling.set_labels``); the HTTP route itself is tested in
``tests/test_label_routes.py``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.labelling import set_labels
from dinoseek.store import EdgeStore
from indexer.catalog import LabelSource
from indexer.catalog_cache import catalog_cache_path, load_catalog
from indexer.pipeline import IndexOptions, IndexSummary, index_folders
from tests.cli_runner import invoke
from tests.helpers import write_tree


def index(embedder: ImageEmbedder, root: Path, **overrides: Any) -> IndexSummary:
    options = IndexOptions(
        roots=(root / "photos",),
        collection="images",
        failures_report=root / "failures.jsonl",
        workers=0,
        progress="off",
        labels=LabelSource(from_folders=True),
        catalog_cache=catalog_cache_path(root / "data", "images"),
        **overrides,
    )
    with EdgeStore(root / "data") as store:
        return index_folders(embedder, store, options)


def payloads(root: Path) -> dict[str, dict[str, Any]]:
    """Each file's point's payload, by the file's name."""
    with EdgeStore(root / "data") as store:
        store.acquire("images")
        return {
            Path(path).name: point.payload
            for point in store.scroll("images")
            for path in point.payload["paths"]
        }


def label_over_http(root: Path, names: list[str], label: str | None) -> None:
    with EdgeStore(root / "data") as store:
        store.acquire("images")
        by_name = {Path(p.payload["path"]).name: p.id for p in store.scroll("images")}
        set_labels(store, "images", [by_name[name] for name in names], label)


@pytest.fixture
def root(tmp_path: Path, embedder: ImageEmbedder) -> Path:
    write_tree(tmp_path / "photos", per_class=3, classes=("cats", "dogs"))
    first = index(embedder, tmp_path)
    assert first.embedded == 6
    return tmp_path


def test_a_label_set_over_http_is_kept_by_later_runs(root: Path, embedder: ImageEmbedder) -> None:
    label_over_http(root, ["cats_0.jpg", "cats_1.jpg"], "tigers")
    label_over_http(root, ["dogs_0.jpg"], None)  # removed there: stays removed
    marked = payloads(root)
    assert marked["cats_0.jpg"]["label"] == "tigers"
    assert marked["cats_0.jpg"]["label_source"] == "api"
    assert marked["dogs_0.jpg"].get("label") is None

    # The labels changed the store's state: the saved catalog is of another state now, and
    # the run reads the payloads (and their marks) instead.
    summary = index(embedder, root)
    assert summary.catalog_source == "store"
    assert summary.labels_kept == 3
    assert summary.relabelled == 0
    assert payloads(root) == marked

    # The copy it saved holds the marks: the next run, from the copy, keeps them too, also
    # for a point whose payload it writes again (a file touched: the same content).
    cat = root / "photos" / "cats" / "cats_0.jpg"
    os.utime(cat, ns=(cat.stat().st_atime_ns, cat.stat().st_mtime_ns + 10**9))
    summary = index(embedder, root)
    assert summary.catalog_source == "saved copy"
    assert summary.unchanged == 6
    after = payloads(root)
    assert after["cats_0.jpg"]["label"] == "tigers"
    assert after["cats_0.jpg"]["label_source"] == "api"
    assert after["cats_0.jpg"]["files"][0]["mtime_ns"] == cat.stat().st_mtime_ns
    assert after["dogs_0.jpg"].get("label") is None
    assert after["cats_2.jpg"]["label"] == "cats"
    assert "label_source" not in after["cats_2.jpg"]
    with EdgeStore(root / "data") as store:
        store.acquire("images")
        copy = load_catalog(
            catalog_cache_path(root / "data", "images"), store.state_token("images")
        )
    assert copy is not None
    assert {p.api_label.label for p in copy.points.values() if p.api_label} == {"tigers", None}


def test_relabel_puts_the_runs_labels_back(root: Path, embedder: ImageEmbedder) -> None:
    label_over_http(root, ["cats_0.jpg"], "tigers")
    label_over_http(root, ["dogs_1.jpg"], None)
    summary = index(embedder, root, relabel=True)
    assert summary.relabelled == 2
    assert summary.labels_kept == 0
    after = payloads(root)
    assert after["cats_0.jpg"]["label"] == "cats"
    assert after["dogs_1.jpg"]["label"] == "dogs"
    assert not any("label_source" in payload for payload in after.values())
    assert index(embedder, root).relabelled == 0  # and it stays so


def test_a_label_set_over_http_equal_to_the_folders_is_not_counted_as_kept(
    root: Path, embedder: ImageEmbedder
) -> None:
    label_over_http(root, ["cats_0.jpg"], "cats")
    summary = index(embedder, root)
    assert summary.labels_kept == 0
    assert payloads(root)["cats_0.jpg"]["label_source"] == "api"


def test_relabel_needs_a_source_of_labels(root: Path) -> None:
    result = invoke(
        "index", root / "photos", "--relabel", "--model", "fake/dinov2", "--data-dir",
        root / "data",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--labels-from-folders or --labels-csv" in result.output


def test_the_cli_says_how_many_labels_it_kept(root: Path) -> None:
    label_over_http(root, ["dogs_2.jpg"], "wolves")
    result = invoke(
        "index", root / "photos", "--labels-from-folders", "--model", "fake/dinov2",
        "--data-dir", root / "data",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "labels kept        1   (set in the page; --relabel replaces them)" in result.output
    assert payloads(root)["dogs_2.jpg"]["label"] == "wolves"
