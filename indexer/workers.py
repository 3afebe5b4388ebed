"""Decode workers: read, hash, decode and preprocess one file, in a separate process.

This module imports neither torch nor the store, so worker processes start in a fraction of a
second. A worker never raises for a bad file: it returns a ``FailedFile`` instead.

Pixels travel through shared memory, not through the result pipe: each file in flight owns a
slot, the worker writes the preprocessed image there and sends back only a small record. A
record that small is written to the pipe in one atomic write, so a worker killed at any moment
can never leave half a message that would stall the parent.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from stat import S_ISREG

import numpy as np

from dinoseek.embedding import Pixels
from dinoseek.errors import ImageError, ImageErrorCode
from dinoseek.images import Preprocessing, prepare_image

NOT_A_REGULAR_FILE = "not_a_regular_file"
DECODE_TIMEOUT = "decode_timeout"


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs, sent once when the worker starts."""

    preprocessing: Preprocessing
    max_image_pixels: int
    max_file_bytes: int = 256 * 1024 * 1024
    decode_timeout_s: float = 60.0


@dataclass(frozen=True)
class PreparedFile:
    """A decoded file: its identity, facts for the payload, and the model-ready pixels
    (uint8, H x W x 3): a numpy array, a tensor already on the model's device (GPU
    decoding), or a shared-memory ``slot`` (between a worker and the parent). The Ray engine
    delivers the ``vector`` instead, or none when an actor has ``written`` the point itself
    (then ``indexed_at`` is the time it wrote in the payload)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    format: str
    pixels: Pixels | None = None
    slot: int | None = None
    vector: np.ndarray | None = None
    written: bool = False
    indexed_at: str | None = None


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


def prepare_into_slot(path: str, slot: int) -> PreparedFile | FailedFile:
    """Worker entry point: prepare ``path`` and put its pixels into ``slot``."""
    config, shared = _WorkerState.config, _WorkerState.shared
    if config is None or shared is None:
        raise RuntimeError("prepare_into_slot runs only in workers started by init_worker")
    result = prepare_file(path, config)
    if isinstance(result, FailedFile) or result.pixels is None:
        return result
    slot_view(shared_buffer(shared), slot, _WorkerState.shape)[...] = result.pixels
    return PreparedFile(
        path=result.path,
        size=result.size,
        mtime_ns=result.mtime_ns,
        sha256=result.sha256,
        width=result.width,
        height=result.height,
        format=result.format,
        slot=slot,
    )


def prepare_file(path: str, config: WorkerConfig) -> PreparedFile | FailedFile:
    """Read, hash, decode and preprocess ``path`` (in any process)."""
    read = read_file(path, max_bytes=config.max_file_bytes)
    if isinstance(read, FailedFile):
        return read
    return prepare_bytes(read, config)


@dataclass(frozen=True)
class FileBytes:
    """A file's content and its size and mtime when it was read."""

    path: str
    data: bytes
    size: int
    mtime_ns: int

    @property
    def sha256(self) -> str:
        """Hex digest of the content."""
        return hashlib.sha256(self.data).hexdigest()


def read_file(path: str, *, max_bytes: int | None = None) -> FileBytes | FailedFile:
    """Read a regular file once, its stat taken from the open handle (so they agree).

    It is opened without blocking, and anything but a regular file is refused after ``fstat``:
    a FIFO or a device put where an image was, after the scan, cannot hang the indexer. A file
    larger than ``max_bytes`` is refused before it is read.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return FailedFile(path, ImageErrorCode.FILE_NOT_FOUND, f"{path}: vanished before reading")
    except OSError as exc:
        message = f"{path}: cannot be read ({exc.strerror or exc}); check its permissions"
        return FailedFile(path, ImageErrorCode.FILE_UNREADABLE, message)
    try:
        stat = os.fstat(descriptor)
        if not S_ISREG(stat.st_mode):
            message = f"{path}: not a regular file (a FIFO, a device or a socket); skipped"
            return FailedFile(path, NOT_A_REGULAR_FILE, message)
        if max_bytes is not None and stat.st_size > max_bytes:
            message = (
                f"{path}: {stat.st_size:,} bytes, more than the limit of {max_bytes:,} "
                "(DINOSEEK_MAX_FILE_BYTES)"
            )
            return FailedFile(path, ImageErrorCode.FILE_TOO_LARGE, message)
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except OSError as exc:
        message = f"{path}: cannot be read ({exc.strerror or exc}); check its permissions"
        return FailedFile(path, ImageErrorCode.FILE_UNREADABLE, message)
    finally:
        os.close(descriptor)
    if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
        message = f"{path}: more than the limit of {max_bytes:,} bytes (DINOSEEK_MAX_FILE_BYTES)"
        return FailedFile(path, ImageErrorCode.FILE_TOO_LARGE, message)
    return FileBytes(path, data, stat.st_size, stat.st_mtime_ns)


def prepare_bytes(
    read: FileBytes, config: WorkerConfig, *, sha256: str | None = None
) -> PreparedFile | FailedFile:
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
    return PreparedFile(
        path=path,
        size=read.size,
        mtime_ns=read.mtime_ns,
        sha256=sha256 or read.sha256,
        width=prepared.width,
        height=prepared.height,
        format=prepared.format,
        pixels=prepared.pixels,
    )
