"""The server store: qdrant-client against a Qdrant server (or cluster) at a URL.

The embedding space of a collection lives in Qdrant's collection metadata, under the key
``dinoseek``. Probes live in one vectorless collection, ``dinoseek-probes``: one point per
(collection, name), its bytes base64-encoded in the payload.

Writes use ``wait=True`` and are split so that each request stays well under
Qdrant's request-size limit. Transient failures (connection refused, timeouts, 502/503/504)
are retried with exponential backoff a bounded number of times, then surface as
``StoreUnavailableError``.

Tests run this class on qdrant-client's in-process mode (``QdrantClient(":memory:")``), which
speaks the same API; a real server needs only ``ServerStore.connect(url)``.

Snapshots (``snapshot``/``restore``) use Qdrant's collection snapshots over REST
(``dinoseek.store.qdrant_rest``), wrapped with the probes in dinoseek's archive format
(``dinoseek.store.snapshot``). The in-process mode has no snapshot API: there they raise a
``StoreError`` saying that a Qdrant server is needed.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from dinoseek.errors import (
    CollectionExistsError,
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    ProbeNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.protocol import (
    INDEXED_FIELDS,
    POINT_NAMESPACE,
    CollectionInfo,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    SnapshotInfo,
    StoredPoint,
    StoredProbe,
)
from dinoseek.store.qdrant_rest import SNAPSHOTS_DOCS, QdrantRest
from dinoseek.store.snapshot import (
    SERVER_DATA_DIR,
    SERVER_DATA_FILE,
    Member,
    ProbeFile,
    SnapshotManifest,
    check_kind,
    check_target,
    collect_probes,
    extract_archive,
    file_member,
    new_manifest,
    probe_members,
    read_manifest,
    read_probe_files,
    write_snapshot,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
METADATA_KEY = "dinoseek"
PROBES_COLLECTION = "dinoseek-probes"
# Qdrant refuses requests over 32 MiB by default; stay far below it.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
_TRANSIENT_STATUS = {408, 429, 502, 503, 504}


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
    ) -> None:
        """``rest`` overrides the snapshot endpoints derived from ``client`` (tests)."""
        self.client = client
        self._rest_override = rest
        self._description = description
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        self.write_consistency_factor = write_consistency_factor
        self.retry_delays_s = tuple(retry_delays_s)

    @classmethod
    def connect(
        cls, url: str, *, api_key: str | None = None, timeout_s: int = 30, **options: Any
    ) -> ServerStore:
        """A store on the Qdrant server at ``url`` (no request is made yet)."""
        client = QdrantClient(
            url=url, api_key=api_key, timeout=timeout_s, check_compatibility=False
        )
        return cls(client, description=f"Qdrant server at {url}", **options)

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
        validate_collection_name(name)
        if not self._call(self.client.collection_exists, name):
            try:
                self._call(
                    self.client.create_collection,
                    name,
                    vectors_config=models.VectorParams(
                        size=space.dim, distance=models.Distance.COSINE
                    ),
                    shard_number=self.shard_number,
                    replication_factor=self.replication_factor,
                    write_consistency_factor=self.write_consistency_factor,
                    metadata={METADATA_KEY: space.to_metadata()},
                )
            except StoreError:
                # Another writer may have created it in the meantime; that is fine if it is
                # compatible, which the check below decides.
                if not self._call(self.client.collection_exists, name):
                    raise
            self._create_payload_indexes(name)
        space.check_compatible(self.collection_space(name), name)

    def delete_collection(self, name: str) -> None:
        """Drop the collection on the server, and its probes."""
        self._collection(name)
        self._call(self.client.delete_collection, name)
        if self._call(self.client.collection_exists, PROBES_COLLECTION):
            condition = models.FieldCondition(key="collection", match=models.MatchValue(value=name))
            self._call(
                self.client.delete,
                PROBES_COLLECTION,
                points_selector=models.FilterSelector(filter=models.Filter(must=[condition])),
                wait=True,
            )

    # -- points -----------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        """Acknowledged by the server (``wait=True``), in requests under the size limit."""
        for chunk in _chunks_by_size(points):
            structs = [
                models.PointStruct(id=p.id, vector=_vector_list(p.vector), payload=p.payload)
                for p in chunk
            ]
            self._call(self.client.upsert, name, points=structs, wait=True)

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        """Overwrite one point's payload."""
        self._call(
            self.client.overwrite_payload,
            name,
            payload=dict(payload),
            points=models.PointIdsList(points=[point_id]),
            wait=True,
        )

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete by id."""
        if ids:
            selector = models.PointIdsList(points=list(ids))
            self._call(self.client.delete, name, points_selector=selector, wait=True)

    def get(
        self, name: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        """Retrieve by id, in the order asked."""
        if not ids:
            return []
        records = self._call(
            self.client.retrieve, name, list(ids), with_payload=True, with_vectors=with_vectors
        )
        by_id = {str(r.id): _stored_point(r.id, r.payload, r.vector) for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def search(self, name: str, query: SearchQuery) -> list[SearchHit]:
        """One nearest-neighbour query."""
        response = self._call(
            self.client.query_points,
            name,
            query=_vector_list(query.vector),
            limit=query.top_k,
            offset=query.offset,
            query_filter=_filter(query.filters, query.exclude_ids),
            score_threshold=query.score_threshold,
            with_payload=True,
        )
        return [_hit(p) for p in response.points]

    def search_many(self, name: str, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """One ``query_batch_points`` request."""
        if not queries:
            return []
        requests = [
            models.QueryRequest(
                query=_vector_list(q.vector),
                limit=q.top_k,
                offset=q.offset,
                filter=_filter(q.filters, q.exclude_ids),
                score_threshold=q.score_threshold,
                with_payload=True,
            )
            for q in queries
        ]
        responses = self._call(self.client.query_batch_points, name, requests=requests)
        return [[_hit(p) for p in response.points] for response in responses]

    def scroll(
        self,
        name: str,
        *,
        with_vectors: bool = False,
        filters: Mapping[str, FilterValue] | None = None,
        batch_size: int = 512,
    ) -> Iterator[StoredPoint]:
        """Pages through the collection with Qdrant's scroll offsets."""
        offset: Any = None
        while True:
            records, offset = self._call(
                self.client.scroll,
                name,
                scroll_filter=_filter(filters or {}, ()),
                limit=batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for record in records:
                yield _stored_point(record.id, record.payload, record.vector)
            if offset is None:
                return

    def count(self, name: str) -> int:
        """Exact count."""
        return int(self._call(self.client.count, name, exact=True).count)

    def optimize(self, name: str) -> None:
        """Nothing to do: a Qdrant server builds its index in the background."""

    def save_probe(self, collection: str, name: str, data: bytes, info: Mapping[str, Any]) -> None:
        """One point of ``dinoseek-probes`` (created on first use)."""
        self._collection(collection)
        name = validate_collection_name(name, kind="probe")
        if not self._call(self.client.collection_exists, PROBES_COLLECTION):
            self._call(self.client.create_collection, PROBES_COLLECTION, vectors_config={})
        payload = {
            "collection": collection,
            "name": name,
            "info": dict(info),
            "data": base64.b64encode(data).decode("ascii"),
        }
        point = models.PointStruct(id=_probe_id(collection, name), vector={}, payload=payload)
        self._call(self.client.upsert, PROBES_COLLECTION, points=[point], wait=True)

    def list_probes(self, collection: str) -> list[StoredProbe]:
        """Scrolls ``dinoseek-probes`` for this collection (without the bytes)."""
        self._collection(collection)
        if not self._call(self.client.collection_exists, PROBES_COLLECTION):
            return []
        condition = models.FieldCondition(
            key="collection", match=models.MatchValue(value=collection)
        )
        records, _ = self._call(
            self.client.scroll,
            PROBES_COLLECTION,
            scroll_filter=models.Filter(must=[condition]),
            limit=10_000,
            with_payload=["name", "info"],
        )
        probes = [
            StoredProbe(name=str(r.payload["name"]), info=dict(r.payload.get("info") or {}))
            for r in records
            if r.payload
        ]
        return sorted(probes, key=lambda p: p.name)

    def load_probe(self, collection: str, name: str) -> bytes:
        """Decodes the stored base64."""
        record = self._probe_record(collection, name, with_data=True)
        return base64.b64decode(str(record["data"]))

    def delete_probe(self, collection: str, name: str) -> None:
        """Deletes the probe's point."""
        self._probe_record(collection, name, with_data=False)
        selector = models.PointIdsList(points=[_probe_id(collection, name)])
        self._call(self.client.delete, PROBES_COLLECTION, points_selector=selector, wait=True)

    def _probe_record(self, collection: str, name: str, *, with_data: bool) -> dict[str, Any]:
        self._collection(collection)
        name = validate_collection_name(name, kind="probe")
        found = []
        if self._call(self.client.collection_exists, PROBES_COLLECTION):
            found = self._call(
                self.client.retrieve,
                PROBES_COLLECTION,
                [_probe_id(collection, name)],
                with_payload=True if with_data else ["name"],
            )
        if not found or not found[0].payload:
            existing = ", ".join(p.name for p in self.list_probes(collection)) or "none"
            raise ProbeNotFoundError(
                f"no probe {name!r} for collection {collection!r} (existing: {existing}); "
                "train one with `dinoseek probe train`"
            )
        return dict(found[0].payload)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self, collection: str, target: Path) -> SnapshotInfo:
        """Have Qdrant snapshot the collection, download it, and archive it with the probes.

        The server-side snapshot file is deleted afterwards, also on failure. In a cluster
        the snapshot holds only the node's own shards: that is reported as a warning.
        """
        target = Path(target)
        check_target(target)
        rest = self._rest()
        space = self.collection_space(collection)
        notes = self._cluster_warnings(rest, "snapshot")
        probes = collect_probes(self, collection)
        manifest = new_manifest("server", collection, space, self.count(collection), probes)
        remote = rest.create_snapshot(collection)
        download = target.with_name(f".{target.name}.{uuid.uuid4().hex}.download")
        try:
            rest.download_snapshot(collection, remote, download)
            members = [
                *probe_members(probes),
                Member(SERVER_DATA_DIR),
                file_member(SERVER_DATA_FILE, download),
            ]
            write_snapshot(target, manifest, members)
        finally:
            download.unlink(missing_ok=True)
            self._delete_remote_snapshot(rest, collection, remote.name)
        return manifest.info(target, collection, warnings=notes)

    def restore(self, collection: str, source: Path, *, replace: bool = False) -> SnapshotInfo:
        """Upload the archived Qdrant snapshot as ``collection``, then restore its probes.

        The archive is checked and extracted to a temporary directory first (``TMPDIR``
        needs room for it); Qdrant recovers the collection from the upload (``priority=
        snapshot``), replacing an existing one only with ``replace=True``.
        """
        name = validate_collection_name(collection)
        if name == PROBES_COLLECTION:
            raise ConfigError(f"{name!r} holds dinoseek's probes; choose another --collection")
        source = Path(source)
        check_kind(read_manifest(source), "server", source)
        rest = self._rest()
        if not replace and self._call(self.client.collection_exists, name):
            raise CollectionExistsError(
                f"collection {name!r} already exists on the {self.describe()}; pass --replace "
                "to overwrite it with the snapshot, or restore under another --collection"
            )
        notes = self._cluster_warnings(rest, "restore")
        with tempfile.TemporaryDirectory(prefix="dinoseek-restore-") as directory:
            staging = Path(directory) / "snapshot"
            manifest = extract_archive(source, staging, kind="server")
            probes = read_probe_files(staging, manifest.probes)
            rest.upload_snapshot(name, staging / SERVER_DATA_FILE)
        self._replace_probes(name, probes)
        points = self.count(name)
        checks = self._check_restored(name, manifest)
        if points != manifest.points:
            checks.append(
                f"the restored collection holds {points:,} points; the snapshot recorded "
                f"{manifest.points:,}"
            )
        for note in checks:
            log.warning("%s", note)
        return manifest.info(source, name, points=points, warnings=[*notes, *checks])

    def _rest(self) -> QdrantRest:
        if self._rest_override is not None:
            return self._rest_override
        return QdrantRest.from_client(self.client, description=self.describe())

    def _cluster_warnings(self, rest: QdrantRest, action: str) -> list[str]:
        """A warning when the server runs in distributed mode (see ``qdrant_rest``)."""
        try:
            enabled, peers = rest.cluster_enabled()
        except StoreError as exc:
            log.debug("cannot read the cluster status: %s", exc)
            return []
        if not enabled:
            return []
        scope = "holds only the shards stored on" if action == "snapshot" else "recovers only"
        note = (
            f"the {self.describe()} runs in distributed mode ({peers} peers): a collection "
            f"{action} {scope} the node it talks to, so it may be incomplete for a cluster; "
            f"back up every node with Qdrant's own snapshots: {SNAPSHOTS_DOCS}"
        )
        log.warning("%s", note)
        return [note]

    def _delete_remote_snapshot(self, rest: QdrantRest, collection: str, snapshot: str) -> None:
        try:
            rest.delete_snapshot(collection, snapshot)
        except StoreError as exc:
            log.warning(
                "could not delete the snapshot %s of %s on the %s (%s); delete it with "
                "DELETE /collections/%s/snapshots/%s",
                snapshot,
                collection,
                self.describe(),
                exc,
                collection,
                snapshot,
            )

    def _check_restored(self, name: str, manifest: SnapshotManifest) -> list[str]:
        """Warnings if the restored collection does not carry the snapshot's space."""
        try:
            space = self.collection_space(name)
        except CollectionMismatchError as exc:
            return [str(exc)]
        if (space.model_id, space.dim) != (manifest.space.model_id, manifest.space.dim):
            return [
                f"the restored collection records {space.model_id} ({space.dim}-d), the "
                f"snapshot's manifest {manifest.space.model_id} ({manifest.space.dim}-d)"
            ]
        return []

    def _replace_probes(self, collection: str, probes: Sequence[ProbeFile]) -> None:
        """Make the collection's probes exactly those of the snapshot."""
        keep = {p.name for p in probes}
        for stale in self.list_probes(collection):
            if stale.name not in keep:
                self.delete_probe(collection, stale.name)
        for probe in probes:
            self.save_probe(collection, probe.name, probe.data, probe.info)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # -- internals --------------------------------------------------------------------------

    def _collection(self, name: str) -> models.CollectionInfo:
        validate_collection_name(name)
        if not self._call(self.client.collection_exists, name):
            raise CollectionNotFoundError(self._not_found_message(f"no collection {name!r}"))
        return self._call(self.client.get_collection, name)

    def _not_found_message(self, reason: str) -> str:
        return f"{reason} on the {self.describe()}; run `dinoseek index` first or pass --collection"

    def _metadata(self, name: str) -> dict[str, Any] | None:
        metadata = self._collection(name).config.metadata or {}
        value = metadata.get(METADATA_KEY)
        return value if isinstance(value, dict) else None

    def _create_payload_indexes(self, name: str) -> None:
        with warnings.catch_warnings():
            # qdrant-client's in-process mode warns that it ignores payload indexes.
            warnings.simplefilter("ignore", UserWarning)
            for field_name in INDEXED_FIELDS:
                self._call(
                    self.client.create_payload_index,
                    name,
                    field_name=field_name,
                    field_schema=models.PayloadSchemaType.KEYWORD,
                    wait=True,
                )

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call qdrant-client, retrying transient failures, translating errors to the core's."""
        for attempt in range(len(self.retry_delays_s) + 1):
            try:
                return function(*args, **kwargs)
            except UnexpectedResponse as exc:
                if exc.status_code == 404:
                    raise CollectionNotFoundError(self._not_found_message(_reason(exc))) from None
                if exc.status_code not in _TRANSIENT_STATUS:
                    raise StoreError(
                        f"the {self.describe()} refused the request ({exc.status_code}): "
                        f"{_reason(exc)}"
                    ) from None
                failure: Exception = exc
            except (ResponseHandlingException, httpx.HTTPError, ConnectionError) as exc:
                failure = exc
            except ValueError as exc:
                # qdrant-client's in-process mode reports a missing collection this way.
                if "not found" in str(exc):
                    raise CollectionNotFoundError(self._not_found_message(str(exc))) from None
                raise StoreError(f"the {self.describe()} refused the request: {exc}") from None
            if attempt < len(self.retry_delays_s):
                delay = self.retry_delays_s[attempt]
                log.warning("%s: %s; retrying in %.1f s", self.describe(), failure, delay)
                time.sleep(delay)
        raise StoreUnavailableError(
            f"the {self.describe()} is unreachable ({failure}); check DINOSEEK_QDRANT_URL and "
            "that the server is running"
        )


