"""Region vectors in an index run (``dinoseek index --regions``).

A collection with regions stores, for every image, its region vectors beside its CLS
vector, both from one forward pass (``dinoseek.regions``). In a run:

- ``run_regions`` decides whether the run makes them: when asked (``--regions``; the
  collection then records their layout), or when the collection already records one (so
  that no image added later lacks them);
- ``embed_batch`` is the forward pass of a batch, with or without them;
- ``add_missing_regions`` gives the points that lack them (indexed before the collection
  had regions, or by a run that stopped) their region vectors: each point's file is read
  again and checked against the point's content hash, and only the region vectors are
  written. Points whose content is new in the run already have them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dinoseek.embedder_protocol import ImageEmbedder, Pixels, split_embedded
from dinoseek.errors import ConfigError, EmbeddingError
from dinoseek.regions import RegionSpec
from dinoseek.scan import ScannedFile
from dinoseek.store import VectorStore, point_id_for_sha256
from indexer.catalog import Catalog
from indexer.workers import DecodedFile, FailedFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """An image's CLS vector and, in a run with regions, its region vectors."""

    vector: np.ndarray
    regions: np.ndarray | None = None


def run_regions(
    store: VectorStore,
    collection: str,
    asked: bool,
    model: Callable[[], ImageEmbedder],
    *,
    ray: bool,
) -> RegionSpec | None:
    """The layout of the region vectors this run makes (None: none). The ``model`` is loaded
    only when the collection gets regions now (their layout follows its patch grid)."""
    recorded = store.collection_regions(collection)
    if recorded is None and not asked:
        return None
    if ray:
        raise ConfigError(
            "region vectors are made by the local engine only; index without --engine ray "
            f"(collection {collection!r} has or asks for regions)"
        )
    if recorded is not None:
        return recorded
    spec = RegionSpec(model().patch_grid)
    store.ensure_regions(collection, spec)
    return spec


def embed_batch(
    embedder: ImageEmbedder, pixels: Pixels, spec: RegionSpec | None
) -> list[Embedded | EmbeddingError]:
    """One forward pass: each image's vectors, or why it could not be embedded."""
    if spec is None:
        return [
            result if isinstance(result, EmbeddingError) else Embedded(result)
            for result in embedder.embed_each(pixels)
        ]
    return [
        result if isinstance(result, EmbeddingError) else Embedded(result.cls, result.pooled)
        for result in embedder.embed_each_pooled(pixels, spec.pooling_matrix())
    ]


class DecodeStage(Protocol):
    """What decodes files in a run (``indexer.decode``, ``indexer.stages.gpu``)."""

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, Any]]:
        """Decode ``files`` in order, until done or ``stop`` is set."""
        ...

    def close(self) -> None:
        """Stop the decoders."""
        ...


@dataclass
class RegionCounts:
    """Points given their region vectors by ``add_missing_regions``, and those left without
    (their file unreadable, changed or gone: the run's own planning deals with the file)."""

    added: int = 0
    missing: int = 0


def files_lacking_regions(
    store: VectorStore, collection: str, catalog: Catalog
) -> list[tuple[str, ScannedFile]]:
    """(point id, one of its recorded files) of each point without region vectors."""
    files = []
    for point_id in store.ids_without_regions(collection):
        point = catalog.points.get(point_id)
        if point is None:
            continue
        entry = min(point.file_entries(), key=lambda f: f.path)
        file = ScannedFile(entry.path, entry.root, entry.relative_path, entry.size, entry.mtime_ns)
        files.append((point_id, file))
    return files


def add_missing_regions(
    files: Sequence[tuple[str, ScannedFile]],
    stage: DecodeStage,
    embedder: ImageEmbedder,
    store: VectorStore,
    collection: str,
    spec: RegionSpec,
    *,
    batch_size: int,
    stop: threading.Event,
) -> RegionCounts:
    """Read each point's file again, check it is still the point's content, and write the
    region vectors of those that are (a batch at a time)."""
    counts = RegionCounts()
    expected = {file.path: point_id for point_id, file in files}
    batch: list[tuple[str, Pixels]] = []
    try:
        for file, result in stage.results([file for _, file in files], stop):
            if not isinstance(result, DecodedFile):
                reason = result.message if isinstance(result, FailedFile) else "no pixels"
                log.warning("no region vectors for %s: %s", file.path, reason)
                counts.missing += 1
            elif point_id_for_sha256(result.sha256) != expected[file.path]:
                log.warning("no region vectors for %s: its content changed", file.path)
                counts.missing += 1
            else:
                batch.append((expected[file.path], result.pixels))
            if len(batch) >= batch_size:
                _write(batch, embedder, store, collection, spec, counts)
                batch = []
        if not stop.is_set():
            _write(batch, embedder, store, collection, spec, counts)
    finally:
        stage.close()
    return counts


def _write(
    batch: list[tuple[str, Pixels]],
    embedder: ImageEmbedder,
    store: VectorStore,
    collection: str,
    spec: RegionSpec,
    counts: RegionCounts,
) -> None:
    if not batch:
        return
    embedded = embed_batch(embedder, embedder.stack([pixels for _, pixels in batch]), spec)
    made, failed = split_embedded([point_id for point_id, _ in batch], embedded)
    regions = {point_id: e.regions for point_id, e in made if e.regions is not None}
    counts.missing += len(failed) + len(made) - len(regions)
    store.set_regions(collection, regions)
    counts.added += len(regions)
