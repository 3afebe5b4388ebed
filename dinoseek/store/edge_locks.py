"""Locks of the embedded store: one process per collection, and one restore per data directory.

Only one process can open a Qdrant Edge shard, and Edge has no read-only mode. dinoseek takes
an exclusive ``flock`` on the collection's ``.lock`` file before it opens a shard, and writes
who holds it there (pid, command, and for a server its URL), so a second process gets
``StoreLockedError`` at once, naming the holder, instead of Edge's bare "WouldBlock". The
kernel drops a lock when its holder dies (SIGKILL included), so a lock is never stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dinoseek.errors import StoreLockedError

LOCK_FILE = ".lock"
RESTORE_LOCK_FILE = ".restore.lock"


def lock_collection(directory: Path, name: str, *, owner: Mapping[str, Any], where: str) -> IO[str]:
    """Take the exclusive lock of the collection in ``directory`` without waiting.

    Raises ``StoreLockedError`` naming the holder (``where`` describes the store).
    """
    lock_file = open(directory / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = parse_holder(lock_file.read())
        lock_file.close()
        raise StoreLockedError(locked_message(name, holder, where), holder=holder) from None
    _write_holder(lock_file, {"pid": os.getpid(), "since": time.time(), **owner})
    return lock_file


def try_flock(path: Path) -> IO[str] | None:
    """An exclusive flock on ``path`` (written with our pid), or None if someone holds it."""
    lock_file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - returned to the caller
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    _write_holder(lock_file, {"pid": os.getpid(), "since": time.time()})
    return lock_file


def release(lock_file: IO[str]) -> None:
    """Drop a lock taken by ``lock_collection`` or ``try_flock``."""
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    finally:
        lock_file.close()


def parse_holder(text: str) -> dict[str, Any]:
    """What the holder wrote into a lock file ({} when unreadable)."""
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def locked_message(name: str, holder: Mapping[str, Any], where: str) -> str:
    """Who holds collection ``name``, and what to do about it."""
    who = f"process {holder.get('pid', '?')}"
    if holder.get("command"):
        who += f" ({holder['command']})"
    message = (
        f"collection {name!r} of the {where} is in use by {who}. "
        "An embedded store can be opened by one process at a time"
    )
    if holder.get("url"):
        return (
            f"{message}: the dinoseek server at {holder['url']} owns it. Query it through "
            "that server, or stop the server first"
        )
    return f"{message}: wait for that process to finish or stop it, then try again"


def _write_holder(lock_file: IO[str], holder: Mapping[str, Any]) -> None:
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(json.dumps(dict(holder)))
    lock_file.flush()
