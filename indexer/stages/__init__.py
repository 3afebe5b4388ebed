"""The embedding stages of an index run, one module per engine (``base`` says what a stage
is): ``local`` (decode processes on this machine), ``gpu`` (``--gpu-decode``) and ``ray``
(``--engine ray``). ``open_stage`` picks the one a run asks for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from indexer.catalog import LabelSource
from indexer.decode import DecodePool
from indexer.ray_engine import RayEngine
from indexer.regions import DecodeStage
from indexer.stages.base import EmbeddingStage, Model
from indexer.stages.local import LocalStage, decode_window

GPU_UNAVAILABLE = "--gpu-decode unavailable here; decoded on the CPU"


@dataclass(frozen=True)
class Engine:
    """Which engine embeds a run's files: this machine's processes, with ``gpu_decode`` JPEGs
    decoded on the GPU, or a Ray cluster (``ray``)."""

    workers: int
    gpu_decode: bool = False
    ray: RayEngine | None = None


def open_stage(
    engine: Engine,
    model: Model,
    *,
    collection: str,
    labels: LabelSource,
    warn: Callable[[str], None],
) -> EmbeddingStage:
    """The stage of ``engine``; ``warn`` hears why it is not the one asked for."""
    if engine.ray is not None:
        from indexer.stages.ray import RayStage

        return RayStage(engine.ray, model, collection=collection, labels=labels)
    if engine.gpu_decode:
        from indexer.stages.gpu import GpuStage, gpu_decoder

        decoder = gpu_decoder(model)
        if decoder is not None:
            return GpuStage(model, decoder, threads=gpu_threads(engine))
        warn(GPU_UNAVAILABLE)
    return LocalStage(model, engine.workers)


def open_decoder(engine: Engine, model: Model, *, warn: Callable[[str], None]) -> DecodeStage:
    """The stage's decoding only (the region vectors of stored points: ``indexer.regions``)."""
    if engine.gpu_decode:
        from indexer.stages.gpu import GpuDecodePool, gpu_decoder

        decoder = gpu_decoder(model)
        if decoder is not None:
            threads = gpu_threads(engine)
            return GpuDecodePool(decoder, model.decode, threads=threads, batch=model.batch_size)
        warn(GPU_UNAVAILABLE)
    return DecodePool(model.decode, engine.workers, decode_window(model.batch_size, engine.workers))


def gpu_threads(engine: Engine) -> int:
    """Threads reading files for the GPU: they wait on I/O more than they compute."""
    return max(4, engine.workers)
