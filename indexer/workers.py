"""Decode workers: read, hash, decode and preprocess one file, in a separate process.

This module imports neither torch nor the store, so worker processes start in a fraction of a
second. A worker never raises for a bad file: it returns a ``FailedFile`` instead.

Pixels travel through shared memory, not through the result pipe: each file in flight owns a
slot, the worker writes the preprocessed image there and sends back only a small record. A
record that small is written to the pipe in one atomic write, so a worker killed at any moment
can never leave half a message that would stall the parent.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, fields
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from dinoseek.embedder_protocol import Pixels
from dinoseek.errors import FileReadError, ImageError
from dinoseek.file_read import FileContent, ReadLimits
from dinoseek.file_read import read_file as read_regular_file
from dinoseek.images import prepare_image
from dinoseek.preprocessing import Preprocessing
from dinoseek.settings import default_of

DECODE_TIMEOUT = "decode_timeout"


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs, sent once when the worker starts."""

    preprocessing: Preprocessing
    max_image_pixels: int
    max_file_bytes: int = default_of("max_file_bytes")
    decode_timeout_s: float = default_of("decode_timeout_s")
    follow_links: bool = False  # as the scan's option: a link swapped in later is refused


@dataclass(frozen=True)
class FileFacts:
    """A file read and decoded: its identity, and the facts a point's payload records."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    format: str

    def facts(self) -> dict[str, Any]:
        """Only the facts, as keyword arguments for another kind of file (no pixels copied)."""
        return {field.name: getattr(self, field.name) for field in fields(FileFacts)}


@dataclass(frozen=True)
class DecodedFile(FileFacts):
    """A decoded file with its model-ready pixels (uint8, H x W x 3): a numpy array, or a
    tensor already on the model's device (GPU decoding)."""

    pixels: Pixels


@dataclass(frozen=True)
class FileInSlot(FileFacts):
    """A decoded file whose pixels a worker wrote into a shared-memory ``slot``."""

    slot: int


@dataclass(frozen=True)
class FailedFile:
    """A file that could not be used, and why."""

    path: str
    code: str
    message: str


def attach_shared_memory(name: str) -> SharedMemory:
    """Open the parent's segment. Spawned workers share the parent's resource tracker, so
    their registration of the segment is a no-op and only the parent unlinks it."""
    return SharedMemory(name=name)


def slot_view(buffer: memoryview, slot: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The (H, W, 3) uint8 array of one slot."""
    size = shape[0] * shape[1] * shape[2]
    return np.ndarray(shape, dtype=np.uint8, buffer=buffer, offset=slot * size)


def shared_buffer(shared: SharedMemory) -> memoryview:
    """The segment's buffer (typed: it is None only after close())."""
    if shared.buf is None:
        raise RuntimeError(f"shared memory {shared.name} is closed")
    return shared.buf


class _WorkerState:
    config: WorkerConfig | None = None
    shared: SharedMemory | None = None
    shape: tuple[int, int, int] = (0, 0, 0)


def init_worker(
    config: WorkerConfig, shared_name: str, shape: tuple[int, int, int], parent: int
) -> None:
    """Pool initializer. Workers ignore SIGINT (the parent decides how to stop) and exit
    when ``parent`` (the indexer's pid, given by it) is gone: a SIGKILLed indexer must not
    leave idle workers behind, even one killed while this worker was still starting."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WorkerState.config = config
    _WorkerState.shared = attach_shared_memory(shared_name)
    _WorkerState.shape = shape
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, interval_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    os._exit(0)


def worker_started() -> int:
    """A task that only says a worker is up (its pid). It takes a moment, so that as many
    of them as there are workers start every worker."""
    time.sleep(0.05)
    return os.getpid()


def prepare_into_slot(path: str, slot: int) -> FileInSlot | FailedFile:
    """Worker entry point: prepare ``path`` and put its pixels into ``slot``."""
    config, shared = _WorkerState.config, _WorkerState.shared
    if config is None or shared is None:
        raise RuntimeError("prepare_into_slot runs only in workers started by init_worker")
    result = prepare_file(path, config)
    if isinstance(result, FailedFile):
        return result
    slot_view(shared_buffer(shared), slot, _WorkerState.shape)[...] = result.pixels
    return FileInSlot(**result.facts(), slot=slot)


def prepare_file(path: str, config: WorkerConfig) -> DecodedFile | FailedFile:
    """Read, hash, decode and preprocess ``path`` (in any process)."""
    read = read_for_index(path, config)
    if isinstance(read, FailedFile):
        return read
    return prepare_bytes(read, config)


def read_for_index(path: str, config: WorkerConfig) -> FileContent | FailedFile:
    """``read_file`` within the run's limits."""
    return read_file(
        path,
        max_bytes=config.max_file_bytes,
        timeout_s=config.decode_timeout_s,
        follow_links=config.follow_links,
    )


def read_file(
    path: str,
    *,
    max_bytes: int | None = None,
    timeout_s: float | None = None,
    follow_links: bool = False,
) -> FileContent | FailedFile:
    """Read a regular file once with the core's reader (``dinoseek.file_read``): opened
    without blocking, anything but a regular file refused after ``fstat`` (a FIFO or a device
    put where an image was, after the scan, cannot hang the indexer), a file larger than
    ``max_bytes`` refused before it is read, the read given up after ``timeout_s``. A symbolic
    link swapped in after the scan is refused unless links are followed (``--follow-links``,
    as the scan itself does)."""
    limits = ReadLimits(max_bytes=max_bytes, timeout_s=timeout_s, follow_links=follow_links)
    try:
        return read_regular_file(path, limits)
    except FileReadError as exc:
        return FailedFile(path, exc.code, exc.message)


def prepare_bytes(read: FileContent, config: WorkerConfig) -> DecodedFile | FailedFile:
    """Decode and preprocess a file's bytes with Pillow."""
    path = read.path
    try:
        prepared = prepare_image(
            read.data, config.preprocessing, max_pixels=config.max_image_pixels, name=path
        )
    except ImageError as exc:
        return FailedFile(path, exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
        return FailedFile(path, "decode_error", f"{path}: {type(exc).__name__}: {exc}")
    return DecodedFile(
        path=path,
        size=read.size,
        mtime_ns=read.mtime_ns,
        sha256=read.sha256,
        width=prepared.width,
        height=prepared.height,
        format=prepared.format,
        pixels=prepared.pixels,
    )
