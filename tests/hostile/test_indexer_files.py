"""Files that could stall the indexer: a FIFO put where an image was, a file far too large,
a decode that never ends. Each is reported with its own code, and a stop always stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from PIL import Image

from dinoseek.images import DINOV2_PREPROCESSING
from indexer.decode import DecodePool, _result, _StoppedError
from indexer.scan import ScannedFile
from indexer.workers import FailedFile, PreparedFile, WorkerConfig, read_file
from tests.helpers import encode, photo

REPO = Path(__file__).resolve().parents[2]


def scanned(path: Path) -> ScannedFile:
    return ScannedFile(path=path, root=path.parent, relative_path=path.name, size=0, mtime_ns=0)


def config(**options: float) -> WorkerConfig:
    return WorkerConfig(DINOV2_PREPROCESSING, 40_000_000, **options)  # type: ignore[arg-type]


def test_a_fifo_where_an_image_was_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open would wait forever
    started = time.monotonic()
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
    assert time.monotonic() - started < 5


def test_a_file_over_the_byte_limit_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(encode(photo(2, (400, 300)), "PNG"))
    failed = read_file(str(big), max_bytes=1000)
    assert isinstance(failed, FailedFile)
    assert failed.code == "file_too_large"
    assert "DINOSEEK_MAX_FILE_BYTES" in failed.message
    assert not isinstance(read_file(str(big), max_bytes=big.stat().st_size), FailedFile)


def test_a_slow_decode_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    slow = tmp_path / "slow.png"
    Image.linear_gradient("L").resize((6000, 6000)).convert("RGB").save(slow, compress_level=1)
    fast = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(fast):
        path.write_bytes(encode(photo(i, (160, 120))))
    pool = DecodePool(config(decode_timeout_s=0.2), workers=0, window=4)
    files = [scanned(fast[0]), scanned(slow), scanned(fast[1]), scanned(fast[2])]
    started = time.monotonic()
    results = [result for _, result in pool.results(files, threading.Event())]
    assert isinstance(results[1], FailedFile)
    assert results[1].code == "decode_timeout"
    assert all(isinstance(results[i], PreparedFile) for i in (0, 2, 3))
    assert time.monotonic() - started < 2.0


def test_waiting_for_a_decode_stops_when_asked() -> None:
    never: Future[PreparedFile | FailedFile] = Future()
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(_StoppedError):
        _result(never, stop, timeout_s=60)
    assert time.monotonic() - started < 1.0


STUCK = """
import threading, time
from dinoseek.images import DINOV2_PREPROCESSING
from indexer.decode import _DecodeThread
from indexer.workers import WorkerConfig
blocked = threading.Event()
thread = _DecodeThread(WorkerConfig(DINOV2_PREPROCESSING, 1000), lambda p, c: blocked.wait())
thread.submit("anything")
time.sleep(0.2)
print("leaving", flush=True)
"""


def test_a_stuck_decode_does_not_keep_the_indexer_alive() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", STUCK],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving"
    assert time.monotonic() - started < 10
