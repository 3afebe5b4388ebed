"""The search service: the runtime's search path, scheduled for an event loop.

The steps are the core's (``dinoseek.search.Searcher``); this module only decides where each
runs, so that nothing blocks the event loop: decoding on a small thread pool, forward passes
on the model's own thread (single images through the micro-batcher), store calls on the
default thread pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from dinoseek.correspondence import Correspondence, match_images
from dinoseek.embedder_protocol import ImageEmbedder, PatchEmbeddings, VectorOrError
from dinoseek.errors import CollectionNotFoundError, StoreUnavailableError
from dinoseek.images import PreparedImage, decode_image
from dinoseek.labels import PredictedLabel
from dinoseek.patch_pca import patch_picture
from dinoseek.preprocessing import Preprocessing
from dinoseek.region_search import collection_spec, pooling_for, region_query, search_regions
from dinoseek.regions import Box
from dinoseek.runtime import Runtime
from dinoseek.search_types import (
    BrowsePage,
    DuplicatesPage,
    Filters,
    LabelRequest,
    Neighbour,
    NeighbourQuery,
    SearchResult,
)
from dinoseek.store import CollectionStatus, StoredPoint, StoredProbe, collection_statuses
from dinoseek.watch_status import WatchStatus
from search_api.batching import MicroBatcher
from search_api.metrics import ServiceMetrics
from search_api.served_files import VerifiedFile, verified_file

log = logging.getLogger(__name__)
T = TypeVar("T")

# Thumbnails are small JPEGs; the original file is served as it is.
THUMBNAIL_QUALITY = 85


@dataclass
class StageClock:
    """Milliseconds per stage of one request."""

    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        """Accumulate ``seconds`` into ``stage``."""
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds * 1000

    def as_dict(self) -> dict[str, float]:
        """Stages and the total, rounded to 0.01 ms."""
        total = (time.perf_counter() - self.started) * 1000
        return {**{k: round(v, 2) for k, v in self.stages.items()}, "total": round(total, 2)}


class SearchService:
    """Everything a request needs; built once per app from a runtime, closed at shutdown."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        metrics: ServiceMetrics | None = None,
        watch: WatchStatus | None = None,
    ) -> None:
        self.runtime = runtime
        self.watch = watch  # a folder watcher's status, when one runs beside the service
        self.settings = runtime.settings
        self.store = runtime.store
        self.embedder: ImageEmbedder = runtime.require_embedder()
        self.searcher = runtime.searcher
        self.metrics = metrics or ServiceMetrics()
        self.decode_pool = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="decode"
        )
        self.batcher = MicroBatcher(
            self.embedder,
            max_batch=runtime.max_batch,
            max_queue=self.settings.max_queue,
            on_batch=self.metrics.observe_batch,
        )
        self.started = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batcher and take the default collection if it is there."""
        self.batcher.start()
        await run_in_threadpool(self._open_default_collection)
        self.started = True

    async def stop(self) -> None:
        """Stop the batcher and the pool, close the runtime (the store and its locks)."""
        await self.batcher.stop()
        self.decode_pool.shutdown(wait=True)
        self.runtime.close()

    def _open_default_collection(self) -> None:
        """A missing collection or an unreachable Qdrant does not stop start-up (the service
        answers 404 or 503 until they are there)."""
        try:
            self.searcher.keep(self.settings.collection)
        except CollectionNotFoundError:
            if self.watch is not None:
                log.info(
                    "collection %r does not exist yet: the folder watcher's first pass makes it",
                    self.settings.collection,
                )
                return
            log.warning(
                "collection %r does not exist yet in the %s; run `dinoseek index`",
                self.settings.collection,
                self.store.describe(),
            )
        except StoreUnavailableError as error:
            log.warning("%s; /ready answers 503 until it is back", error.message)

    # -- the steps of the search path ---------------------------------------------------------

    async def prepare(self, data: bytes, name: str, clock: StageClock) -> PreparedImage:
        """Bytes -> model-ready pixels, on the decode pool."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.decode_pool, self.searcher.prepare, data, name)
        self._timed(clock, "decode", started)
        return prepared

    async def embed(self, pixels: np.ndarray, clock: StageClock) -> np.ndarray:
        """One image's vector, through the micro-batcher (``EmbeddingError`` if it fails)."""
        started = time.perf_counter()
        self.metrics.queue_depth.set(self.batcher.queue_depth)
        vector = await self.batcher.embed(pixels)
        self._timed(clock, "embed", started)
        return vector

    async def embed_many(
        self, pixels: Sequence[np.ndarray], clock: StageClock
    ) -> list[VectorOrError]:
        """Several images in one forward pass (already a batch: no micro-batching)."""
        if not pixels:
            return []
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        stacked = np.stack(list(pixels))
        vectors = await loop.run_in_executor(
            self.embedder.executor, self.embedder.embed_each, stacked
        )
        self._timed(clock, "embed", started)
        return vectors

    async def embed_with_patches(self, pixels: np.ndarray, clock: StageClock) -> PatchEmbeddings:
        """Vector and patch tokens, on the model's thread (not batched: the output is large)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self.embedder.executor, self.embedder.embed_with_patches, pixels[None]
        )
        self._timed(clock, "embed", started)
        return result

    async def search(
        self,
        collection: str,
        vectors: Sequence[np.ndarray],
        query: NeighbourQuery,
        labels: LabelRequest,
        clock: StageClock,
    ) -> list[SearchResult]:
        """Neighbours and labels of each vector (one store call)."""
        started = time.perf_counter()
        results = await run_in_threadpool(
            self.searcher.search_vectors, collection, list(vectors), query, labels
        )
        self._timed(clock, "search", started)
        return results

    async def search_regions(
        self,
        collection: str,
        prepared: PreparedImage,
        box: Box | None,
        query: NeighbourQuery,
        labels: LabelRequest,
        clock: StageClock,
    ) -> SearchResult:
        """Neighbours by region of one image (of ``box`` of it): refused before the model
        runs when the collection has no regions or the model would see too little of the
        box; then one forward pass on the model's thread (not micro-batched: its pooling is
        the query's own) and one store call."""
        await run_in_threadpool(collection_spec, self.searcher, collection)
        pooling_for(self.embedder, prepared, box)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(
            self.embedder.executor, region_query, self.embedder, prepared, box
        )
        self._timed(clock, "embed", started)
        started = time.perf_counter()
        (result,) = await run_in_threadpool(
            search_regions, self.searcher, collection, [vectors], query, labels
        )
        self._timed(clock, "search", started)
        return result

    async def match(
        self, a: PreparedImage, b: PreparedImage, max_pairs: int, clock: StageClock
    ) -> Correspondence:
        """Corresponding patches of two prepared images: one forward pass of both."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(
            self.embedder.executor,
            lambda: match_images(self.embedder, a, b, max_pairs=max_pairs),
        )
        self._timed(clock, "embed", started)
        return found

    async def prepare_point(
        self, collection: str, point_id: str, clock: StageClock
    ) -> PreparedImage:
        """A stored point's image, read from its checked file and prepared as a query."""
        point = await self.point(collection, point_id)
        content = await self.image_file(point)
        return await self.prepare(content.data(), content.name, clock)

    async def classify(
        self, collection: str, vector: np.ndarray, knn_top_k: int, labels: LabelRequest
    ) -> list[PredictedLabel]:
        """Predicted labels only (a kNN vote over the ``knn_top_k`` nearest points)."""
        await run_in_threadpool(self.searcher.check, collection)
        request = dataclasses.replace(labels, vote_neighbours=knn_top_k)
        predicted = await run_in_threadpool(
            self.searcher.predict_labels, collection, vector, request
        )
        return predicted or []

    async def similar(
        self, collection: str, point_id: str, query: NeighbourQuery, clock: StageClock
    ) -> list[Neighbour]:
        """Neighbours of a stored point, without a model call."""
        started = time.perf_counter()
        neighbours = await run_in_threadpool(self.searcher.similar, collection, point_id, query)
        self._timed(clock, "search", started)
        return neighbours

    async def point(self, collection: str, point_id: str) -> StoredPoint:
        """A stored point, or PointNotFoundError."""
        return await run_in_threadpool(self.searcher.point, collection, point_id)

    async def browse(
        self,
        collection: str,
        limit: int,
        start: str | None,
        filters: Filters,
        *,
        unlabelled: bool = False,
    ) -> BrowsePage:
        """A page of the collection's points (``start``: a point id, "random" or None; only
        those without a label when ``unlabelled``)."""
        return await run_in_threadpool(
            lambda: self.searcher.browse(
                collection, limit=limit, start=start, filters=filters, unlabelled=unlabelled
            )
        )

    async def duplicates(self, collection: str, limit: int, start: str | None) -> DuplicatesPage:
        """A page of the collection's groups of near-duplicates."""
        return await run_in_threadpool(
            lambda: self.searcher.duplicates(collection, limit=limit, start=start)
        )

    async def probes(self, collection: str) -> list[StoredProbe]:
        """The collection's probes (cached for a few seconds)."""
        return await run_in_threadpool(self.searcher.probes, collection)

    async def collections(self) -> list[CollectionStatus]:
        """Every collection with its counts (none for one another process holds)."""
        return await run_in_threadpool(collection_statuses, self.store)

    # -- files --------------------------------------------------------------------------------

    async def image_file(self, point: StoredPoint) -> VerifiedFile:
        """The content of a point, read from a file the indexer recorded for it (never a
        path from the request) and checked against its hash (``served_files``); else
        ``PointNotFoundError``. The read has the request's deadline and cannot block."""
        return await run_in_threadpool(
            lambda: verified_file(
                point,
                max_bytes=self.settings.max_file_bytes,
                timeout_s=self.settings.request_timeout_s,
                on_refused=self.metrics.observe_refused_file,
            )
        )

    async def thumbnail(self, content: VerifiedFile, size: int) -> bytes:
        """A JPEG no larger than ``size`` x ``size`` of checked content, made with the shared
        decode path."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decode_pool, self._thumbnail, content, size)

    def _thumbnail(self, content: VerifiedFile, size: int) -> bytes:
        data = content.data()
        image = decode_image(data, max_pixels=self.settings.max_image_pixels, name=content.name)
        thumbnail = image.image
        thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        thumbnail.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
        return buffer.getvalue()

    async def patch_png(self, patches: PatchEmbeddings, height: int, *, mask: bool) -> bytes:
        """The PCA picture of one image's patches as a PNG, each patch as many pixels as it
        had in the model input (``height`` pixels for the grid's rows)."""
        return await run_in_threadpool(self._patch_png, patches, height, mask)

    def _patch_png(self, patches: PatchEmbeddings, height: int, mask: bool) -> bytes:
        picture = patch_picture(patches.patch_tokens[0], patches.grid, mask=mask)
        factor = max(1, height // max(1, patches.grid[0]))
        buffer = io.BytesIO()
        Image.fromarray(picture.upscaled(factor), "RGB").save(buffer, "PNG")
        return buffer.getvalue()

    # -- state --------------------------------------------------------------------------------

    def ready_state(self) -> dict[str, Any]:
        """What /ready reports; raises a store error when the store is unreachable."""
        exists = self.settings.collection in self.store.list_collections()
        points = None
        if exists:
            self.searcher.keep(self.settings.collection)
            points = self.store.count(self.settings.collection)
        return {
            "ready": self.started,
            "model": self.embedder.model_id,
            "device": self.embedder.device,
            "store": self.store.describe(),
            "collection": self.settings.collection,
            "collection_exists": exists,
            "points": points,
            "watch": self.watch.snapshot().to_dict() if self.watch is not None else None,
            "input": model_input(self.embedder.preprocessing),
        }

    async def in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the default thread pool."""
        return await run_in_threadpool(function, *args)

    def _timed(self, clock: StageClock, stage: str, started: float) -> None:
        seconds = time.perf_counter() - started
        clock.add(stage, seconds)
        self.metrics.observe_stage(stage, seconds)


def model_input(preprocessing: Preprocessing) -> dict[str, Any]:
    """How the model's input is cut from an image, as /ready states it (``ModelInput``)."""
    described = preprocessing.describe()
    return {key: described[key] for key in ("resize_shortest_edge", "resize_to", "crop")}
