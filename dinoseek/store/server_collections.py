"""What the Qdrant server store's helper modules (snapshots, rename) need of ``ServerStore``:
the store's interface, its client and its collections' metadata. A protocol, so that they do
not import the store that imports them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from qdrant_client import QdrantClient

from dinoseek.regions import RegionSpec
from dinoseek.space import EmbeddingSpace
from dinoseek.store.protocol import VectorStore
from dinoseek.store.records import PointRecord


class ServerCollections(VectorStore, Protocol):
    """The parts of ``ServerStore`` that ``server_snapshots`` and ``server_rename`` use."""

    @property
    def client(self) -> QdrantClient: ...

    def exists(self, name: str) -> bool: ...

    def collection_metadata(self, name: str) -> dict[str, Any]: ...

    def create_collection_like(
        self, name: str, like: str, *, metadata: Mapping[str, Any]
    ) -> None: ...

    def set_space(
        self,
        name: str,
        space: EmbeddingSpace,
        *,
        clear: str,
        regions: RegionSpec | None = None,
    ) -> None: ...

    def upsert(self, name: str, points: Sequence[PointRecord], *, named: bool = False) -> None: ...

    def regions_of(self, name: str, ids: Sequence[str]) -> dict[str, np.ndarray]: ...
