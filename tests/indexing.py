"""A labelled tree of photos indexed into an embedded store, as the service tests need it."""

from __future__ import annotations

from pathlib import Path

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.store import EdgeStore
from indexer.catalog import LabelSource
from indexer.pipeline import IndexOptions, index_folders
from tests.helpers import write_tree


def indexed_tree(
    root: Path,
    embedder: ImageEmbedder,
    *,
    per_class: int,
    classes: tuple[str, ...],
    regions: bool = False,
) -> tuple[Path, Path]:
    """(data dir, photos dir): ``per_class`` photos of each class under ``root / photos``,
    labelled by folder and indexed into ``root / data`` (in this process, no workers), with
    region vectors when asked."""
    write_tree(root / "photos", per_class=per_class, classes=classes)
    return index_tree(root, embedder, regions=regions)


def index_tree(root: Path, embedder: ImageEmbedder, *, regions: bool = False) -> tuple[Path, Path]:
    """Index (again) whatever is under ``root / photos`` into ``root / data``, labelled by
    folder; (data dir, photos dir)."""
    photos = root / "photos"
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        failures_report=root / "failures.jsonl",
        workers=0,
        progress="off",
        labels=LabelSource(from_folders=True),
        regions=regions,
    )
    with EdgeStore(root / "data") as store:
        index_folders(embedder, store, options)
    return root / "data", photos
