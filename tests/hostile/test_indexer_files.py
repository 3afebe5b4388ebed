"""Files that could stall the indexer: a FIFO put where an image was, a file far too large,
a decode that never ends. Each is reported with its own code, and a stop always stops."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek.scan import ScannedFile, ScanOptions
from dinoseek.store import EdgeStore
from indexer.decode import DecodePool, StoppedError, result_within
from indexer.pipeline import IndexOptions, index_folders
from indexer.workers import DecodedFile, FailedFile, WorkerConfig, prepare_file, read_file
from tests.helpers import encode, photo

REPO = Path(__file__).resolve().parents[2]


def scanned(path: Path) -> ScannedFile:
    return ScannedFile(str(path), str(path.parent), path.name, size=0, mtime_ns=0)


def config(**options: float | bool) -> WorkerConfig:
    return WorkerConfig(DINOV2_PREPROCESSING, 40_000_000, **options)  # type: ignore[arg-type]


def test_a_fifo_where_an_image_was_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open would hang (the test's timeout)
    failed = read_file(str(fifo))
    assert isinstance(failed, FailedFile)
    assert failed.code == "not_a_regular_file"
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(photo(1)))
    pool = DecodePool(config(), workers=0, window=4)
    results = list(pool.results([scanned(fifo), scanned(good)], threading.Event()))
    assert [r.code if isinstance(r, FailedFile) else "ok" for _, r in results] == [
        "not_a_regular_file",
        "ok",
    ]


def test_a_file_over_the_byte_limit_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(encode(photo(2, (400, 300)), "PNG"))
    failed = read_file(str(big), max_bytes=1000)
    assert isinstance(failed, FailedFile)
    assert failed.code == "file_too_large"
    assert "DINOSEEK_MAX_FILE_BYTES" in failed.message
    assert not isinstance(read_file(str(big), max_bytes=big.stat().st_size), FailedFile)


def test_a_slow_decode_is_reported_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode that does not end (here one that waits on a gate, as a pathological file
    would take its time) is reported as ``decode_timeout``; the files after it go on."""
    import indexer.decode

    paths = [tmp_path / f"{i}.jpg" for i in range(4)]
    for i, path in enumerate(paths):
        path.write_bytes(encode(photo(i, (160, 120))))
    gate = threading.Event()
    expired: list[str] = []  # decodes the gate held to its end: the pool waited for them

    def slow_on_file_1(path: str, worker_config: WorkerConfig) -> DecodedFile | FailedFile:
        if path.endswith("1.jpg") and not gate.wait(timeout=120):
            expired.append(path)
        return prepare_file(path, worker_config)

    decode_thread = indexer.decode._DecodeThread
    monkeypatch.setattr(indexer.decode, "_DecodeThread", lambda c: decode_thread(c, slow_on_file_1))
    pool = DecodePool(config(decode_timeout_s=2), workers=0, window=4)
    files = [scanned(path) for path in paths]
    results = [result for _, result in pool.results(files, threading.Event())]
    gate.set()
    assert isinstance(results[1], FailedFile)
    assert results[1].code == "decode_timeout"
    assert all(isinstance(results[i], DecodedFile) for i in (0, 2, 3))
    assert not expired, "the pool waited for the slow decode past its deadline"


def test_waiting_for_a_decode_stops_when_asked() -> None:
    never: Future[DecodedFile | FailedFile] = Future()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(StoppedError):  # not the TimeoutError of a wait that ignored the stop
        result_within(never, stop, timeout_s=60)


STUCK = """
import threading, time
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from indexer.decode import _DecodeThread
from indexer.workers import WorkerConfig
blocked = threading.Event()
thread = _DecodeThread(WorkerConfig(DINOV2_PREPROCESSING, 1000), lambda p, c: blocked.wait())
thread.submit("anything")
time.sleep(0.2)
print("leaving", flush=True)
"""


def test_a_stuck_decode_does_not_keep_the_indexer_alive() -> None:
    done = subprocess.run(  # a stuck thread that kept it alive would reach the timeout
        [sys.executable, "-c", STUCK],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving"


def test_a_link_swapped_in_after_the_scan_is_read_only_with_follow_links(
    tmp_path: Path, embedder: ImageEmbedder
) -> None:
    """The scan skips links unless ``--follow-links``; a link put where an image was, after
    the scan, is refused the same way (a private file's content is never indexed), while a
    run that follows links reads through them as before."""
    private = tmp_path / "private.jpg"
    private.write_bytes(encode(photo(3)))
    photos = tmp_path / "photos"
    photos.mkdir()
    swapped = photos / "a.jpg"
    swapped.symlink_to(private)
    refused = prepare_file(str(swapped), config())
    assert isinstance(refused, FailedFile)
    assert refused.code == "not_a_regular_file"
    assert "symbolic link" in refused.message
    followed = prepare_file(str(swapped), config(follow_links=True))
    assert isinstance(followed, DecodedFile)
    assert followed.sha256 == hashlib.sha256(private.read_bytes()).hexdigest()
    # A run with --follow-links indexes the linked image (its option reaches the reads).
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        failures_report=tmp_path / "failures.jsonl",
        workers=0,
        progress="off",
        scan=ScanOptions(follow_links=True),
    )
    with EdgeStore(tmp_path / "data") as store:
        summary = index_folders(embedder, store, options)
    assert (summary.embedded, summary.failed) == (1, 0)
