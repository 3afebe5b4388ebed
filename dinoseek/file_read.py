"""Reading a file that may be hostile: the one way the indexer and the service open a file.

A path read from disk can change between two looks: an image can become a FIFO, a device, a
directory or a symbolic link to some other file, and a file can change or grow while it is
read. ``read_file`` and ``copy_file`` therefore:

- open without blocking (``O_NONBLOCK``: a FIFO nobody writes to cannot hang the open) and,
  unless ``follow_links``, without following a link in the last component (``O_NOFOLLOW``);
- refuse anything but a regular file, from ``fstat`` on the open descriptor (so the facts
  and the bytes are those of one file);
- refuse a file larger than ``max_bytes`` before reading it, and one that grows past it
  while it is read;
- read in chunks, hashing as they go, and give up at a deadline.

Failures raise ``FileReadError``, whose ``code`` says why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Protocol

from dinoseek.errors import FileReadError, ImageErrorCode

CHUNK_BYTES = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class Sink(Protocol):
    """Where ``copy_file`` writes: a file object, an in-memory buffer."""

    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class ReadLimits:
    """What a read may cost. ``max_bytes`` None: no size limit; ``timeout_s`` None: no
    deadline. ``follow_links``: whether the last component may be a symbolic link."""

    max_bytes: int | None = None
    timeout_s: float | None = None
    follow_links: bool = False


@dataclass(frozen=True)
class FileFacts:
    """What a read saw: the size and mtime from ``fstat`` and the hash of the bytes read."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class FileContent:
    """A file's bytes and the facts of the read that gave them."""

    path: str
    data: bytes
    size: int
    mtime_ns: int
    sha256: str


class _Chunks:
    """A sink that keeps the chunks, joined once at the end."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.parts.append(data)
        return len(data)


def read_file(path: str, limits: ReadLimits) -> FileContent:
    """A regular file's content, read once (see the module's docstring)."""
    chunks = _Chunks()
    facts = copy_file(path, chunks, limits)
    return FileContent(path, b"".join(chunks.parts), facts.size, facts.mtime_ns, facts.sha256)


def copy_file(path: str, sink: Sink, limits: ReadLimits) -> FileFacts:
    """Copy a regular file's content into ``sink``, hashing it on the way; its facts."""
    deadline = None if limits.timeout_s is None else time.monotonic() + limits.timeout_s
    descriptor = _open(path, follow_links=limits.follow_links)
    try:
        facts = os.fstat(descriptor)
        _check_kind(path, facts.st_mode)
        if limits.max_bytes is not None and facts.st_size > limits.max_bytes:
            raise _too_large(path, limits.max_bytes, f"{facts.st_size:,} bytes")
        digest = _copy(path, descriptor, sink, limits, deadline)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    finally:
        os.close(descriptor)
    return FileFacts(facts.st_size, facts.st_mtime_ns, digest)


def _open(path: str, *, follow_links: bool) -> int:
    flags = _OPEN_FLAGS if follow_links else _OPEN_FLAGS | os.O_NOFOLLOW
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise FileReadError(
            f"{path}: vanished before reading", code=ImageErrorCode.FILE_NOT_FOUND
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links and os.path.islink(path):
            raise FileReadError(
                f"{path}: is a symbolic link now, and links are not followed here",
                code=ImageErrorCode.NOT_A_REGULAR_FILE,
            ) from None
        if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind
            raise FileReadError(
                f"{path}: not a regular file (a socket or a device)",
                code=ImageErrorCode.NOT_A_REGULAR_FILE,
            ) from None
        raise _unreadable(path, exc) from None


def _check_kind(path: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "a directory"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    else:
        kind = "a device or a socket"
    raise FileReadError(
        f"{path}: not a regular file ({kind})", code=ImageErrorCode.NOT_A_REGULAR_FILE
    )


def _copy(
    path: str, descriptor: int, sink: Sink, limits: ReadLimits, deadline: float | None
) -> str:
    digest = hashlib.sha256()
    total = 0
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            raise FileReadError(
                f"{path}: reading took longer than {limits.timeout_s:g} s",
                code=ImageErrorCode.READ_TIMEOUT,
            )
        chunk = os.read(descriptor, CHUNK_BYTES)
        if not chunk:
            return digest.hexdigest()
        total += len(chunk)
        if limits.max_bytes is not None and total > limits.max_bytes:  # it grew while read
            raise _too_large(path, limits.max_bytes, "grew while being read")
        digest.update(chunk)
        sink.write(chunk)


def _too_large(path: str, max_bytes: int, what: str) -> FileReadError:
    return FileReadError(
        f"{path}: {what}, more than the limit of {max_bytes:,} bytes (DINOSEEK_MAX_FILE_BYTES)",
        code=ImageErrorCode.FILE_TOO_LARGE,
    )


def _unreadable(path: str, exc: OSError) -> FileReadError:
    return FileReadError(
        f"{path}: cannot be read ({exc.strerror or exc}); check its permissions",
        code=ImageErrorCode.FILE_UNREADABLE,
    )
