"""Vector stores: the embedded Qdrant Edge store and a Qdrant server, behind one interface.

``open_store`` is called by ``dinoseek.runtime`` only. ``ServerStore`` is imported on first
use: qdrant-client takes most of a second to import, which every command using the embedded
store would otherwise pay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dinoseek.errors import RegionsNotIndexedError, StoreLockedError
from dinoseek.settings import Settings
from dinoseek.store.edge import EdgeStore
from dinoseek.store.protocol import ProbeStore, SnapshotStore, VectorStore
from dinoseek.store.records import (
    POINT_ID_PATTERN,
    UNSET,
    CollectionInfo,
    CollectionRename,
    CollectionStatus,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    SnapshotInfo,
    StoredPoint,
    StoredProbe,
    Unset,
    VectorIndex,
    point_id_for_sha256,
    validate_point_id,
)

if TYPE_CHECKING:
    from dinoseek.store.server import ServerStore

__all__ = [
    "POINT_ID_PATTERN",
    "UNSET",
    "CollectionInfo",
    "CollectionRename",
    "CollectionStatus",
    "EdgeStore",
    "FilterValue",
    "PointRecord",
    "ProbeStore",
    "SearchHit",
    "SearchQuery",
    "ServerStore",
    "SnapshotInfo",
    "SnapshotStore",
    "StoredPoint",
    "StoredProbe",
    "Unset",
    "VectorIndex",
    "VectorStore",
    "collection_statuses",
    "open_store",
    "point_id_for_sha256",
    "validate_point_id",
]


def open_store(settings: Settings, *, owner: Mapping[str, Any] | None = None) -> VectorStore:
    """The server store when ``settings.qdrant_url`` is set, else the embedded store.

    ``owner`` describes this process in the embedded store's lock files (see ``edge_locks``).
    """
    if settings.qdrant_url:
        from dinoseek.store.server import ServerStore

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerStore.connect(
            settings.qdrant_url,
            api_key=api_key,
            shard_number=settings.qdrant_shards,
            replication_factor=settings.qdrant_replication_factor,
            write_consistency_factor=settings.qdrant_write_consistency,
            index=vector_index(settings),
        )
    return EdgeStore(settings.data_dir, owner=owner, index=vector_index(settings))


def vector_index(settings: Settings) -> VectorIndex:
    """How the settings say a new collection indexes its vectors."""
    return VectorIndex(
        settings.hnsw_m, settings.hnsw_ef_construct, settings.quantization, settings.hnsw_ef
    )


def collection_statuses(store: VectorStore) -> list[CollectionStatus]:
    """Every collection with its counts; for one that another process holds, its space and
    its holder instead (the embedded store cannot count it meanwhile)."""
    statuses = []
    for name in store.list_collections():
        try:
            info = store.collection_info(name)
        except StoreLockedError as error:
            space = store.collection_space(name)
            holder = dict(error.holder)
            statuses.append(
                CollectionStatus(name, None, None, space, holder, has_regions(store, name))
            )
            continue
        statuses.append(
            CollectionStatus(
                name,
                info.points,
                info.indexed_vectors,
                info.space,
                regions=has_regions(store, name),
            )
        )
    return statuses


def has_regions(store: VectorStore, name: str) -> bool:
    """Whether the collection holds region vectors of a layout this version reads (its
    layout is read from the collection's metadata: no lock needed)."""
    try:
        return store.collection_regions(name) is not None
    except RegionsNotIndexedError:  # a layout recorded by another version
        return False


def __getattr__(name: str) -> Any:
    if name == "ServerStore":
        from dinoseek.store.server import ServerStore

        return ServerStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
