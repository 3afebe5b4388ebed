"""What an index run is given and what it reports: ``IndexOptions``, ``ModelOnDemand`` and
``IndexSummary`` (the run itself: ``indexer.pipeline``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.scan import ScanOptions
from dinoseek.settings import default_of
from dinoseek.space import EmbeddingSpace
from indexer.catalog import LabelSource
from indexer.ray_engine import RayEngine


@dataclass(frozen=True)
class IndexOptions:
    """What to index and how."""

    roots: tuple[Path, ...]
    collection: str
    failures_report: Path
    batch_size: int | None = None  # None: as the runtime decides (dinoseek.runtime)
    workers: int | None = None  # decode processes; None: as the runtime decides
    max_image_pixels: int = default_of("max_image_pixels")
    max_file_bytes: int = default_of("max_file_bytes")
    decode_timeout_s: float = default_of("decode_timeout_s")
    labels: LabelSource = field(default_factory=LabelSource)
    relabel: bool = False  # ``labels`` replace the labels set over HTTP (the page)
    scan: ScanOptions = field(default_factory=ScanOptions)
    prune: bool = True
    retry_failed: bool = False
    optimize: bool = True
    optimize_every: int = 100_000  # points written between index builds during the run
    progress: str = "auto"  # bar, log, off or auto
    progress_interval_s: float = 10.0
    gpu_decode: bool = False  # decode JPEGs with nvJPEG (CUDA only; see dinoseek.gpu_decode)
    ray: RayEngine | None = None  # decode and embed on a Ray cluster (indexer.ray_engine)
    catalog_cache: Path | None = None  # a saved copy of the catalog (indexer.catalog_cache)
    regions: bool = False  # give the collection region vectors (indexer.regions)


@dataclass
class IndexSummary:
    """What a run did. ``to_dict`` is the ``--json`` output."""

    collection: str
    store: str
    model: str
    scanned: int = 0
    embedded: int = 0
    unchanged: int = 0
    duplicates: int = 0
    relabelled: int = 0
    labels_kept: int = 0  # set over HTTP, other than ``labels`` says, and kept (no relabel)
    removed: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    known_failures_skipped: int = 0
    excluded: int = 0
    links_skipped: int = 0
    points: int = 0
    catalog_source: str = "store"  # or "saved copy": where the catalog was read from
    elapsed_s: float = 0.0
    embed_elapsed_s: float = 0.0
    optimize_s: float = 0.0
    images_per_s: float = 0.0
    regions_added: int = 0  # points given region vectors after they were stored
    regions_missing: int = 0  # points left without them (their file unreadable or changed)
    interrupted: bool = False
    failures_report: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelOnDemand:
    """The model of a run, loaded only once a file needs embedding: a run with nothing new
    never imports torch. Known before loading: its id and, when the collection exists, the
    collection's embedding space (``load`` checks the model against it)."""

    model_id: str
    collection_space: EmbeddingSpace | None
    load: Callable[[], ImageEmbedder]
