"""The store interface, in three parts: points and collections, probes, and snapshots.

Both backends (``EdgeStore``, the embedded Qdrant Edge; ``ServerStore``, a Qdrant server)
implement ``VectorStore``; each supplies its own ``ProbeStore`` and ``SnapshotStore``.

One rule holds everywhere: a process **acquires** a collection before it reads or writes its
points, and nothing takes it as a side effect. On the embedded store, acquiring takes the
collection's lock (one process at a time, ``StoreLockedError`` for the others) and opens its
shard; on a server it checks that the collection exists. Reading or writing points of a
collection that was not acquired raises ``CollectionNotAcquiredError``: a bug, never a
silent lock. ``collection_info``, probes and snapshots need no acquisition.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dinoseek.regions import RegionSpec
from dinoseek.space import EmbeddingSpace
from dinoseek.store.records import (
    CollectionInfo,
    CollectionRename,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    SnapshotInfo,
    StoredPoint,
    StoredProbe,
)


@runtime_checkable
class ProbeStore(Protocol):
    """Named linear probes of a collection (bytes and a JSON-able info)."""

    def save(self, collection: str, name: str, data: bytes, info: Mapping[str, Any]) -> None:
        """Store (or replace) a probe."""
        ...

    def list(self, collection: str) -> list[StoredProbe]:
        """The probes of a collection, by name."""
        ...

    def load(self, collection: str, name: str) -> bytes:
        """A probe's bytes (``ProbeNotFoundError``)."""
        ...

    def delete(self, collection: str, name: str) -> None:
        """Remove a probe (``ProbeNotFoundError``)."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """Backups of one collection in one archive (format: ``dinoseek.store.archive``)."""

    def create(self, collection: str, target: Path) -> SnapshotInfo:
        """Write a snapshot of the collection (data, embedding space, probes) to ``target``,
        under a temporary name renamed when complete; an existing file is never overwritten."""
        ...

    def restore(
        self,
        collection: str,
        source: Path,
        *,
        replace: bool = False,
        max_bytes: int | None = None,
    ) -> SnapshotInfo:
        """Recreate ``collection`` from the archive ``source`` (possibly taken of a collection
        of another name). An existing collection is refused (``CollectionExistsError``)
        unless ``replace`` is true; an archive whose files add up to more than ``max_bytes``,
        or that would not fit on the disk, is refused before it is extracted that far."""
        ...


@runtime_checkable
class VectorStore(Protocol):
    """Where the vectors live: the embedded Qdrant Edge store or a Qdrant server."""

    @property
    def probes(self) -> ProbeStore:
        """The probes of this store's collections."""
        ...

    @property
    def snapshots(self) -> SnapshotStore:
        """Snapshots of this store's collections."""
        ...

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
        """Counts and embedding space of a collection, acquired or not (a collection held
        by another process raises ``StoreLockedError``)."""
        ...

    def ensure_collection(self, name: str, space: EmbeddingSpace) -> None:
        """Create the collection for ``space`` or check that it was built for it; either way
        it is acquired afterwards."""
        ...

    def delete_collection(self, name: str) -> None:
        """Remove a collection, its data and its probes (``CollectionNotFoundError``)."""
        ...

    def rename_collection(self, name: str, new_name: str) -> CollectionRename:
        """Give a collection, with its data and its probes, the name ``new_name``
        (``CollectionNotFoundError``; ``CollectionExistsError`` when the name is taken;
        ``StoreLockedError`` while another process holds an embedded collection)."""
        ...

    def collection_regions(self, name: str) -> RegionSpec | None:
        """How the collection's region vectors are made, or None when it has none."""
        ...

    def ensure_regions(self, name: str, spec: RegionSpec) -> None:
        """Give an acquired collection region vectors of ``spec`` (their multivector, not
        searched through HNSW, quantized as the collection's vectors are), recorded with
        its embedding space; a no-op when it has them, ``RegionsNotIndexedError`` when it
        has another layout's."""
        ...

    def set_regions(self, name: str, regions: Mapping[str, Any]) -> None:
        """Set the region vectors (windows, dim) of existing points, by id, keeping their
        vector and payload (an id no longer stored is skipped)."""
        ...

    def ids_without_regions(self, name: str) -> Iterator[str]:
        """The points of a collection with regions that have no region vectors yet."""
        ...

    def acquire(self, name: str) -> None:
        """Take the collection for this process (idempotent). ``CollectionNotFoundError``,
        or ``StoreLockedError`` while another process holds an embedded collection."""
        ...

    def release(self, name: str) -> None:
        """Give an acquired collection back (flushed); a no-op for one not acquired."""
        ...

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        """Insert or replace points; acknowledged (durable) when it returns."""
        ...

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        """Replace a point's whole payload, keeping its vector."""
        ...

    def merge_payload(self, name: str, ids: Sequence[str], fields: Mapping[str, Any]) -> None:
        """Set ``fields`` in the payload of every point of ``ids``, keeping the rest."""
        ...

    def delete_payload_fields(self, name: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        """Remove ``keys`` from the payload of every point of ``ids``."""
        ...

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        ...

    def get(
        self, name: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        """Fetch points by id, in the order given; unknown ids are left out."""
        ...

    def search(self, name: str, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """Nearest neighbours of each query's vector, best first; planned together."""
        ...

    def scroll(
        self,
        name: str,
        *,
        with_vectors: bool = False,
        filters: Mapping[str, FilterValue] | None = None,
        batch_size: int = 512,
        start: str | None = None,
    ) -> Iterator[StoredPoint]:
        """Every point of a collection (optionally filtered), in id order; from the first id
        at or after ``start`` when it is given (any UUID, stored or not)."""
        ...

    def count(self, name: str) -> int:
        """Number of points in an acquired collection."""
        ...

    def state_token(self, name: str) -> str | None:
        """A token of an acquired collection's content now: the same token later means that
        nothing was written in between. None where the store cannot tell (a server that
        other clients write to)."""
        ...

    def optimize(self, name: str) -> None:
        """Build the search index after bulk writes (blocking where the backend needs it)."""
        ...

    def close(self) -> None:
        """Flush and release everything (locks included)."""
        ...
