"""The watcher's bookkeeping of changes (``indexer.watch_changes``, ``indexer.watch``): bursts
become one pass, files still being written wait, events for other files are ignored, network
mounts are polled. A clock of the test's own decides every "later": no test waits."""

from __future__ import annotations

from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.scan import DEFAULT_EXCLUDES, ScanOptions, exclusion_matcher
from dinoseek.store import EdgeStore
from dinoseek.watch_status import WatchStatus
from indexer.options import IndexOptions
from indexer.watch import (
    FolderWatcher,
    WatchOptions,
    choose_mode,
    file_system_of,
    left_out,
    mount_types,
)
from indexer.watch_changes import ChangeHandler, ChangeTracker

SETTLE_S = 1.0
OPEN_WAIT_S = 60.0


class Clock:
    """Seconds that pass only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> ChangeTracker:
    return ChangeTracker(settle_s=SETTLE_S, open_wait_s=OPEN_WAIT_S, clock=clock)


def test_a_burst_of_ten_thousand_files_is_one_pass(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    paths = []
    for i in range(10_000):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"x")
        paths.append(str(path))
        tracker.changed(str(path), writing=True)
        tracker.changed(str(path), writing=False)  # written, then closed
        clock.advance(0.0001)
    assert tracker.pending == 10_000
    assert not tracker.due(max_delay_s=10)  # events still coming
    clock.advance(SETTLE_S)
    assert tracker.due(max_delay_s=10)
    settled = tracker.settle()
    assert sorted(settled.paths) == sorted(paths)
    assert settled.waiting == ()
    assert tracker.pending == 0
    assert not tracker.due(max_delay_s=10)


def test_a_file_open_for_writing_waits_for_its_close(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    path = tmp_path / "slow.jpg"
    path.write_bytes(b"half")
    tracker.changed(str(path), writing=True)
    clock.advance(SETTLE_S * 5)  # unchanged for a while, but not closed
    settled = tracker.settle()
    assert settled.paths == ()
    assert settled.waiting == (str(path),)
    path.write_bytes(b"half and the rest")
    tracker.changed(str(path), writing=False)
    clock.advance(SETTLE_S)
    assert tracker.settle().paths == (str(path),)


def test_a_file_never_closed_is_taken_once_unchanged_long_enough(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    path = tmp_path / "held.jpg"
    path.write_bytes(b"data")
    tracker.changed(str(path), writing=True)
    clock.advance(OPEN_WAIT_S - 1)
    assert tracker.settle().paths == ()
    clock.advance(1)
    assert tracker.settle().paths == (str(path),)


def test_a_file_that_grows_between_two_looks_waits(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    """What polling relies on: no event says the file is being written, only its size."""
    path = tmp_path / "growing.jpg"
    path.write_bytes(b"a")
    tracker.changed(str(path))
    path.write_bytes(b"ab")  # written on, unseen
    clock.advance(SETTLE_S)
    assert tracker.settle().waiting == (str(path),)
    clock.advance(SETTLE_S)
    assert tracker.settle().paths == (str(path),)


def test_gone_files_and_folders_settle_after_the_quiet_time(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    tracker.changed(str(tmp_path / "deleted.jpg"))
    tracker.changed(str(tmp_path / "new-folder"), folder=True)
    assert tracker.settle().paths == ()  # too recent
    clock.advance(SETTLE_S)
    assert set(tracker.settle().paths) == {
        str(tmp_path / "deleted.jpg"),
        str(tmp_path / "new-folder"),
    }


def test_a_steady_stream_still_gets_a_pass_after_the_longest_delay(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    for i in range(30):
        tracker.changed(str(tmp_path / f"{i}.jpg"))
        clock.advance(SETTLE_S / 2)
        if i < 19:
            assert not tracker.due(max_delay_s=10), i
    assert tracker.due(max_delay_s=10)


def test_lost_events_ask_for_a_pass_over_everything(tracker: ChangeTracker, clock: Clock) -> None:
    tracker.lost()
    clock.advance(SETTLE_S)
    assert tracker.due(max_delay_s=10)
    assert tracker.settle().lost
    assert not tracker.settle().lost


def test_the_handler_records_what_a_pass_would_look_at(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    root = tmp_path / "photos"
    data = root / "dinoseek-data"
    (root / "cats").mkdir(parents=True)
    scan = ScanOptions(skip_dirs=(data,))
    handler = ChangeHandler(tracker, (root,), scan, closes_known=True)
    cat = root / "cats" / "a.jpg"
    cat.write_bytes(b"jpeg")
    ignored = [
        FileModifiedEvent(str(root / "notes.txt")),  # not an image
        FileModifiedEvent(str(root / ".hidden" / "b.jpg")),  # excluded by default
        FileModifiedEvent(str(root / "cats" / "@eaDir" / "b.jpg")),
        FileModifiedEvent(str(data / "images" / "x.jpg")),  # the store's own directory
        FileModifiedEvent(str(tmp_path / "elsewhere.jpg")),  # outside the root
        DirCreatedEvent(str(root / "thumbnails")),
    ]
    for event in ignored:
        handler.on_any_event(event)
    assert tracker.pending == 0
    handler.on_any_event(FileCreatedEvent(str(cat)))
    handler.on_any_event(FileModifiedEvent(str(cat)))
    clock.advance(SETTLE_S * 2)
    assert tracker.settle().waiting == (str(cat),)  # written to, not closed yet
    handler.on_any_event(FileClosedEvent(str(cat)))
    handler.on_any_event(
        FileMovedEvent(str(root / "cats" / "a.part"), str(root / "cats" / "c.jpg"))
    )
    handler.on_any_event(FileDeletedEvent(str(root / "cats" / "gone.jpg")))
    clock.advance(SETTLE_S)
    taken = set(tracker.settle().paths)
    assert taken == {str(cat), str(root / "cats" / "c.jpg"), str(root / "cats" / "gone.jpg")}
    handler.on_any_event(EventsLostEvent(str(root), is_directory=True))
    clock.advance(SETTLE_S)
    assert tracker.settle().lost


def test_without_close_events_a_modified_file_waits_only_for_its_size_to_hold(
    tmp_path: Path, tracker: ChangeTracker, clock: Clock
) -> None:
    """The polling observer reports no closes: a modify event must not hold a file forever."""
    path = tmp_path / "a.jpg"
    path.write_bytes(b"jpeg")
    handler = ChangeHandler(tracker, (tmp_path,), ScanOptions(), closes_known=False)
    handler.on_any_event(FileModifiedEvent(str(path)))
    clock.advance(SETTLE_S)
    assert tracker.settle().paths == (str(path),)


def test_files_left_out_of_a_pass_are_matched_by_exact_name(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "a[1]").mkdir(parents=True)
    odd = root / "a[1]" / "x*?.jpg"
    odd.write_bytes(b"half")
    patterns = left_out((root,), (str(odd), str(root / "gone.jpg")))
    assert len(patterns) == 1  # a file no longer there is not left out
    excluded = exclusion_matcher(DEFAULT_EXCLUDES + patterns)
    assert excluded("a[1]/x*?.jpg")
    assert not excluded("a[1]/xyz.jpg")
    assert not excluded("a1/x*?.jpg")


def test_network_file_systems_are_polled(tmp_path: Path) -> None:
    mounts_file = tmp_path / "mounts"
    mounts_file.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "nas:/photos /mnt/nas nfs4 rw 0 0\n"
        "//host/share /mnt/my\\040share cifs rw 0 0\n"
    )
    mounts = mount_types(str(mounts_file))
    assert file_system_of("/mnt/nas/2024/x", mounts) == "nfs4"
    assert file_system_of("/mnt/nasty", mounts) == "ext4"
    assert file_system_of("/mnt/my share/a", mounts) == "cifs"
    assert choose_mode((Path("/mnt/nas/2024"),), None, mounts) == "polling"
    assert choose_mode((Path("/home/me"),), None, mounts) == "events"
    assert choose_mode((Path("/home/me"),), True, mounts) == "polling"
    assert choose_mode((Path("/mnt/nas"),), False, mounts) == "events"


def test_the_status_says_what_the_watcher_does() -> None:
    status = WatchStatus(("/photos",), "events")
    assert status.snapshot().describe() == "starting"
    status.update(phase="pending", pending=12)
    assert status.snapshot().describe() == "12 pending"
    status.pass_done({"embedded": 12, "points": 40}, pending=0)
    state = status.snapshot()
    assert (state.phase, state.passes, state.last_pass) == (
        "idle",
        1,
        {"embedded": 12, "points": 40},
    )
    status.pass_failed("the disk is full", pending=3)
    assert status.snapshot().describe() == "3 pending; last pass failed: the disk is full"
    assert status.snapshot().to_dict()["last_error"] == "the disk is full"
    assert status.snapshot().to_dict()["folders"] == ["/photos"]


class NoInotify(Observer):  # type: ignore[misc,valid-type]
    """The event observer of a machine whose inotify watches have run out (a stand-in: the
    limit is the whole machine's, not a test's to lower)."""

    def start(self) -> None:
        raise OSError(28, "inotify watch limit reached")


def test_without_events_the_watcher_polls(
    tmp_path: Path, embedder: ImageEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("indexer.watch.Observer", NoInotify)
    options = IndexOptions(roots=(tmp_path,), collection="images", failures_report=tmp_path / "f")
    with EdgeStore(tmp_path / "data") as store:
        watcher = FolderWatcher(embedder, store, options, WatchOptions(poll=False))
        assert watcher.mode == "events"
        observer = watcher._observe()
        try:
            assert isinstance(observer, PollingObserver)
            assert watcher.mode == watcher.status.snapshot().mode == "polling"
        finally:
            observer.stop()
            observer.join()