def _probe_id(collection: str, name: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"probe:{collection}/{name}"))


def _reason(exc: UnexpectedResponse) -> str:
    try:
        body = json.loads(exc.content)
        return str(body.get("status", {}).get("error", body))
    except (ValueError, AttributeError):
        return exc.reason_phrase or str(exc)


def _chunks_by_size(points: Sequence[PointRecord]) -> Iterator[Sequence[PointRecord]]:
    start, size = 0, 0
    for index, point in enumerate(points):
        # JSON floats take about 12 bytes each; payloads are measured as JSON.
        estimate = 12 * int(point.vector.size) + len(json.dumps(point.payload)) + 64
        if index > start and size + estimate > MAX_REQUEST_BYTES:
            yield points[start:index]
            start, size = index, 0
        size += estimate
    if start < len(points):
        yield points[start:]


def _vector_list(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()  # type: ignore[no-any-return]


def _filter(filters: Mapping[str, FilterValue], exclude_ids: Sequence[str]) -> models.Filter | None:
    must: list[models.Condition] = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in filters.items()
    ]
    must_not: list[models.Condition] = (
        [models.HasIdCondition(has_id=list(exclude_ids))] if exclude_ids else []
    )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _hit(point: models.ScoredPoint) -> SearchHit:
    return SearchHit(id=str(point.id), score=float(point.score), payload=dict(point.payload or {}))


def _stored_point(point_id: Any, payload: Any, vector: Any) -> StoredPoint:
    array = None
    if isinstance(vector, list):
        array = np.asarray(vector, dtype=np.float32)
    return StoredPoint(id=str(point_id), payload=dict(payload or {}), vector=array)
