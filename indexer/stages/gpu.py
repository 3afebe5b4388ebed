"""The GPU-decode stage (``--gpu-decode``): JPEGs decoded in batches on the GPU (nvJPEG,
``dinoseek.gpu_decode``), everything else with Pillow on threads; then the model in batches
(``indexer.stages.batches``). torch is imported only when the stage decodes a batch."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dinoseek.errors import ImageError
from dinoseek.file_read import FileContent
from dinoseek.images import ImageHeader, inspect_image
from dinoseek.scan import ScannedFile
from indexer.decode import StoppedError, decode_failure, result_within
from indexer.stages.base import Model, StageResult
from indexer.stages.batches import embed_decoded
from indexer.workers import DecodedFile, FailedFile, WorkerConfig, prepare_bytes, read_for_index

if TYPE_CHECKING:  # torch: imported only where --gpu-decode is asked for
    from dinoseek.gpu_decode import GpuJpegDecoder

Result = DecodedFile | FailedFile


@dataclass(frozen=True)
class _ReadJpeg:
    """A JPEG read and checked, waiting for the GPU."""

    read: FileContent
    header: ImageHeader


class GpuDecodePool:
    """Decodes JPEGs in batches on the GPU (nvJPEG), everything else with Pillow.

    Threads read, hash and check each file's header (format, pixel limit, EXIF orientation);
    non-JPEG files are decoded by the same threads with Pillow; JPEGs are decoded a batch at a
    time on the device, and any JPEG that nvJPEG cannot take falls back to Pillow, alone.
    Results come in completion order, pixels as tensors on the device.
    """

    def __init__(
        self, decoder: GpuJpegDecoder, config: WorkerConfig, *, threads: int, batch: int
    ) -> None:
        self.decoder = decoder
        self.config = config
        self.threads = max(1, threads)
        self.batch = max(1, batch)

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, Result]]:
        """Decode ``files`` until done or ``stop`` is set (in completion order)."""
        window = 4 * self.batch
        upcoming = iter(files)
        jobs: list[tuple[ScannedFile, _ReadJpeg]] = []
        timeout_s = self.config.decode_timeout_s
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="read")
        try:
            in_flight: deque[tuple[ScannedFile, Future[Result | _ReadJpeg]]] = deque()
            while not stop.is_set():
                while len(in_flight) < window and (file := next(upcoming, None)) is not None:
                    in_flight.append((file, pool.submit(self._read, file.path)))
                if not in_flight:
                    break
                file, future = in_flight.popleft()
                try:
                    outcome = result_within(future, stop, timeout_s)
                except StoppedError:
                    return
                except TimeoutError as exc:  # its thread is left to finish on its own
                    yield file, decode_failure(file, exc, timeout_s)
                    continue
                if isinstance(outcome, _ReadJpeg):
                    jobs.append((file, outcome))
                    if len(jobs) >= self.batch:
                        yield from self._decode(jobs)
                        jobs = []
                else:
                    yield file, outcome
            if jobs and not stop.is_set():
                yield from self._decode(jobs)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a stuck read never holds a stop

    def close(self) -> None:
        """Nothing to release: the threads end with each ``results`` call."""

    def _read(self, path: str) -> Result | _ReadJpeg:
        read = read_for_index(path, self.config)
        if isinstance(read, FailedFile):
            return read
        try:
            header = inspect_image(read.data, max_pixels=self.config.max_image_pixels, name=path)
        except ImageError as exc:
            return FailedFile(path, exc.code, exc.message)
        if header.format not in ("JPEG", "MPO"):
            return prepare_bytes(read, self.config)
        return _ReadJpeg(read, header)

    def _decode(
        self, jobs: list[tuple[ScannedFile, _ReadJpeg]]
    ) -> Iterator[tuple[ScannedFile, Result]]:
        from dinoseek.gpu_decode import JpegJob

        decoded = self.decoder.decode_batch(
            [JpegJob(job.read.data, job.header.orientation) for _, job in jobs]
        )
        for (file, job), pixels in zip(jobs, decoded, strict=True):
            if pixels is None:  # nvJPEG could not: Pillow decides, and reports why if it fails
                yield file, prepare_bytes(job.read, self.config)
                continue
            width, height = job.header.width, job.header.height
            if job.header.orientation >= 5:  # rotated by 90 degrees: the axes swap
                width, height = height, width
            yield (
                file,
                DecodedFile(
                    path=job.read.path,
                    size=job.read.size,
                    mtime_ns=job.read.mtime_ns,
                    sha256=job.read.sha256,
                    width=width,
                    height=height,
                    format=job.header.format,
                    pixels=pixels,
                ),
            )


def gpu_decoder(model: Model) -> GpuJpegDecoder | None:
    """nvJPEG for the model's device, or None where it cannot be used (the reason logged)."""
    from dinoseek.gpu_decode import GpuJpegDecoder

    return GpuJpegDecoder.create(model.embedder.preprocessing, model.embedder.device)


class GpuStage:
    """Decodes with ``GpuDecodePool`` (``threads`` reading files) and embeds here."""

    def __init__(self, model: Model, decoder: GpuJpegDecoder, *, threads: int) -> None:
        self.model = model
        self.pool = GpuDecodePool(decoder, model.decode, threads=threads, batch=model.batch_size)

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, StageResult]]:
        """Each file with its vectors or failure, until done or ``stop`` is set."""
        yield from embed_decoded(self.pool.results(files, stop), self.model, stop)

    def close(self) -> None:
        """Nothing to release: the threads end with each ``results`` call."""
