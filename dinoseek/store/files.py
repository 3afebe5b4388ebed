"""Durable file operations of the embedded store: atomic replaces and directory fsyncs."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """``write_bytes_atomic`` of ``data`` as indented JSON."""
    write_bytes_atomic(path, json.dumps(data, indent=1).encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename over ``path``, fsync the directory: a crash
    leaves the old content or the new one, never a mix."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (files were fsynced when written)."""
    for directory, _, _ in os.walk(root):
        fsync_directory(Path(directory))
