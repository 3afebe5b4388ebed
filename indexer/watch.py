"""Watched folders: keep a collection in step with its folders as they change.

``FolderWatcher`` runs a first pass (the normal incremental scan of ``dinoseek index``,
which also repairs whatever a killed process left), then waits for file-system events
(``indexer.watch_changes``). Once a burst of changes has settled, it runs another pass
through the same ``index_folders``: the same pipeline, catalog, writer and failures report
as ``dinoseek index``, so new, changed, moved (relabelled when labels come from folders) and
deleted files are reflected exactly as a rerun of the command would. Files still being
written are left out of a pass (excluded by name) and taken by a later one.

A pass scans the whole of the watched folders (unchanged files cost one ``stat`` each and
are not read): the catalog stays the one truth, and a missed event is caught by the next
pass. ``WatchStatus`` (core) tells the service what the watcher is doing.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.errors import DinoseekError
from dinoseek.store import VectorStore
from dinoseek.watch_status import WatchMode, WatchStatus
from indexer.options import IndexOptions, IndexSummary, ModelOnDemand
from indexer.pipeline import index_folders
from indexer.watch_changes import WATCHED_EVENTS, ChangeHandler, ChangeTracker, Settled

log = logging.getLogger(__name__)

# File systems whose changes made elsewhere raise no local events: polled.
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "fuse.rclone", "afs", "ceph"}
)
# More files than this still being written and a pass waits for them, rather than leaving
# each out by name.
MAX_LEFT_OUT = 256


@dataclass(frozen=True)
class WatchOptions:
    """How to watch. ``poll``: True polls, False uses events, None (auto) uses events unless
    a folder is on a network file system or events cannot be had. ``settle_s``: quiet time
    after a burst, and the time a file's size and mtime must hold still. ``max_delay_s``: a
    pass starts at the latest this long after the first change, even while events keep
    coming. ``open_wait_s``: a file still open for writing is taken anyway once unchanged
    this long. ``retry_s``: the wait after a pass that failed."""

    poll: bool | None = None
    poll_interval_s: float = 2.0
    settle_s: float = 1.0
    max_delay_s: float = 10.0
    open_wait_s: float = 60.0
    retry_s: float = 30.0


class FolderWatcher:
    """Index ``options.roots`` now, then again after each settled burst of changes, until
    stopped. ``run`` blocks (``dinoseek index --watch``); ``start``/``stop`` run it on a
    thread of its own (``dinoseek serve --watch``, beside the service, on the same store)."""

    def __init__(
        self,
        model: ImageEmbedder | ModelOnDemand,
        store: VectorStore,
        options: IndexOptions,
        watch: WatchOptions,
        status: WatchStatus | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.options = options
        self.watch = watch
        self.mode: WatchMode = choose_mode(options.roots, watch.poll)
        self.status = status or WatchStatus(tuple(str(r) for r in options.roots), self.mode)
        self.status.update(mode=self.mode)
        self.tracker = ChangeTracker(settle_s=watch.settle_s, open_wait_s=watch.open_wait_s)
        self.stop_event = threading.Event()
        self.first_summary: IndexSummary | None = None
        # Called with the first pass's summary as soon as it is done (the command prints it).
        self.on_first_pass: Callable[[IndexSummary], None] | None = None
        self._thread: threading.Thread | None = None

    # -- on a thread (serve) -----------------------------------------------------------------

    def start(self) -> None:
        """Run on a thread of its own until ``stop``."""
        self._thread = threading.Thread(target=self._run_thread, name="dinoseek-watch")
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait: a pass under way stops at its next file, its writes flushed."""
        self.stop_event.set()
        self.tracker.wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run_thread(self) -> None:
        try:
            self.run(self.stop_event)
        except Exception as exc:  # logged, and shown in /ready: a server keeps serving
            log.exception("the folder watcher stopped")
            self.status.update(phase="stopped", last_error=str(exc) or type(exc).__name__)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """The first pass, then a pass per settled burst, until ``stop`` is set."""
        self.stop_event = stop
        observer = self._observe()
        try:
            self.first_summary = self._pass(Settled((), (), lost=True), first=True)
            if self.first_summary is not None and self.on_first_pass is not None:
                self.on_first_pass(self.first_summary)
            while not stop.is_set():
                self.tracker.wake.wait(timeout=self.watch.settle_s / 2)
                if stop.is_set():
                    break
                self._publish_pending()
                if not self.tracker.due(self.watch.max_delay_s):
                    if self.tracker.pending:
                        stop.wait(self.watch.settle_s / 4)  # events still arriving
                    continue
                settled = self.tracker.settle()
                if not (settled.paths or settled.lost) or len(settled.waiting) > MAX_LEFT_OUT:
                    self.tracker.give_back(settled.paths)
                    stop.wait(self.watch.settle_s / 2)
                    continue
                self._pass(settled)
        finally:
            observer.stop()
            observer.join()
            self.status.update(phase="stopped", pending=self.tracker.pending)

    def _observe(self) -> BaseObserver:
        """Start the observer (events, or polling), falling back to polling where events
        cannot be had (no inotify watches left, say)."""
        handler = ChangeHandler(
            self.tracker,
            self.options.roots,
            self.options.scan,
            closes_known=self.mode == "events" and sys.platform.startswith("linux"),
        )
        if self.mode == "events":
            observer = Observer()
            try:
                return _started(observer, handler, self.options.roots)
            except OSError as exc:  # e.g. no inotify watches left (fs.inotify.max_user_watches)
                _stop_quietly(observer)
                log.warning("file-system events unavailable (%s): polling instead", exc)
                self.mode = "polling"
                self.status.update(mode="polling")
                handler.closes_known = False
        observer = PollingObserver(timeout=self.watch.poll_interval_s)
        return _started(observer, handler, self.options.roots)

    def _publish_pending(self) -> None:
        pending = self.tracker.pending
        if pending:
            self.status.update(phase="pending", pending=pending)

    # -- one pass ------------------------------------------------------------------------------

    def _pass(self, settled: Settled, *, first: bool = False) -> IndexSummary | None:
        """One run of ``index_folders`` with the files still being written left out. The
        first pass's errors are the command's (a model that does not fit the collection...);
        a later pass that fails is said, and its changes are retried after ``retry_s``."""
        options = self._pass_options(settled.waiting, first=first)
        log.debug(
            "watch: a pass for %d changed paths, %d left out",
            len(settled.paths),
            len(settled.waiting),
        )
        self.status.update(phase="indexing", pending=self.tracker.pending)
        started = time.perf_counter()
        try:
            summary = index_folders(self.model, self.store, options, stop=self.stop_event)
        except DinoseekError as error:
            if first:
                raise
            self._failed(settled, error.message)
            return None
        except OSError as error:
            if first:
                raise
            self._failed(settled, f"{type(error).__name__}: {error}")
            return None
        counts = pass_counts(summary)
        log.info(
            "watch: %s pass in %.1f s: %s; %s images in %r%s",
            "first" if first else "a",
            time.perf_counter() - started,
            ", ".join(f"{n:,} {what}" for what, n in counts.items() if what != "points")
            or "nothing changed",
            f"{summary.points:,}",
            summary.collection,
            f" (failures: {summary.failures_report})" if summary.failed else "",
        )
        for warning in summary.warnings:
            log.warning("watch: %s", warning)
        self.status.pass_done(counts, pending=self.tracker.pending)
        if summary.interrupted:
            self.status.update(phase="stopped")
        return summary

    def _failed(self, settled: Settled, message: str) -> None:
        """A pass the store (or the disk) ended: said, its paths pending again, retried later."""
        log.error("watch: the pass failed: %s; retrying in %.0f s", message, self.watch.retry_s)
        self.tracker.give_back(settled.paths)
        if settled.lost:
            self.tracker.lost()
        self.status.pass_failed(message, pending=self.tracker.pending)
        self.stop_event.wait(self.watch.retry_s)

    def _pass_options(self, waiting: tuple[str, ...], *, first: bool) -> IndexOptions:
        excludes = left_out(self.options.roots, waiting)
        options = self.options
        if not first:
            options = replace(options, progress="off")
        if excludes:
            options = replace(
                options, scan=replace(options.scan, excludes=options.scan.excludes + excludes)
            )
        return options


