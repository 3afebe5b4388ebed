"""The search service: the model, the store and the micro-batcher behind the routes.

Nothing here blocks the event loop: decoding runs on a small thread pool, forward passes on
one model thread (through the micro-batcher), store calls on the default thread pool.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from dinoseek.embedder import Embedder, PatchEmbeddings, default_batch_size
from dinoseek.errors import (
    CollectionNotFoundError,
    PointNotFoundError,
    ProbeNotFoundError,
    StoreUnavailableError,
)
from dinoseek.images import decode_image, load_image
from dinoseek.labelling import LabelPrediction, ProbeCache, knn_labels, probe_labels
from dinoseek.settings import Settings
from dinoseek.store import (
    CollectionInfo,
    SearchHit,
    SearchQuery,
    StoredPoint,
    StoredProbe,
    VectorStore,
    search_by_id,
    validate_point_id,
)
from search_api.batching import MicroBatcher
from search_api.metrics import ServiceMetrics

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


@dataclass(frozen=True)
class DecodedQuery:
    """An uploaded image, ready for the model."""

    pixels: np.ndarray
    width: int
    height: int


class SearchService:
    """Everything a request needs; built once per app, closed at shutdown."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        store: VectorStore,
        *,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.metrics = metrics or ServiceMetrics()
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.decode_pool = ThreadPoolExecutor(
            max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="decode"
        )
        max_batch = min(64, settings.batch_size or default_batch_size(embedder.device))
        self.batcher = MicroBatcher(
            embedder.embed_pixels,
            executor=self.model_thread,
            max_batch=max_batch,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=self.metrics.observe_batch,
        )
        self._compatible: set[str] = set()
        self.probes: ProbeCache | None = None
        self.warmed_up = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the default collection, warm the model up, start the batcher."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.model_thread, self._warm_up)
        self.probes = ProbeCache(self.store, self.embedder.space)
        await run_in_threadpool(self._check_default_collection)
        self.batcher.start()
        self.warmed_up = True

    async def stop(self) -> None:
        """Stop the batcher and the pools, close the store."""
        await self.batcher.stop()
        self.model_thread.shutdown(wait=True)
        self.decode_pool.shutdown(wait=True)
        self.store.close()

    def _warm_up(self) -> None:
        """Compile if asked, then run every batch size the micro-batcher can send (with CUDA
        graphs each bucket is captured here, not on a user's request)."""
        if self.settings.compile != "off" and self.embedder.compile_mode == "off":
            self.embedder.compile(self.settings.compile, max_batch=self.batcher.max_batch)
        if self.embedder.buckets is not None:
            self.embedder.warm_up(range(1, self.batcher.max_batch + 1))
        else:
            self.embedder.warm_up([1, self.batcher.max_batch])
        _ = self.embedder.space  # computes the fingerprint once

    def _check_default_collection(self) -> None:
        """A mismatched collection stops start-up; a missing collection or an unreachable
        Qdrant does not (the service answers 404 or 503 until they are there)."""
        try:
            self.check_collection(self.settings.collection)
        except CollectionNotFoundError:
            log.warning(
                "collection %r does not exist yet in the %s; run `dinoseek index`",
                self.settings.collection,
                self.store.describe(),
            )
        except StoreUnavailableError as error:
            log.warning("%s; /ready answers 503 until it is back", error.message)

    # -- steps of a request -------------------------------------------------------------------

    def check_collection(self, name: str) -> None:
        """Refuse a collection built with another model (checked once per collection)."""
        if name in self._compatible:
            return
        self.embedder.space.check_compatible(self.store.collection_space(name), name)
        self._compatible.add(name)

    async def decode(self, data: bytes, name: str, clock: StageClock) -> DecodedQuery:
        """Decode and preprocess an upload off the event loop."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        query = await loop.run_in_executor(self.decode_pool, self._decode, data, name)
        self._timed(clock, "decode", started)
        return query

    def _decode(self, data: bytes, name: str) -> DecodedQuery:
        decoded = decode_image(data, max_pixels=self.settings.max_image_pixels, name=name)
        return DecodedQuery(self.embedder.prepare(decoded.image), decoded.width, decoded.height)

    async def embed(self, query: DecodedQuery, clock: StageClock) -> np.ndarray:
        """The query's vector, through the micro-batcher."""
        started = time.perf_counter()
        self.metrics.queue_depth.set(self.batcher.queue_depth)
        vector = await self.batcher.embed(query.pixels)
        self._timed(clock, "embed", started)
        return vector

    async def embed_with_patches(self, query: DecodedQuery, clock: StageClock) -> PatchEmbeddings:
        """Vector and patch tokens, on the model thread (not batched: the output is large)."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self.model_thread, self.embedder.embed_pixels_with_patches, query.pixels[None]
        )
        self._timed(clock, "embed", started)
        return result

    async def search(
        self, collection: str, query: SearchQuery, clock: StageClock
    ) -> list[SearchHit]:
        """Nearest neighbours in ``collection``."""
        started = time.perf_counter()
        hits = await self._in_thread(self._search, collection, query)
        self._timed(clock, "search", started)
        return hits

    def _search(self, collection: str, query: SearchQuery) -> list[SearchHit]:
        self.check_collection(collection)
        return self.store.search(collection, query)

    async def search_many(
        self, collection: str, queries: list[SearchQuery], clock: StageClock
    ) -> list[list[SearchHit]]:
        """Several searches in one store call."""
        started = time.perf_counter()
        hits = await self._in_thread(self._search_many, collection, queries)
        self._timed(clock, "search", started)
        return hits

    def _search_many(self, collection: str, queries: list[SearchQuery]) -> list[list[SearchHit]]:
        self.check_collection(collection)
        return self.store.search_many(collection, queries)

    async def labels(
        self,
        collection: str,
        vector: np.ndarray,
        hits: list[SearchHit],
        *,
        with_labels: bool | None,
        method: str | None,
        probe_name: str | None,
        top_k: int = 5,
    ) -> list[LabelPrediction] | None:
        """Predicted labels of a query: from a probe when there is one (or ``method`` says
        so), else from the neighbours' labels (kNN vote). ``with_labels`` None means: only
        when the collection has a probe."""
        if with_labels is False:
            return None
        if method == "knn":
            return knn_labels(hits, top_k)
        assert self.probes is not None, "start() builds the probe cache"
        probe = await self._in_thread(self.probes.get, collection, probe_name)
        if probe is not None:
            return probe_labels(probe, vector, top_k)
        if method == "probe":
            raise ProbeNotFoundError(
                f"collection {collection!r} has no probe; train one with `dinoseek probe "
                "train`, or ask for label_method=knn"
            )
        return knn_labels(hits, top_k) if with_labels else None

    async def list_probes(self, collection: str) -> list[StoredProbe]:
        """The collection's probes (cached for a few seconds)."""
        assert self.probes is not None, "start() builds the probe cache"
        return await self._in_thread(self.probes.list, collection)

    async def similar(
        self, collection: str, point_id: str, clock: StageClock, **options: Any
    ) -> list[SearchHit]:
        """Neighbours of a stored point, without a model call."""
        started = time.perf_counter()
        hits = await self._in_thread(search_by_id, self.store, collection, point_id, **options)
        self._timed(clock, "search", started)
        return hits

    async def point(self, collection: str, point_id: str) -> StoredPoint:
        """A stored point, or PointNotFoundError."""
        point_id = validate_point_id(point_id)
        found = await self._in_thread(self.store.get, collection, [point_id])
        if not found:
            raise PointNotFoundError(f"no point with id {point_id} in collection {collection!r}")
        return found[0]

    async def collections(self) -> list[CollectionInfo]:
        """Every collection with its counts."""
        names = await self._in_thread(self.store.list_collections)
        return [await self._in_thread(self.store.collection_info, name) for name in names]

    async def image_file(self, point: StoredPoint) -> Path:
        """The indexed file of a point, if it is still on disk as it was indexed.

        Only paths recorded by the indexer are ever opened, never a path from the request.
        """
        for entry in point.payload.get("files") or ():
            if not isinstance(entry, Mapping):
                continue
            path = Path(str(entry.get("path", "")))
            try:
                stat = await self._in_thread(path.stat)
            except OSError:
                continue
            if stat.st_size == entry.get("size") and stat.st_mtime_ns == entry.get("mtime_ns"):
                return path
        raise PointNotFoundError(
            f"the file of point {point.id} is no longer on disk as it was indexed (moved, "
            "changed or not mounted here); re-run `dinoseek index`"
        )

    async def thumbnail(self, path: Path, size: int) -> bytes:
        """A JPEG no larger than ``size`` x ``size``, made with the shared decode path."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decode_pool, self._thumbnail, path, size)

    def _thumbnail(self, path: Path, size: int) -> bytes:
        image = load_image(path, max_pixels=self.settings.max_image_pixels).image
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
        return buffer.getvalue()

    def ready_state(self) -> dict[str, Any]:
        """What /ready reports; raises a store error when the store is unreachable."""
        exists = self.settings.collection in self.store.list_collections()
        points = self.store.count(self.settings.collection) if exists else None
        return {
            "ready": self.warmed_up,
            "model": self.embedder.model_id,
            "device": str(self.embedder.device),
            "store": self.store.describe(),
            "collection": self.settings.collection,
            "collection_exists": exists,
            "points": points,
        }

    # -- helpers ------------------------------------------------------------------------------

    async def _in_thread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(function, *args, **kwargs)

    def _timed(self, clock: StageClock, stage: str, started: float) -> None:
        seconds = time.perf_counter() - started
        clock.add(stage, seconds)
        self.metrics.observe_stage(stage, seconds)
