"""The core's reader of files that may be hostile: regular files only, no blocking open, no
link in the last component unless asked, a size limit and a deadline, the hash on the way."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dinoseek.errors import FileReadError
from dinoseek.file_read import CHUNK_BYTES, FileContent, ReadLimits, read_file


def finished(read: Callable[[], object], within_s: float = 30.0) -> object:
    """What ``read`` returned or raised, or a failure if it is still blocked after
    ``within_s`` (a hang detector, generous: a refused read takes microseconds)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(read())
        except FileReadError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within_s)
    assert outcome, f"still blocked after {within_s:g} s"
    return outcome[0]


def test_a_file_is_read_with_its_facts_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    data = os.urandom(2 * CHUNK_BYTES + 123)  # several chunks
    path.write_bytes(data)
    content = read_file(str(path), ReadLimits(max_bytes=len(data), timeout_s=60))
    assert content == FileContent(
        str(path), data, len(data), path.stat().st_mtime_ns, hashlib.sha256(data).hexdigest()
    )


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "a.jpg"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open would wait forever
    refused = finished(lambda: read_file(str(fifo), ReadLimits()))
    assert isinstance(refused, FileReadError)
    assert refused.code == "not_a_regular_file"
    assert "FIFO" in refused.message


def test_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileReadError) as directory:
        read_file(str(tmp_path), ReadLimits())
    assert directory.value.code == "not_a_regular_file"
    with pytest.raises(FileReadError) as missing:
        read_file(str(tmp_path / "gone.jpg"), ReadLimits())
    assert missing.value.code == "file_not_found"


def test_a_link_is_followed_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "private.bin"
    target.write_bytes(b"private bytes")
    link = tmp_path / "image.jpg"
    link.symlink_to(target)
    with pytest.raises(FileReadError) as refused:
        read_file(str(link), ReadLimits())
    assert refused.value.code == "not_a_regular_file"
    assert "symbolic link" in refused.value.message
    assert read_file(str(link), ReadLimits(follow_links=True)).data == b"private bytes"
    # A link to a FIFO, followed, is still no regular file.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link.unlink()
    link.symlink_to(fifo)
    refused_fifo = finished(lambda: read_file(str(link), ReadLimits(follow_links=True)))
    assert isinstance(refused_fifo, FileReadError)
    assert refused_fifo.code == "not_a_regular_file"


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 1001)
    with pytest.raises(FileReadError) as refused:
        read_file(str(path), ReadLimits(max_bytes=1000))
    assert refused.value.code == "file_too_large"
    assert "DINOSEEK_MAX_FILE_BYTES" in refused.value.message
    assert len(read_file(str(path), ReadLimits(max_bytes=1001)).data) == 1001


def test_a_read_past_its_deadline_is_given_up(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 10)
    with pytest.raises(FileReadError) as late:
        read_file(str(path), ReadLimits(timeout_s=0))  # the deadline is past before any chunk
    assert late.value.code == "read_timeout"
