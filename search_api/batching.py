"""Micro-batching: concurrent queries share one forward pass.

Each request puts its preprocessed pixels on a bounded queue and awaits its vector. One task
runs the forward passes, one at a time, on the model's own thread (``ImageEmbedder.executor``:
no other hop). When the model is idle, a request is run at once, with whatever else is
already waiting; while a forward pass runs, the requests that arrive wait for it, and the next
pass takes them all together (up to ``max_batch``). No request ever waits for company: on a
GPU a forward pass can take less time than any wait would. Every request of a batch is
answered with its vector or its ``EmbeddingError``.

The service admits at most ``max_queue`` requests to the model routes once their bodies are in
(``search_api.admission``), and each waits here with at most one item, so the queue cannot
overflow in practice; if it ever does, the request is refused at once
(``OverloadedError``: 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dinoseek.embedder_protocol import ImageEmbedder, split_embedded

log = logging.getLogger(__name__)


class OverloadedError(Exception):
    """The queue is full, or the service is stopping."""


@dataclass
class _Request:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Gathers single images into batches for the embedder."""

    def __init__(
        self,
        embedder: ImageEmbedder,
        *,
        max_batch: int,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_batch(size, seconds)`` is called after each forward pass (for metrics)."""
        self.embedder = embedder
        self.max_batch = max(1, max_batch)
        self.max_queue = max(1, max_queue)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a forward pass."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the task; requests still queued fail."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue is not None and not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(OverloadedError("the service is shutting down"))

    async def embed(self, pixels: np.ndarray) -> np.ndarray:
        """The vector of one preprocessed image (H, W, 3), computed within a batch.

        Raises ``EmbeddingError`` when this image cannot be embedded."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Request(pixels, future))
        except asyncio.QueueFull:
            raise OverloadedError(
                f"{self.max_queue} queries are already waiting; try again shortly"
            ) from None
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            # Those that arrived while the model was busy, and no more: nothing waits.
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [r for r in batch if not r.future.done()]  # a client may have gone
            if live:
                await self._run(live)

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            pixels = np.stack([r.pixels for r in batch])
            vectors = await loop.run_in_executor(
                self.embedder.executor, self.embedder.embed_each, pixels
            )
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started)
        embedded, failed = split_embedded(batch, vectors)
        for request, vector in embedded:
            if not request.future.done():
                request.future.set_result(vector)
        for request, error in failed:
            if not request.future.done():
                request.future.set_exception(error)
