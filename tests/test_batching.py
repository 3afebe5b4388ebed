"""The micro-batcher on a real event loop: ordering, batching, back-pressure, failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from dinoseek.embedder_protocol import Pixels, VectorOrError
from dinoseek.errors import EmbeddingError
from dinoseek.fake_embedder import FakeEmbedder
from search_api.batching import MicroBatcher, OverloadedError


def mean_pixel(batch: np.ndarray) -> list[VectorOrError]:
    """Each image's "vector" is its mean pixel value, so answers are checkable per request."""
    return list(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True).astype(np.float32))


class Model(FakeEmbedder):
    """The stand-in model with ``forward`` as its ``embed_each`` (on its own thread)."""

    def __init__(self, forward: Callable[[np.ndarray], list[VectorOrError]]) -> None:
        super().__init__()
        self.forward = forward

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        return self.forward(pixels)


def image(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, dtype=np.uint8)


def test_each_request_gets_its_own_answer_and_requests_share_batches() -> None:
    sizes: list[int] = []

    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(
            Model(mean_pixel),
            max_batch=8,
            max_queue=64,
            on_batch=lambda n, _: sizes.append(n),
        )
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.embed(image(v)) for v in range(20)))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert [float(r[0]) for r in results] == [float(v) for v in range(20)]
    assert sum(sizes) == 20
    assert max(sizes) == 8  # capped at max_batch
    assert len(sizes) < 20  # batched, not one pass per request


def test_an_idle_model_runs_a_lone_request_at_once_and_a_busy_one_gathers_the_next_batch() -> None:
    """The decision, observed: a request that finds the model idle is handed to it with
    nothing else submitted (no wait for company), and those that arrive while a forward pass
    runs go together into the next one. The bound on each wait below is generous: an old
    batcher waiting for company would never start the first pass while nothing else comes."""
    running = threading.Event()  # a forward pass has begun
    release = threading.Event()  # let the forward passes end
    sizes: list[int] = []

    def held(batch: np.ndarray) -> list[VectorOrError]:
        sizes.append(len(batch))
        running.set()
        release.wait(30)
        return mean_pixel(batch)

    async def scenario() -> tuple[bool, list[np.ndarray]]:
        batcher = MicroBatcher(Model(held), max_batch=8, max_queue=64)
        batcher.start()
        try:
            first = asyncio.create_task(batcher.embed(image(0)))
            dispatched = await asyncio.to_thread(running.wait, 30)
            if not dispatched:
                return False, []
            later = [asyncio.create_task(batcher.embed(image(v))) for v in range(1, 11)]
            while batcher.queue_depth < 10:  # all ten wait behind the running pass
                await asyncio.sleep(0.001)
            release.set()
            return dispatched, await asyncio.gather(first, *later)
        finally:
            release.set()
            await batcher.stop()

    dispatched, results = asyncio.run(scenario())
    assert dispatched, "the lone request was not run while the model was idle"
    assert [float(r[0]) for r in results] == [float(v) for v in range(11)]
    assert sizes == [1, 8, 2]  # alone, then everything that waited (up to max_batch)


def test_full_queue_refuses_at_once() -> None:
    """Refused while the model still holds the first request: the refusal does not wait for
    a forward pass (this one would never end before the refusal if it did)."""
    running = threading.Event()
    release = threading.Event()

    def held(batch: np.ndarray) -> list[VectorOrError]:
        running.set()
        release.wait(60)
        return mean_pixel(batch)

    async def scenario() -> tuple[int, int]:
        batcher = MicroBatcher(Model(held), max_batch=1, max_queue=2)
        batcher.start()
        tasks = [asyncio.create_task(batcher.embed(image(0)))]
        try:
            assert await asyncio.to_thread(running.wait, 60), "the model never ran"
            tasks += [asyncio.create_task(batcher.embed(image(v))) for v in range(1, 6)]
            while batcher.queue_depth < 2:  # two wait behind the running pass
                await asyncio.sleep(0.001)
            with pytest.raises(OverloadedError, match="already waiting"):
                await asyncio.wait_for(batcher.embed(image(99)), 60)
        finally:
            release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        served = sum(isinstance(o, np.ndarray) for o in outcomes)
        refused = sum(isinstance(o, OverloadedError) for o in outcomes)
        return served, refused

    served, refused = asyncio.run(scenario())
    assert served == 3  # one running, two queued
    assert refused == 3


def test_a_failing_batch_fails_its_requests_only() -> None:
    calls = 0

    def flaky(batch: np.ndarray) -> list[VectorOrError]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("device error")
        return mean_pixel(batch)

    async def scenario() -> tuple[object, np.ndarray]:
        batcher = MicroBatcher(Model(flaky), max_batch=4, max_queue=8)
        batcher.start()
        first = await asyncio.gather(batcher.embed(image(1)), return_exceptions=True)
        second = await batcher.embed(image(2))
        await batcher.stop()
        return first[0], second

    first, second = asyncio.run(scenario())
    assert isinstance(first, RuntimeError)
    assert float(second[0]) == 2.0


def test_an_image_that_cannot_be_embedded_fails_alone() -> None:
    def bright_fails(batch: np.ndarray) -> list[VectorOrError]:
        return [
            EmbeddingError("too bright", code="out_of_memory") if float(v[0]) > 100 else v
            for v in mean_pixel(batch)  # type: ignore[index]
        ]

    async def scenario() -> list[object]:
        batcher = MicroBatcher(Model(bright_fails), max_batch=8, max_queue=8)
        batcher.start()
        outcomes = await asyncio.gather(
            *(batcher.embed(image(v)) for v in (10, 200, 30)), return_exceptions=True
        )
        await batcher.stop()
        return outcomes

    dim, bright, dark = asyncio.run(scenario())
    assert float(dim[0]) == 10.0  # type: ignore[index]
    assert isinstance(bright, EmbeddingError)
    assert bright.code == "out_of_memory"
    assert float(dark[0]) == 30.0  # type: ignore[index]
