"""The changes a folder watcher has seen and not yet indexed (``indexer.watch``).

File-system events come from watchdog: inotify on Linux (with close-write events, which say
when a writer is done), or its polling observer where events do not arrive (network mounts,
or ``--poll``). Each event that concerns an image file (or a folder) of a watched root puts
its path in the ``ChangeTracker``; the watcher asks it which paths have *settled*:

- every path waits ``settle_s`` after its last event;
- a path whose file is gone, or a folder, is then settled;
- a file is still being written while a writer has it open after writing to it (inotify:
  a modify event not yet followed by close-write); one that stays so for ``open_wait_s``
  without changing size or mtime is taken anyway (a writer that never closes);
- every file's size and mtime must be the same at two looks ``settle_s`` apart (the only
  test the polling observer has, and the one for files whose writes were not seen: those
  created in a folder just made, before its watch was added, come as bare create events).

A burst of events is one set of paths, however many events: a pass covers all of them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from dinoseek.scan import ScanOptions, exclusion_matcher

# The events a watcher asks for (opens and reads, our own included, are left out).
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileAttribEvent,  # an mtime set after the close (cp -p, copy2, touch): looked at again
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
]

Stat = tuple[int, int] | None  # (size, mtime_ns), None when there is no file


@dataclass
class _Pending:
    """One changed path: its last look, when that look last changed, and whether a writer
    may still have it open."""

    stat: Stat
    changed_at: float
    writing: bool = False
    folder: bool = False


@dataclass(frozen=True)
class Settled:
    """What a pass may take now: ``paths`` (settled), ``waiting`` (files not complete yet,
    to leave out of the pass) and ``lost`` (events were lost: everything may have changed)."""

    paths: tuple[str, ...]
    waiting: tuple[str, ...]
    lost: bool


@dataclass
class ChangeTracker:
    """Changed paths, fed by the observer's thread and read by the watcher's."""

    settle_s: float
    open_wait_s: float
    clock: Callable[[], float] = time.monotonic
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _lost: bool = False
    _last_event_at: float = 0.0
    _first_pending_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    # -- fed by the observer ----------------------------------------------------------------

    def changed(self, path: str, *, writing: bool | None = None, folder: bool = False) -> None:
        """``path`` changed; ``writing``: a writer has it open (True), closed it (False), or
        unknown (None: keep what was known)."""
        now = self.clock()
        stat = None if folder else look(path)
        with self._lock:
            known = self._pending.get(path)
            was_writing = known.writing if known is not None else False
            self._pending[path] = _Pending(
                stat, now, was_writing if writing is None else writing, folder
            )
            self._touched(now)

    def lost(self) -> None:
        """Events were lost (the kernel's queue overflowed): a pass must look at everything."""
        with self._lock:
            self._lost = True
            self._touched(self.clock())

    def _touched(self, now: float) -> None:
        self._last_event_at = now
        if self._first_pending_at is None:
            self._first_pending_at = now
        self.wake.set()

    # -- read by the watcher ----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Changed paths not yet taken by a pass."""
        with self._lock:
            return len(self._pending) + (1 if self._lost and not self._pending else 0)

    def due(self, max_delay_s: float) -> bool:
        """Whether a pass should look now: changes are pending, and no event came for
        ``settle_s`` (a burst is over) or the oldest has waited ``max_delay_s``."""
        now = self.clock()
        with self._lock:
            if self._first_pending_at is None:
                return False
            quiet = now - self._last_event_at >= self.settle_s
            return quiet or now - self._first_pending_at >= max_delay_s

    def settle(self) -> Settled:
        """Look at every pending path again: take the settled ones out (they are the pass's
        now), keep the others."""
        with self._lock:
            items = list(self._pending.items())
        now = self.clock()
        looks = {path: (None if item.folder else look(path)) for path, item in items}
        taken: list[str] = []
        waiting: list[str] = []
        with self._lock:
            for path, before in items:
                item = self._pending.get(path)
                if item is not before:  # a new event came meanwhile: next time
                    waiting.append(path)
                    continue
                if self._is_settled(item, looks[path], now):
                    taken.append(path)
                    del self._pending[path]
                else:
                    waiting.append(path)
            lost, self._lost = self._lost, False
            if not self._pending:
                self._first_pending_at = None
                self.wake.clear()
        return Settled(tuple(taken), tuple(waiting), lost)

    def _is_settled(self, item: _Pending, stat: Stat, now: float) -> bool:
        if now - item.changed_at < self.settle_s:
            return False  # its last event is too recent: more may come
        if item.folder or stat is None:
            return True  # nothing left to be written
        if stat != item.stat:
            item.stat, item.changed_at = stat, now
            return False
        return not item.writing or now - item.changed_at >= self.open_wait_s

    def give_back(self, paths: Iterable[str]) -> None:
        """Pending again (a pass that failed): they are looked at afresh next time."""
        now = self.clock()
        with self._lock:
            for path in paths:
                if path not in self._pending:
                    self._pending[path] = _Pending(look(path), now - self.settle_s)
            if self._pending:
                self._touched(now)


def look(path: str) -> Stat:
    """(size, mtime_ns) of the file at ``path``; None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if os.path.isfile(path) else None


class ChangeHandler(FileSystemEventHandler):
    """Puts the events that concern the watched images into a ``ChangeTracker``.

    ``closes_known``: the observer reports close-write (inotify); only then does a create or
    modify event mean "still being written" until its close.
    """

    def __init__(
        self,
        tracker: ChangeTracker,
        roots: tuple[Path, ...],
        scan: ScanOptions,
        *,
        closes_known: bool,
    ) -> None:
        self.tracker = tracker
        self.relevant = RelevantPaths(roots, scan)
        self.closes_known = closes_known

    def on_any_event(self, event: FileSystemEvent) -> None:
        """Record the paths of ``event`` that matter."""
        if isinstance(event, EventsLostEvent):
            self.tracker.lost()
            return
        source = os.fsdecode(event.src_path)
        if event.is_directory:
            if isinstance(event, DirCreatedEvent | DirDeletedEvent | DirMovedEvent):
                for path in (source, os.fsdecode(event.dest_path)):
                    if path and self.relevant.folder(path):
                        self.tracker.changed(path, folder=True)
            return
        if isinstance(event, FileMovedEvent):
            if self.relevant.file(source):
                self.tracker.changed(source, writing=False)
            destination = os.fsdecode(event.dest_path)
            if self.relevant.file(destination):
                self.tracker.changed(destination, writing=False)  # renamed into place: whole
            return
        if not self.relevant.file(source):
            return
        if isinstance(event, FileClosedEvent):
            self.tracker.changed(source, writing=False)
        elif isinstance(event, FileModifiedEvent):
            self.tracker.changed(source, writing=True if self.closes_known else None)
        else:  # created (a hard link, a file moved in from a new folder...) or deleted
            self.tracker.changed(source)


class RelevantPaths:
    """Which paths a pass would look at: image files (by extension) and folders under a
    watched root, not excluded, not in a skipped folder (the store's own data directory)."""

    def __init__(self, roots: tuple[Path, ...], scan: ScanOptions) -> None:
        self.roots = tuple(os.path.abspath(root) for root in roots)
        self.excluded = exclusion_matcher(scan.excludes)
        self.skipped = tuple(os.path.abspath(d) + os.sep for d in scan.skip_dirs)
        self.extensions = scan.extensions

    def file(self, path: str) -> bool:
        """An image file that a scan would list."""
        if os.path.splitext(path)[1].lower() not in self.extensions:
            return False
        return self.folder(path)

    def folder(self, path: str) -> bool:
        """Under a root, outside skipped folders, with no excluded part."""
        if any((path + os.sep).startswith(skipped) for skipped in self.skipped):
            return False
        for root in self.roots:
            if path.startswith(root + os.sep):
                relative = path[len(root) + 1 :]
                parts = relative.split(os.sep)
                return not any(
                    self.excluded(part) or self.excluded("/".join(parts[: i + 1]))
                    for i, part in enumerate(parts)
                )
        return False
