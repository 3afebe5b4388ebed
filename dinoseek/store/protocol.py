"""The store interface and its records, shared by the embedded and the server implementation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dinoseek.errors import InvalidPointIdError
from dinoseek.space import EmbeddingSpace

# Namespace of dinoseek's point ids: uuid5(POINT_NAMESPACE, sha256 of the file's content).
POINT_NAMESPACE = uuid.UUID("6f2d7a52-2b1c-5d8e-9a4f-0d1e5c3b7a90")

# Payload fields that get an index (keyword) and can be used in exact-match filters.
INDEXED_FIELDS: tuple[str, ...] = ("label", "roots", "paths", "sha256", "format")

# Filter names users write (``--filter root=/photos``) -> the payload field they match.
# ``path`` and ``root`` match any of a point's files, since one content can live in several.
FILTER_FIELDS: dict[str, str] = {
    "label": "label",
    "root": "roots",
    "path": "paths",
    "format": "format",
    "sha256": "sha256",
}

FilterValue = str | int | bool


def point_id_for_sha256(sha256_hex: str) -> str:
    """The deterministic point id of a file's content: uuid5 of its sha256."""
    return str(uuid.uuid5(POINT_NAMESPACE, sha256_hex.lower()))


def validate_point_id(text: str) -> str:
    """Return the canonical form of a point id, or raise ``InvalidPointIdError``."""
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise InvalidPointIdError(
            f"{text!r} is not a point id (point ids are UUIDs, as returned by search)"
        ) from None


@dataclass(frozen=True)
class PointRecord:
    """A point to write: id, L2-normalised float32 vector, and payload."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    """A point read back from the store."""

    id: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class SearchHit:
    """One neighbour: its id, cosine similarity and payload."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchQuery:
    """A nearest-neighbour query. ``filters`` are exact matches on payload fields."""

    vector: np.ndarray
    top_k: int = 10
    offset: int = 0
    score_threshold: float | None = None
    filters: Mapping[str, FilterValue] = field(default_factory=dict)
    exclude_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectionInfo:
    """What ``info`` shows about a collection."""

    name: str
    points: int
    indexed_vectors: int | None
    space: EmbeddingSpace | None


@dataclass(frozen=True)
class StoredProbe:
    """A probe's description (``info``: the probe's metadata and training report)."""

    name: str
    info: dict[str, Any]


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot archive written by ``VectorStore.snapshot`` or read by ``restore``.

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


@runtime_checkable
class VectorStore(Protocol):
    """Where the vectors live: the embedded Qdrant Edge store or a Qdrant server."""

    def __enter__(self) -> VectorStore:
        """Use as a context manager: ``close()`` on exit."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Calls ``close()``."""
        ...

    def describe(self) -> str:
        """A short human description, e.g. ``embedded store at ./dinoseek-data``."""
        ...

    def list_collections(self) -> list[str]:
        """Names of the collections, sorted."""
        ...

    def collection_space(self, name: str) -> EmbeddingSpace:
        """The embedding space a collection was built with (``CollectionNotFoundError``)."""
        ...

    def collection_info(self, name: str) -> CollectionInfo:
        """Counts and embedding space of a collection (``CollectionNotFoundError``)."""
        ...

    def ensure_collection(self, name: str, space: EmbeddingSpace) -> None:
        """Create the collection for ``space``, or check that it was built for it."""
        ...

    def delete_collection(self, name: str) -> None:
        """Remove a collection and its data (``CollectionNotFoundError``)."""
        ...

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        """Insert or replace points; acknowledged (durable) when it returns."""
        ...

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        """Replace a point's whole payload, keeping its vector."""
        ...

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        ...

    def get(
        self, name: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        """Fetch points by id, in the order given; unknown ids are left out."""
        ...

    def search(self, name: str, query: SearchQuery) -> list[SearchHit]:
        """Nearest neighbours of ``query.vector``, best first."""
        ...

    def search_many(self, name: str, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """Several searches planned together; one result list per query, in order."""
        ...

    def scroll(
        self,
        name: str,
        *,
        with_vectors: bool = False,
        filters: Mapping[str, FilterValue] | None = None,
        batch_size: int = 512,
    ) -> Iterator[StoredPoint]:
        """Every point of a collection (optionally filtered), in id order."""
        ...

    def count(self, name: str) -> int:
        """Number of points in a collection."""
        ...

    def optimize(self, name: str) -> None:
        """Build the search index after bulk writes (blocking where the backend needs it)."""
        ...

    def save_probe(self, collection: str, name: str, data: bytes, info: Mapping[str, Any]) -> None:
        """Store (or replace) a named probe of a collection: its bytes and a JSON-able info."""
        ...

    def list_probes(self, collection: str) -> list[StoredProbe]:
        """The probes of a collection, by name."""
        ...

    def load_probe(self, collection: str, name: str) -> bytes:
        """A probe's bytes (``ProbeNotFoundError``)."""
        ...

    def delete_probe(self, collection: str, name: str) -> None:
        """Remove a probe (``ProbeNotFoundError``)."""
        ...

    def snapshot(self, collection: str, target: Path) -> SnapshotInfo:
        """Write a backup of the collection (data, embedding space, probes) to ``target``.

        ``target`` is one archive (see ``dinoseek.store.snapshot``); it is written under a
        temporary name and renamed when complete, and an existing file is never overwritten.
        """
        ...

    def restore(self, collection: str, source: Path, *, replace: bool = False) -> SnapshotInfo:
        """Recreate ``collection`` from the snapshot archive ``source``.

        The snapshot may have been taken of a collection with another name. An existing
        collection is refused (``CollectionExistsError``) unless ``replace`` is true.
        """
        ...

    def close(self) -> None:
        """Flush and release everything (locks included)."""
        ...


def search_by_id(
    store: VectorStore,
    name: str,
    point_id: str,
    *,
    top_k: int = 10,
    offset: int = 0,
    score_threshold: float | None = None,
    filters: Mapping[str, FilterValue] | None = None,
) -> list[SearchHit]:
    """Neighbours of an already stored point (itself excluded), without a model call."""
    from dinoseek.errors import PointNotFoundError

    point_id = validate_point_id(point_id)
    found = store.get(name, [point_id], with_vectors=True)
    if not found or found[0].vector is None:
        raise PointNotFoundError(f"no point with id {point_id} in collection {name!r}")
    query = SearchQuery(
        vector=found[0].vector,
        top_k=top_k,
        offset=offset,
        score_threshold=score_threshold,
        filters=dict(filters or {}),
        exclude_ids=(point_id,),
    )
    return store.search(name, query)