def _started(
    observer: BaseObserver, handler: ChangeHandler, roots: tuple[Path, ...]
) -> BaseObserver:
    for root in roots:
        observer.schedule(handler, str(root), recursive=True, event_filter=WATCHED_EVENTS)
    observer.start()
    return observer


def _stop_quietly(observer: BaseObserver) -> None:
    """Stop an observer that failed to start (some of its watches may have)."""
    try:
        observer.stop()
    except Exception:  # it is being replaced, and why was logged
        log.debug("stopping the failed observer", exc_info=True)


def choose_mode(
    roots: tuple[Path, ...], poll: bool | None, mounts: dict[str, str] | None = None
) -> WatchMode:
    """``polling`` when asked, or (auto) when a root is on a network file system
    (``mounts``: mount point -> type, this system's by default)."""
    if poll is not None:
        return "polling" if poll else "events"
    mounts = mount_types() if mounts is None else mounts
    for root in roots:
        kind = file_system_of(str(root), mounts)
        if kind in NETWORK_FILE_SYSTEMS:
            log.info(
                "%s is on %s, where events from other machines do not arrive: polling", root, kind
            )
            return "polling"
    return "events"


def mount_types(mounts_file: str = "/proc/mounts") -> dict[str, str]:
    """Mount point -> file-system type (empty where the system does not say)."""
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            found[fields[1].replace("\\040", " ")] = fields[2]
    return found


def file_system_of(path: str, mounts: dict[str, str]) -> str | None:
    """The type of the file system holding ``path``: its longest mount-point prefix."""
    real = os.path.realpath(path)
    best = None
    for point in mounts:
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best)):
            best = point
    return mounts[best] if best is not None else None


def left_out(roots: tuple[Path, ...], waiting: tuple[str, ...]) -> tuple[str, ...]:
    """Exclude patterns for the files still being written: each one's path relative to its
    root, with the pattern characters of its name escaped."""
    patterns = []
    for path in waiting:
        for root in roots:
            prefix = os.path.abspath(root) + os.sep
            if path.startswith(prefix) and os.path.isfile(path):
                relative = path[len(prefix) :].replace(os.sep, "/")
                patterns.append(glob.escape(relative))
                break
    return tuple(patterns)


def pass_counts(summary: IndexSummary) -> dict[str, int]:
    """The counts of a pass that say what changed (zeros left out), and the size after it."""
    counts = {
        "embedded": summary.embedded,
        "relabelled": summary.relabelled,
        "removed": summary.removed,
        "duplicates": summary.duplicates,
        "failed": summary.failed,
    }
    return {**{k: v for k, v in counts.items() if v}, "points": summary.points}
