"""Writes to the store, for the index run's driver and for the Ray actors that write to a
Qdrant server themselves.

- ``upsert_isolating``: an upsert that the store refuses for its data (``REFUSED_DATA``) is
  retried one point at a time, so that one bad point never ends a run; the points still
  refused come back as (id, reason). Any other failure is the store's (unreachable, locked,
  a full disk, a deleted collection...) and is raised.
- ``StoreWriter``: the driver's writer thread, which applies the run's operations (``Upsert``,
  ``SetPayload``, ``Delete``) in order through a bounded queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dinoseek.errors import PointRefusedError
from dinoseek.store import PointRecord, VectorStore

REFUSED_DATA = (PointRefusedError, TypeError, ValueError)


@dataclass(frozen=True)
class Upsert:
    """Insert or replace points."""

    points: list[PointRecord]


@dataclass(frozen=True)
class SetPayload:
    """Replace one point's payload."""

    point_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Delete points."""

    ids: list[str]


Operation = Upsert | SetPayload | Delete


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (store errors can run over many lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def upsert_isolating(
    store: VectorStore, collection: str, points: Sequence[PointRecord]
) -> list[tuple[str, str]]:
    """Upsert ``points``; where the store refuses them for their data, each point alone. The
    (id, reason) of each point still refused."""
    try:
        store.upsert(collection, list(points))
    except REFUSED_DATA as exc:
        if len(points) == 1:
            return [(points[0].id, first_line(exc))]
        return [
            refused for point in points for refused in upsert_isolating(store, collection, [point])
        ]
    return []


class StoreWriter:
    """Applies operations on a thread, in order, through a bounded queue.

    Points the store refuses for their data are collected in ``rejected`` (id, reason): see
    ``upsert_isolating``. A payload update refused leaves its point stale: its id is also in
    ``stale``. A refused delete, and any other failure, ends the run.

    Every ``optimize_every`` points written (0: never), it builds the index of what it wrote
    so far: a long run's collection is searchable at speed even if the run stops, and the
    build at its end covers only the last points.
    """

    def __init__(
        self, store: VectorStore, collection: str, *, depth: int = 4, optimize_every: int = 0
    ) -> None:
        self.store = store
        self.collection = collection
        self.optimize_every = optimize_every
        self._written_since_optimize = 0
        self.rejected: list[tuple[str, str]] = []
        self.stale: list[str] = []
        self._queue: queue.Queue[Operation | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dinoseek-writer", daemon=True)
        self._thread.start()

    def put(self, operation: Operation) -> None:
        """Queue an operation (blocks while the queue is full); re-raise a writer failure."""
        self._raise_if_failed()
        while True:
            try:
                self._queue.put(operation, timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def close(self) -> None:
        """Apply everything queued, stop the thread, re-raise a writer failure."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            operation = self._queue.get()
            if operation is None:
                return
            if self._error is not None:
                continue  # drain without applying: the run is failing
            try:
                self._apply(operation)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc

    def _apply(self, operation: Operation) -> None:
        if isinstance(operation, Upsert):
            rejected = upsert_isolating(self.store, self.collection, operation.points)
            self.rejected += rejected
            self._written_since_optimize += len(operation.points) - len(rejected)
            if self.optimize_every and self._written_since_optimize >= self.optimize_every:
                self.store.optimize(self.collection)
                self._written_since_optimize = 0
        elif isinstance(operation, SetPayload):
            try:
                self.store.set_payload(self.collection, operation.point_id, operation.payload)
            except REFUSED_DATA as exc:
                self.rejected.append((operation.point_id, first_line(exc)))
                self.stale.append(operation.point_id)
        else:
            self.store.delete(self.collection, operation.ids)
