"""Probes on a Qdrant server: one vectorless collection, ``dinoseek-probes``, for all of them.

Each probe is one point, keyed by (collection, name), with its bytes base64-encoded in the
payload beside its info. The collection is created on first use.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from qdrant_client import QdrantClient, models

from dinoseek.errors import ProbeNotFoundError
from dinoseek.messages import short_list
from dinoseek.settings import validate_collection_name
from dinoseek.store.records import POINT_NAMESPACE, StoredProbe
from dinoseek.store.server_calls import QdrantCalls

PROBES_COLLECTION = "dinoseek-probes"


class ServerProbes:
    """``ProbeStore`` on a Qdrant server."""

    def __init__(
        self, client: QdrantClient, call: QdrantCalls, check_collection: Callable[[str], object]
    ) -> None:
        """``check_collection(name)`` raises ``CollectionNotFoundError`` for a missing one."""
        self.client = client
        self._call = call
        self._check_collection = check_collection

    def save(self, collection: str, name: str, data: bytes, info: Mapping[str, Any]) -> None:
        """One point of ``dinoseek-probes`` (created on first use)."""
        self._check_collection(collection)
        name = validate_collection_name(name, kind="probe")
        if not self._exists():
            self._call(self.client.create_collection, PROBES_COLLECTION, vectors_config={})
        payload = {
            "collection": collection,
            "name": name,
            "info": dict(info),
            "data": base64.b64encode(data).decode("ascii"),
        }
        point = models.PointStruct(id=_probe_id(collection, name), vector={}, payload=payload)
        self._call(self.client.upsert, PROBES_COLLECTION, points=[point], wait=True)

    def list(self, collection: str) -> list[StoredProbe]:
        """Scrolls ``dinoseek-probes`` for this collection (without the bytes)."""
        self._check_collection(collection)
        if not self._exists():
            return []
        records, _ = self._call(
            self.client.scroll,
            PROBES_COLLECTION,
            scroll_filter=_of_collection(collection),
            limit=10_000,
            with_payload=["name", "info"],
        )
        probes = [
            StoredProbe(name=str(r.payload["name"]), info=dict(r.payload.get("info") or {}))
            for r in records
            if r.payload
        ]
        return sorted(probes, key=lambda p: p.name)

    def load(self, collection: str, name: str) -> bytes:
        """Decodes the stored base64."""
        record = self._record(collection, name, with_data=True)
        return base64.b64decode(str(record["data"]))

    def delete(self, collection: str, name: str) -> None:
        """Deletes the probe's point."""
        self._record(collection, name, with_data=False)
        selector = models.PointIdsList(points=[_probe_id(collection, name)])
        self._call(self.client.delete, PROBES_COLLECTION, points_selector=selector, wait=True)

    def delete_all(self, collection: str) -> None:
        """Every probe of ``collection`` (when the collection itself is deleted)."""
        if self._exists():
            self._call(
                self.client.delete,
                PROBES_COLLECTION,
                points_selector=models.FilterSelector(filter=_of_collection(collection)),
                wait=True,
            )

    def _exists(self) -> bool:
        return bool(self._call(self.client.collection_exists, PROBES_COLLECTION))

    def _record(self, collection: str, name: str, *, with_data: bool) -> dict[str, Any]:
        self._check_collection(collection)
        name = validate_collection_name(name, kind="probe")
        found = []
        if self._exists():
            found = self._call(
                self.client.retrieve,
                PROBES_COLLECTION,
                [_probe_id(collection, name)],
                with_payload=True if with_data else ["name"],
            )
        if not found or not found[0].payload:
            existing = short_list(p.name for p in self.list(collection))
            raise ProbeNotFoundError(
                f"no probe {name!r} for collection {collection!r} (existing: {existing}); "
                "train one with `dinoseek probe train`"
            )
        return dict(found[0].payload)


def _probe_id(collection: str, name: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"probe:{collection}/{name}"))


def _of_collection(collection: str) -> models.Filter:
    condition = models.FieldCondition(key="collection", match=models.MatchValue(value=collection))
    return models.Filter(must=[condition])
