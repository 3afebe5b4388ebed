"""Decoding on the CPU: worker processes, a bounded window of files in flight, shared memory.

Files are decoded in submission order by a pool of spawned processes (fork is unsafe once
torch runs threads). At most ``window`` files are in flight, each owning one shared-memory
slot, so memory stays bounded on any folder size. A worker that dies (killed, or crashed in a
decoder) is replaced with a fresh pool and fresh shared memory; the files that were in flight
are retried one at a time, and a file that kills its worker again is reported as
``decoder_crashed`` instead of stopping the run.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from typing import TypeVar

from dinoseek.scan import ScannedFile
from indexer.workers import (
    DECODE_TIMEOUT,
    DecodedFile,
    FailedFile,
    FileInSlot,
    WorkerConfig,
    init_worker,
    prepare_file,
    prepare_into_slot,
    shared_buffer,
    slot_view,
    worker_started,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.25  # how often a wait for a decode looks at the stop event
WORKER_START_S = 120.0  # how long new workers may take to start (not a decode's deadline)
WORKER_EXIT_S = 2.0  # how long closing waits for busy workers before killing them

Result = DecodedFile | FailedFile


class _Generation:
    """One pool of workers and the shared memory they write into."""

    def __init__(self, config: WorkerConfig, workers: int, slots: int) -> None:
        height, width = config.preprocessing.output_size
        self.shape = (height, width, 3)
        self.shared = SharedMemory(create=True, size=max(1, slots * height * width * 3))
        self.free = deque(range(slots))
        self.executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=init_worker,
            initargs=(config, self.shared.name, self.shape, os.getpid()),
        )

    def wait_started(self, workers: int, stop: threading.Event) -> None:
        """Wait until every worker has answered, so that a decode's deadline never includes
        the start of a process (seconds on a busy machine). A worker that is up can answer
        several times while another is still starting: the rounds go on until ``workers``
        distinct processes have answered."""
        deadline = time.monotonic() + WORKER_START_S
        answered: set[int] = set()
        while len(answered) < workers and time.monotonic() < deadline:
            started = [self.executor.submit(worker_started) for _ in range(workers)]
            for future in started:
                try:
                    answered.add(result_within(future, stop, max(0.0, deadline - time.monotonic())))
                except (StoppedError, BrokenProcessPool, TimeoutError):
                    return  # stopping, or a pool that cannot start: the decodes will say so

    def submit(self, file: ScannedFile) -> tuple[int, Future[FileInSlot | FailedFile]]:
        slot = self.free.popleft()
        return slot, self.executor.submit(prepare_into_slot, file.path, slot)

    def collect(self, slot: int, result: FileInSlot | FailedFile) -> Result:
        """Copy the pixels out of ``slot`` and free it."""
        if isinstance(result, FailedFile):
            self.free.append(slot)
            return result
        pixels = slot_view(shared_buffer(self.shared), slot, self.shape).copy()
        self.free.append(slot)
        return DecodedFile(**result.facts(), pixels=pixels)

    def close(self) -> None:
        """Stop the workers (killing any still busy after a moment) and free the memory."""
        # ProcessPoolExecutor can only wait for its workers; a stuck one must be killed, so
        # the processes are taken from its (private, long-stable) table first.
        processes = list(getattr(self.executor, "_processes", {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + WORKER_EXIT_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        self.shared.close()
        self.shared.unlink()


class DecodePool:
    """Decodes files in parallel processes (or on a thread of this process when ``workers``
    is 0), each file within ``config.decode_timeout_s``."""

    def __init__(self, config: WorkerConfig, workers: int, window: int) -> None:
        self.config = config
        self.workers = workers
        self.window = max(1, window)
        self._generation: _Generation | None = None
        self._stop = threading.Event()

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, Result]]:
        """Decode ``files``, yielding results in order, until done or ``stop`` is set."""
        if self.workers == 0:
            yield from self._results_in_thread(files, stop)
            return
        self._stop = stop
        self._generation = self._new_generation()
        upcoming: Iterator[ScannedFile] = iter(files)
        in_flight: deque[tuple[ScannedFile, int, Future[FileInSlot | FailedFile]]] = deque()
        isolating = 0  # after a worker death: files still to run one at a time
        broken = False  # a worker died; everything in flight is lost

        def fill() -> None:
            nonlocal upcoming, broken
            assert self._generation is not None
            limit = 1 if isolating else self.window
            while len(in_flight) < limit and not stop.is_set():
                file = next(upcoming, None)
                if file is None:
                    return
                try:
                    slot, future = self._generation.submit(file)
                except BrokenProcessPool:
                    upcoming = _chain([file], upcoming)
                    broken = True
                    return
                in_flight.append((file, slot, future))

        fill()
        while not stop.is_set():
            if broken:
                # Retry what was in flight one file at a time, so that a file that kills its
                # worker (or hangs it) again is identified.
                broken = False
                lost = [file for file, _, _ in in_flight]
                in_flight.clear()
                self._restart()
                if lost:
                    log.warning("a decode worker died or hung; retrying the files it may have held")
                    upcoming = _chain(lost, upcoming)
                    isolating = len(lost)
                fill()
                continue
            if not in_flight:
                return
            file, slot, future = in_flight.popleft()
            try:
                raw = result_within(future, stop, self.config.decode_timeout_s)
            except StoppedError:
                return
            except (BrokenProcessPool, TimeoutError) as exc:
                if not isolating:
                    in_flight.appendleft((file, slot, future))
                    broken = True
                    if isinstance(exc, TimeoutError):  # a hung worker: stop them all
                        self._close_generation()
                    continue
                # It ran alone and its worker died or hung again: this file is the cause.
                isolating -= 1
                self._restart()
                yield file, decode_failure(file, exc, self.config.decode_timeout_s)
                fill()
                continue
            isolating = max(0, isolating - 1)
            yield file, self._generation.collect(slot, raw)
            fill()

    def _results_in_thread(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, Result]]:
        """No worker processes: one thread of this process decodes ahead while the model
        runs (Pillow releases the GIL while it decodes and resizes). A decode that runs past
        its deadline is reported and left behind on its own (daemon) thread."""
        upcoming = iter(files)
        decoder = _DecodeThread(self.config)
        in_flight: deque[tuple[ScannedFile, Future[Result]]] = deque()
        try:
            while not stop.is_set():
                while len(in_flight) < self.window and (file := next(upcoming, None)):
                    in_flight.append((file, decoder.submit(file.path)))
                if not in_flight:
                    return
                file, future = in_flight.popleft()
                try:
                    result = result_within(future, stop, self.config.decode_timeout_s)
                except StoppedError:
                    return
                except TimeoutError as exc:
                    decoder.abandon()
                    decoder = _DecodeThread(self.config)
                    waiting = [queued for queued, _ in in_flight]
                    in_flight = deque((f, decoder.submit(f.path)) for f in waiting)
                    yield file, decode_failure(file, exc, self.config.decode_timeout_s)
                    continue
                yield file, result
        finally:
            decoder.abandon()

    def _restart(self) -> None:
        self._close_generation()
        self._generation = self._new_generation()

    def _new_generation(self) -> _Generation:
        generation = _Generation(self.config, self.workers, self.window)
        try:
            generation.wait_started(self.workers, self._stop)
        except BaseException:
            generation.close()
            raise
        return generation

    def _close_generation(self) -> None:
        if self._generation is not None:
            self._generation.close()
            self._generation = None

    def close(self) -> None:
        """Stop the workers and free the shared memory."""
        self._close_generation()


class StoppedError(Exception):
    """``stop`` was set while waiting for a result."""


def result_within(future: Future[T], stop: threading.Event, timeout_s: float) -> T:
    """The future's result, checking ``stop`` every moment (``StoppedError``) and giving up after
    ``timeout_s`` (``TimeoutError``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return future.result(timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
        except FutureTimeoutError:
            if stop.is_set():
                raise StoppedError from None
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result within {timeout_s:g} s") from None


def decode_failure(file: ScannedFile, exc: BaseException, timeout_s: float) -> FailedFile:
    """The failure of a file whose decode hung (``TimeoutError``) or killed its worker, alone."""
    if isinstance(exc, TimeoutError):
        return FailedFile(
            file.path,
            DECODE_TIMEOUT,
            f"{file.path}: decoding took longer than {timeout_s:g} s "
            "(DINOSEEK_DECODE_TIMEOUT_S), alone as well; skipped",
        )
    return FailedFile(
        file.path,
        "decoder_crashed",
        f"{file.path}: the decode process died twice while reading this file "
        "(a decoder crash, or killed for lack of memory); skipped",
    )


class _DecodeThread:
    """One daemon thread decoding files in order: unlike a ThreadPoolExecutor's threads, a
    decode stuck on it cannot keep the process from exiting."""

    def __init__(
        self,
        config: WorkerConfig,
        prepare: Callable[[str, WorkerConfig], Result] = prepare_file,
    ) -> None:
        self.config = config
        self.prepare = prepare
        self._jobs: queue.SimpleQueue[tuple[str, Future[Result]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="decode", daemon=True).start()

    def submit(self, path: str) -> Future[Result]:
        future: Future[Result] = Future()
        self._jobs.put((path, future))
        return future

    def abandon(self) -> None:
        """No more jobs: the thread ends after the one it is on (if it ever returns)."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            path, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.prepare(path, self.config))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)


def _chain(first: Sequence[ScannedFile], rest: Iterator[ScannedFile]) -> Iterator[ScannedFile]:
    yield from first
    yield from rest
