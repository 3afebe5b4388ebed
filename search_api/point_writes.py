"""Points and collections changed over HTTP: an image added (``POST /points``), a point
deleted, a collection deleted or renamed. The work is the core's (``dinoseek.uploads``,
``dinoseek.collection_admin``); this module schedules it: decoding and the model as a search
does them, every change to the store and the upload pool on the default thread pool under one
lock, so that two writes of this process never interleave (the same image added twice at
once is one point, created once; a pool file is never removed while a write adds it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from dinoseek.collection_admin import CollectionDeleted, delete_collection, rename_collection
from dinoseek.errors import EmbeddingError
from dinoseek.images import PreparedImage
from dinoseek.labelling import check_label, set_labels
from dinoseek.regions import RegionSpec
from dinoseek.search_types import Neighbour, NeighbourQuery
from dinoseek.store import CollectionRename, PointRecord, StoredPoint
from dinoseek.uploads import (
    AddedImage,
    UploadPool,
    check_deletable,
    content_sha256,
    remove_unused,
    upload_payload,
)
from search_api.service import SearchService, StageClock


@dataclass(frozen=True)
class AddedPoint:
    """The point of an added image: whether this request created it, and its neighbours."""

    id: str
    created: bool
    neighbours: list[Neighbour]


@dataclass(frozen=True)
class DeletedPoint:
    """A point deleted, and whether its added image's file went with it (False when another
    collection still lists that image, or it was no added image)."""

    id: str
    upload_removed: bool


@dataclass(frozen=True)
class _Embedded:
    vector: np.ndarray
    regions: np.ndarray | None


class PointWriter:
    """The writes of the point and collection routes; built beside the search service."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self.searcher = service.searcher
        self.store = service.store
        self.pool = UploadPool.of(service.settings.data_dir)
        self._lock = threading.Lock()

    # -- points -------------------------------------------------------------------------------

    async def add(
        self,
        collection: str,
        data: bytes,
        name: str,
        label: str | None,
        query: NeighbourQuery,
        clock: StageClock,
    ) -> AddedPoint:
        """Add the image ``data`` to ``collection`` (created for the model if it does not
        exist): decoded as a query is, embedded unless its content is a point already, kept
        in the upload pool and stored; its neighbours other than itself."""
        label = check_label(label)
        prepared = await self.service.prepare(data, name, clock)
        sha256 = await run_in_threadpool(content_sha256, data)
        image = AddedImage(
            sha256=sha256,
            size=len(data),
            width=prepared.width,
            height=prepared.height,
            format=prepared.format,
            model_id=self.service.embedder.model_id,
            label=label,
        )
        embedded = None
        if not await run_in_threadpool(self._exists, collection, image.point_id):
            embedded = await self._embed(collection, prepared, clock)
        created = await run_in_threadpool(self._store, collection, data, image, embedded)
        if created is None:  # stored meanwhile by another process: embed it after all
            embedded = await self._embed(collection, prepared, clock)
            created = await run_in_threadpool(self._store, collection, data, image, embedded)
            assert created is not None, "embedded"
        neighbours = await self.service.similar(collection, image.point_id, query, clock)
        return AddedPoint(image.point_id, created, neighbours)

    async def delete_point(self, collection: str, point_id: str) -> DeletedPoint:
        """Delete a point and its added image's file (``PointInFolderError`` for the image
        of a file in an indexed folder)."""
        return await run_in_threadpool(self._delete_point, collection, point_id)

    # -- collections --------------------------------------------------------------------------

    async def delete_collection(self, name: str) -> CollectionDeleted:
        """``dinoseek collection delete``, from this process."""
        return await run_in_threadpool(self._locked_delete_collection, name)

    async def rename_collection(
        self, name: str, new_name: str
    ) -> tuple[CollectionRename, list[tuple[Path, Path]]]:
        """``dinoseek collection rename``, from this process."""
        return await run_in_threadpool(self._locked_rename_collection, name, new_name)

    # -- the steps ----------------------------------------------------------------------------

    def _exists(self, collection: str, point_id: str) -> bool:
        if collection not in self.store.list_collections():
            return False
        with self.searcher.using(collection):
            return bool(self.store.get(collection, [point_id]))

    async def _embed(
        self, collection: str, prepared: PreparedImage, clock: StageClock
    ) -> _Embedded:
        """The image's vector, and its region vectors when the collection has them."""
        spec = await run_in_threadpool(self._regions_of, collection)
        if spec is None:
            return _Embedded(await self.service.embed(prepared.pixels, clock), None)
        embedder = self.service.embedder
        loop = asyncio.get_running_loop()
        (result,) = await loop.run_in_executor(
            embedder.executor,
            embedder.embed_each_pooled,
            prepared.pixels[None],
            spec.pooling_matrix(),
        )
        if isinstance(result, EmbeddingError):
            raise result
        return _Embedded(result.cls, result.pooled)

    def _regions_of(self, collection: str) -> RegionSpec | None:
        if collection not in self.store.list_collections():
            return None
        return self.store.collection_regions(collection)

    def _store(
        self, collection: str, data: bytes, image: AddedImage, embedded: _Embedded | None
    ) -> bool | None:
        """Store the point unless it is there (then only its label, when one is given):
        whether it was created; None when it must be embedded first (it was not there after
        all)."""
        with self._lock:
            self._take_or_create(collection)
            with self.searcher.using(collection):
                if self.store.get(collection, [image.point_id]):
                    if image.label is not None:
                        set_labels(self.store, collection, [image.point_id], image.label)
                    return False
                if embedded is None:
                    return None
                path, written = self.pool.write(data, image.sha256, image.format)
                record = PointRecord(
                    image.point_id,
                    embedded.vector,
                    upload_payload(self.pool, image, path),
                    embedded.regions,
                )
                try:
                    self.store.upsert(collection, [record])
                except BaseException:
                    if written:
                        self._remove_unused([(str(path), image.sha256)])
                    raise
        return True

    def _take_or_create(self, collection: str) -> None:
        """Create a missing collection for the model; the service's own is held from then
        on, as it is when it exists at start-up."""
        if collection in self.store.list_collections():
            return
        self.store.ensure_collection(collection, self.service.embedder.space)
        if collection == self.service.settings.collection:
            self.searcher.keep(collection)
        else:
            self.store.release(collection)  # taken for each request, as any other

    def _delete_point(self, collection: str, point_id: str) -> DeletedPoint:
        with self._lock:
            with self.searcher.using(collection):
                point = self.searcher.point(collection, point_id)
                files = check_deletable(self.pool, point, collection)
                self.store.delete(collection, [point.id])
            sha256 = str(point.payload.get("sha256", ""))
            removed = self._remove_unused([(path, sha256) for path in files])
        return DeletedPoint(point.id, bool(removed))

    def _remove_unused(self, files: list[tuple[str, str]]) -> list[str]:
        return remove_unused(self.pool, files, self.store.list_collections(), self._lookup)

    def _lookup(self, collection: str, ids: Sequence[str]) -> list[StoredPoint]:
        with self.searcher.holding(collection):
            return self.store.get(collection, list(ids))

    def _locked_delete_collection(self, name: str) -> CollectionDeleted:
        with self._lock:
            return delete_collection(self.store, self.service.settings.data_dir, name, self._lookup)

    def _locked_rename_collection(
        self, name: str, new_name: str
    ) -> tuple[CollectionRename, list[tuple[Path, Path]]]:
        with self._lock:
            return rename_collection(self.store, self.service.settings.data_dir, name, new_name)
