"""The server store: qdrant-client against a Qdrant server (or cluster) at a URL.

The embedding space of a collection lives in Qdrant's collection metadata, under the key
``dinoseek``. Probes live in their own collection (``server_probes``), snapshots go through
Qdrant's snapshot API (``server_snapshots``). Writes use ``wait=True`` and are split so that
each request stays well under Qdrant's request-size limit; every call is retried on
transient failures (``server_calls``).

Any number of processes may use a server collection at once: acquiring one only checks that
it exists, and is tracked so that the rules of ``dinoseek.store.protocol`` hold here as on
the embedded store.

Tests run this class on qdrant-client's in-process mode (``QdrantClient(":memory:")`` or a
path), which speaks the same API; a real server needs only ``ServerStore.connect(url)``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from dinoseek.errors import (
    CollectionMismatchError,
    CollectionNotAcquiredError,
    CollectionNotFoundError,
    StoreError,
)
from dinoseek.regions import REGION_VECTOR, RegionSpec
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.qdrant_rest import QdrantRest
from dinoseek.store.records import (
    PAYLOAD_INDEXES,
    CollectionInfo,
    CollectionRename,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    StoredPoint,
    VectorIndex,
)
from dinoseek.store.server_calls import RETRY_DELAYS_S, QdrantCalls
from dinoseek.store.server_probes import ServerProbes
from dinoseek.store.server_regions import (
    WITHOUT_REGIONS,
    add_region_vector,
    hit,
    point_struct,
    query_vector,
    recorded_spec,
    region_vectors,
    regions_of,
    stored_point,
)
from dinoseek.store.server_rename import copy_server_collection
from dinoseek.store.server_requests import (
    METADATA_KEY,
    chunks_by_size,
    hnsw_config,
    quantization_config,
    search_params,
    server_filter,
)
from dinoseek.store.server_snapshots import ServerSnapshots


class ServerStore:
    """``VectorStore`` on a Qdrant server through qdrant-client."""

    def __init__(
        self,
        client: QdrantClient,
        *,
        description: str = "Qdrant server",
        shard_number: int | None = None,
        replication_factor: int | None = None,
        write_consistency_factor: int | None = None,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        rest: QdrantRest | None = None,
        index: VectorIndex | None = None,
    ) -> None:
        """``rest`` overrides the snapshot endpoints derived from ``client`` (tests);
        ``index`` is how collections created here index their vectors."""
        self.client = client
        self.index = index or VectorIndex()
        self._search_params = search_params(self.index)
        self._description = description
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        self.write_consistency_factor = write_consistency_factor
        self._call = QdrantCalls(description, retry_delays_s)
        self._acquired: set[str] = set()
        self._guard = threading.Lock()
        self._probes = ServerProbes(client, self._call, self._collection)
        self._snapshots = ServerSnapshots(self, rest)

    @classmethod
    def connect(
        cls, url: str, *, api_key: str | None = None, timeout_s: int = 30, **options: Any
    ) -> ServerStore:
        """A store on the Qdrant server at ``url`` (no request is made yet)."""
        client = QdrantClient(
            url=url, api_key=api_key, timeout=timeout_s, check_compatibility=False
        )
        return cls(client, description=f"Qdrant server at {url}", **options)

    @property
    def probes(self) -> ServerProbes:
        """The probes collection."""
        return self._probes

    @property
    def snapshots(self) -> ServerSnapshots:
        """Qdrant's collection snapshots, archived with the probes."""
        return self._snapshots

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """E.g. ``Qdrant server at http://qdrant:6333``."""
        return self._description

    # -- collections ------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """All collections that dinoseek created (those carrying its metadata)."""
        names = [c.name for c in self._call(self.client.get_collections).collections]
        return sorted(name for name in names if self._metadata(name) is not None)

    def exists(self, name: str) -> bool:
        """Whether a collection of that name exists (dinoseek's or not)."""
        validate_collection_name(name)
        return bool(self._call(self.client.collection_exists, name))

    def collection_space(self, name: str) -> EmbeddingSpace:
        """Read from the collection's metadata."""
        metadata = self._metadata(name)
        if metadata is None:
            raise CollectionMismatchError(
                f"collection {name!r} on the {self.describe()} was not created by dinoseek "
                "(it has no dinoseek metadata); choose another --collection"
            )
        return EmbeddingSpace.from_metadata(metadata)

    def collection_info(self, name: str) -> CollectionInfo:
        """Counts from Qdrant's collection info."""
        info = self._collection(name)
        return CollectionInfo(
            name=name,
            points=int(info.points_count or 0),
            indexed_vectors=info.indexed_vectors_count,
            space=self.collection_space(name),
        )

    def ensure_collection(self, name: str, space: EmbeddingSpace) -> None:
        """Create with cosine distance, metadata and payload indexes; or check compatibility."""
        if not self.exists(name):
            try:
                self._call(
                    self.client.create_collection,
                    name,
                    vectors_config=models.VectorParams(
                        size=space.dim, distance=models.Distance.COSINE
                    ),
                    hnsw_config=hnsw_config(self.index),
                    quantization_config=quantization_config(self.index),
                    shard_number=self.shard_number,
                    replication_factor=self.replication_factor,
                    write_consistency_factor=self.write_consistency_factor,
                    metadata={METADATA_KEY: space.to_metadata()},
                )
            except StoreError:
                # Another writer may have created it in the meantime; that is fine if it is
                # compatible, which the check below decides.
                if not self.exists(name):
                    raise
            self._create_payload_indexes(name)
        space.check_compatible(self.collection_space(name), name)
        self.acquire(name)

    def delete_collection(self, name: str) -> None:
        """Drop the collection on the server, and its probes."""
        self._collection(name)
        self._call(self.client.delete_collection, name)
        self._probes.delete_all(name)
        self.release(name)

    def collection_regions(self, name: str) -> RegionSpec | None:
        """Read from the collection's metadata."""
        return recorded_spec(self._metadata(name))

    def ensure_regions(self, name: str, spec: RegionSpec) -> None:
        """Add and configure the region multivector, then record ``spec`` in the metadata
        (a failure in between leaves a vector the next call configures again)."""
        self._check_acquired(name)
        recorded = self.collection_regions(name)
        if recorded is not None:
            spec.check_same(name, recorded)
            return
        space = self.collection_space(name)
        add_region_vector(self.client, self._call, name, space.dim, quantization_config(self.index))
        metadata = {METADATA_KEY: {**(self._metadata(name) or {}), "regions": spec.to_metadata()}}
        self._call(self.client.update_collection, name, metadata=metadata)

    def rename_collection(self, name: str, new_name: str) -> CollectionRename:
        """A Qdrant server cannot rename a collection: a copy, then a delete
        (``server_rename``)."""
        validate_collection_name(new_name)
        return copy_server_collection(self, name, new_name)

    def collection_metadata(self, name: str) -> dict[str, Any]:
        """The collection's Qdrant metadata, whole (dinoseek's key and any other)."""
        return dict(self._collection(name).config.metadata or {})

    def create_collection_like(self, name: str, like: str, *, metadata: Mapping[str, Any]) -> None:
        """Create ``name`` with the vector, index and shard configuration of ``like``, its
        payload indexes, and ``metadata``."""
        config = self._collection(like).config
        hnsw = config.hnsw_config
        vectors = config.params.vectors
        regions = vectors.get(REGION_VECTOR) if isinstance(vectors, dict) else None
        if isinstance(vectors, dict):  # the CLS vector, unnamed; the regions added below
            vectors = vectors[""]
        self._call(
            self.client.create_collection,
            name,
            vectors_config=vectors,
            hnsw_config=models.HnswConfigDiff(m=hnsw.m, ef_construct=hnsw.ef_construct),
            quantization_config=config.quantization_config,
            shard_number=config.params.shard_number,
            replication_factor=config.params.replication_factor,
            write_consistency_factor=config.params.write_consistency_factor,
            metadata=dict(metadata),
        )
        if regions is not None:  # as ``ensure_regions`` adds them
            add_region_vector(
                self.client, self._call, name, regions.size, regions.quantization_config
            )
        self._create_payload_indexes(name)

    def set_space(
        self,
        name: str,
        space: EmbeddingSpace,
        *,
        clear: str,
        regions: RegionSpec | None = None,
    ) -> None:
        """Record ``space`` (and ``regions``, the layout of its region vectors) as the
        collection's (from then on it is listed), and remove the metadata key ``clear``."""
        recorded = space.to_metadata()
        if regions is not None:
            recorded = {**recorded, "regions": regions.to_metadata()}
        metadata = {METADATA_KEY: recorded, clear: None}
        self._call(self.client.update_collection, name, metadata=metadata)

    def acquire(self, name: str) -> None:
        """Check that the collection exists; then this process may use its points."""
        if name in self._acquired:
            return
        self._collection(name)
        with self._guard:
            self._acquired.add(name)

    def release(self, name: str) -> None:
        """Forget the acquisition (a server has no lock to drop)."""
        with self._guard:
            self._acquired.discard(name)

    # -- points -----------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord], *, named: bool = False) -> None:
        """Acknowledged by the server (``wait=True``), in requests under the size limit.
        ``named``: every CLS vector under its name, for a collection created with both
        vectors (``create_collection_like``)."""
        self._check_acquired(name)
        for chunk in chunks_by_size(points):
            structs = [point_struct(p, named) for p in chunk]
            self._call(self.client.upsert, name, points=structs, wait=True)

    def set_regions(self, name: str, regions: Mapping[str, Any]) -> None:
        """One update-vectors call for the points still stored."""
        stored = {point.id for point in self.get(name, list(regions))}
        vectors = [region_vectors(i, value) for i, value in regions.items() if i in stored]
        if vectors:
            self._call(self.client.update_vectors, name, points=vectors, wait=True)

    def regions_of(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The region vectors of the points of ``ids`` that have them, by id."""
        self._check_acquired(name)
        if not ids:
            return {}
        records = self._call(
            self.client.retrieve, name, list(ids), with_payload=False, with_vectors=[REGION_VECTOR]
        )
        return regions_of(records)

    def ids_without_regions(self, name: str) -> Iterator[str]:
        """Scrolled by Qdrant's ``has_vector`` condition."""
        self._check_acquired(name)
        offset: Any = None
        while True:
            records, offset = self._call(
                self.client.scroll, name, scroll_filter=WITHOUT_REGIONS, limit=1024, offset=offset
            )
            yield from (str(record.id) for record in records)
            if offset is None:
                return

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        """Overwrite one point's payload."""
        self._check_acquired(name)
        self._call(
            self.client.overwrite_payload,
            name,
            payload=dict(payload),
            points=models.PointIdsList(points=[point_id]),
            wait=True,
        )

    def merge_payload(self, name: str, ids: Sequence[str], fields: Mapping[str, Any]) -> None:
        """One set-payload call for all of ``ids``."""
        self._check_acquired(name)
        if ids:
            self._call(
                self.client.set_payload,
                name,
                payload=dict(fields),
                points=models.PointIdsList(points=list(ids)),
                wait=True,
            )

    def delete_payload_fields(self, name: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        """One delete-payload call for all of ``ids``."""
        self._check_acquired(name)
        if ids and keys:
            self._call(
                self.client.delete_payload,
                name,
                keys=list(keys),
                points=models.PointIdsList(points=list(ids)),
                wait=True,
            )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete by id."""
        self._check_acquired(name)
        if ids:
            selector = models.PointIdsList(points=list(ids))
            self._call(self.client.delete, name, points_selector=selector, wait=True)

    def get(
        self, name: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        """Retrieve by id, in the order asked."""
        self._check_acquired(name)
        if not ids:
            return []
        records = self._call(
            self.client.retrieve, name, list(ids), with_payload=True, with_vectors=with_vectors
        )
        by_id = {str(r.id): stored_point(r.id, r.payload, r.vector) for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def search(self, name: str, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """One ``query_batch_points`` request."""
        self._check_acquired(name)
        if not queries:
            return []
        requests = [
            models.QueryRequest(
                query=query_vector(q.vector, q.regions),
                using=REGION_VECTOR if q.regions else None,
                with_vector=[REGION_VECTOR] if q.regions else False,
                limit=q.top_k,
                offset=q.offset,
                filter=server_filter(q.filters, q.exclude_ids, q.exclude),
                score_threshold=q.score_threshold,
                with_payload=True,
                params=self._search_params,
            )
            for q in queries
        ]
        responses = self._call(self.client.query_batch_points, name, requests=requests)
        return [[hit(p) for p in response.points] for response in responses]

    def scroll(
        self,
        name: str,
        *,
        with_vectors: bool = False,
        filters: Mapping[str, FilterValue] | None = None,
        batch_size: int = 512,
        start: str | None = None,
    ) -> Iterator[StoredPoint]:
        """Pages through the collection with Qdrant's scroll offsets."""
        self._check_acquired(name)
        offset: Any = start
        while True:
            records, offset = self._call(
                self.client.scroll,
                name,
                scroll_filter=server_filter(filters or {}, ()),
                limit=batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for record in records:
                yield stored_point(record.id, record.payload, record.vector)
            if offset is None:
                return

    def count(self, name: str) -> int:
        """Exact count."""
        self._check_acquired(name)
        return int(self._call(self.client.count, name, exact=True).count)

    def state_token(self, name: str) -> str | None:
        """None: other clients of the server write without this process knowing."""
        self._check_acquired(name)
        return None

    def optimize(self, name: str) -> None:
        """Nothing to do: a Qdrant server builds its index in the background."""
        self._check_acquired(name)

    def close(self) -> None:
        """Close the client's connections."""
        self._acquired.clear()
        self.client.close()

    # -- internals --------------------------------------------------------------------------

    def _check_acquired(self, name: str) -> None:
        if name not in self._acquired:
            raise CollectionNotAcquiredError(
                f"collection {name!r} on the {self.describe()} was not acquired by this "
                "process; acquire it before reading or writing its points"
            )

    def _collection(self, name: str) -> models.CollectionInfo:
        if not self.exists(name):
            raise CollectionNotFoundError(self._call.not_found_message(f"no collection {name!r}"))
        return self._call(self.client.get_collection, name)

    def _metadata(self, name: str) -> dict[str, Any] | None:
        metadata = self._collection(name).config.metadata or {}
        value = metadata.get(METADATA_KEY)
        return value if isinstance(value, dict) else None

    def _create_payload_indexes(self, name: str) -> None:
        with warnings.catch_warnings():
            # qdrant-client's in-process mode warns that it ignores payload indexes.
            warnings.simplefilter("ignore", UserWarning)
            for index in PAYLOAD_INDEXES:
                self._call(
                    self.client.create_payload_index,
                    name,
                    field_name=index.field,
                    field_schema=models.KeywordIndexParams(
                        type=models.KeywordIndexType.KEYWORD,
                        on_disk=not index.in_memory,
                        enable_hnsw=index.value_links,
                    ),
                    wait=True,
                )
