"""What goes into and comes out of a store: point ids, points, hits, queries, descriptions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dinoseek.errors import InvalidPointIdError
from dinoseek.settings import default_of
from dinoseek.space import EmbeddingSpace

# Namespace of dinoseek's point ids: uuid5(POINT_NAMESPACE, sha256 of the file's content).
# Changing it would re-key every collection ever built.
POINT_NAMESPACE = uuid.UUID("6f2d7a52-2b1c-5d8e-9a4f-0d1e5c3b7a90")


@dataclass(frozen=True)
class PayloadIndex:
    """A keyword index on a payload field, usable in exact-match filters.

    ``in_memory``: held in RAM (the field searches filter on most); otherwise read from disk
    through the page cache, which keeps a large collection's memory small. ``value_links``:
    HNSW links among the points of each value, for fast searches filtered by it; pointless
    where each value belongs to one content.
    """

    field: str
    in_memory: bool = False
    value_links: bool = True


PAYLOAD_INDEXES: tuple[PayloadIndex, ...] = (
    PayloadIndex("label", in_memory=True),
    PayloadIndex("roots"),
    PayloadIndex("paths", value_links=False),
    PayloadIndex("sha256", value_links=False),
    PayloadIndex("format"),
)
INDEXED_FIELDS: tuple[str, ...] = tuple(index.field for index in PAYLOAD_INDEXES)


class Unset:
    """The filter value of a payload field that is missing, null or an empty list: an
    unlabelled point is ``{"label": UNSET}``."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()
FilterValue = str | int | bool | Unset


def point_id_for_sha256(sha256_hex: str) -> str:
    """The deterministic point id of a file's content: uuid5 of its sha256."""
    return str(uuid.uuid5(POINT_NAMESPACE, sha256_hex.lower()))


POINT_ID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def validate_point_id(text: str) -> str:
    """Return the canonical form of a point id (a hyphenated UUID, in any case), or raise
    ``InvalidPointIdError``."""
    if not POINT_ID_PATTERN.fullmatch(str(text)):
        raise InvalidPointIdError(
            f"{text!r} is not a point id (point ids are UUIDs, as returned by search)"
        )
    return str(uuid.UUID(str(text)))


@dataclass(frozen=True)
class PointRecord:
    """A point to write: id, L2-normalised float32 vector, and payload; in a collection with
    regions (``VectorStore.ensure_regions``), also its region vectors (windows, dim)."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]
    regions: np.ndarray | None = None


@dataclass(frozen=True)
class StoredPoint:
    """A point read back from the store."""

    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class SearchHit:
    """One neighbour: its id, cosine similarity and payload; for a region query, also its
    region vectors (windows, dim), in the order of the collection's ``RegionSpec``."""

    id: str
    score: float
    payload: dict[str, Any]
    regions: np.ndarray | None = None


@dataclass(frozen=True)
class SearchQuery:
    """A nearest-neighbour query. ``filters`` are exact matches on payload fields that
    must hold; ``exclude`` are exact matches that must not. With ``regions``, ``vector`` is
    matched against each point's region vectors, a point scoring as its best window (MaxSim),
    and the hits bring their region vectors."""

    vector: np.ndarray
    top_k: int = 10
    offset: int = 0
    score_threshold: float | None = None
    filters: Mapping[str, FilterValue] = field(default_factory=dict)
    exclude_ids: tuple[str, ...] = ()
    exclude: Mapping[str, FilterValue] = field(default_factory=dict)
    regions: bool = False


QUANTIZATIONS = ("none", "int8")
QUANTIZATION_OVERSAMPLING = 2.0  # candidates fetched per result before rescoring


@dataclass(frozen=True)
class VectorIndex:
    """How collections index their vectors, and how searches walk the index.

    At creation (a collection keeps its own afterwards): ``hnsw_m`` (links per node) and
    ``hnsw_ef_construct`` (the candidate list while building) trade build time and memory for
    recall, Qdrant's defaults being 16 and 100; ``quantization="int8"`` keeps a
    scalar-quantized copy of every vector in memory for the search, whose candidates are then
    rescored with the original vectors. At search time, on every collection: ``hnsw_ef``, the
    candidate list of a query (more: better recall, slower).
    """

    hnsw_m: int = default_of("hnsw_m")
    hnsw_ef_construct: int = default_of("hnsw_ef_construct")
    quantization: str = default_of("quantization")
    hnsw_ef: int = default_of("hnsw_ef")

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, not {self.quantization!r}"
            )
        if not 4 <= self.hnsw_m <= 128 or not 4 <= self.hnsw_ef_construct <= 4096:
            raise ValueError("hnsw_m must be within 4-128 and hnsw_ef_construct within 4-4096")
        if not 1 <= self.hnsw_ef <= 4096:
            raise ValueError("hnsw_ef must be within 1-4096")

    @property
    def is_default(self) -> bool:
        """Created with Qdrant's own HNSW defaults (no explicit configuration)."""
        return (self.hnsw_m, self.hnsw_ef_construct) == (16, 100)


@dataclass(frozen=True)
class CollectionInfo:
    """What ``info`` shows about a collection."""

    name: str
    points: int
    indexed_vectors: int | None
    space: EmbeddingSpace | None


@dataclass(frozen=True)
class CollectionRename:
    """What ``rename_collection`` did. ``method``: ``moved``, the same data under the new
    name (the embedded store); ``copied``, the points and probes copied to a new collection,
    then the old one deleted (a Qdrant server, which cannot rename a collection)."""

    name: str
    new_name: str
    points: int
    probes: int
    method: Literal["moved", "copied"]


@dataclass(frozen=True)
class CollectionStatus:
    """A collection as ``info`` and ``GET /collections`` show it. ``points`` and
    ``indexed_vectors`` are None, and ``holder`` says who holds it, for an embedded collection
    that another process holds (its counts cannot be read meanwhile). ``regions``: it holds
    region vectors of a layout this version reads (search by region works on it)."""

    name: str
    points: int | None
    indexed_vectors: int | None
    space: EmbeddingSpace | None
    holder: dict[str, object] | None = None
    regions: bool = False


@dataclass(frozen=True)
class StoredProbe:
    """A probe's description (``info``: the probe's metadata and training report)."""

    name: str
    info: dict[str, Any]


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot archive written by ``SnapshotStore.create`` or read by ``restore``.

    ``collection`` is the collection it was written from or restored into;
    ``source_collection`` is the name recorded in the archive (they differ when a snapshot is
    restored under another name). ``points`` is the number of points in the collection;
    ``created_at`` is when the snapshot was taken (ISO 8601, UTC).
    """

    path: Path
    collection: str
    source_collection: str
    kind: str
    points: int
    size_bytes: int
    created_at: str
    model_id: str
    dim: int
    probes: tuple[str, ...] = ()
    format_version: int = 1
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``--json`` output)."""
        return {
            "path": str(self.path),
            "collection": self.collection,
            "source_collection": self.source_collection,
            "kind": self.kind,
            "points": self.points,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "model_id": self.model_id,
            "dim": self.dim,
            "probes": list(self.probes),
            "format_version": self.format_version,
            "warnings": list(self.warnings),
        }
