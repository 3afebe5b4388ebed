"""The failures report: one JSON line per file that currently cannot be indexed.

It doubles as memory between runs: a file that failed and has not changed since (same size
and mtime) is not decoded again on the next run unless ``--retry-failed`` is given.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from dinoseek.collection_admin import failures_file


@dataclass(frozen=True)
class FailureRecord:
    """Why one file is not in the collection."""

    path: str
    code: str
    message: str
    size: int | None
    mtime_ns: int | None
    failed_at: str


def failures_report_path(data_dir: Path, collection: str) -> Path:
    """Where ``dinoseek index`` keeps ``collection``'s report unless told otherwise
    (``dinoseek.collection_admin``, which deletes and renames it with the collection)."""
    return failures_file(data_dir, collection)


def load_failures(path: Path) -> dict[str, FailureRecord]:
    """Read a report; a missing or unreadable report is an empty one (it is only a cache)."""
    records: dict[str, FailureRecord] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return records
    for line in lines:
        try:
            raw = json.loads(line)
            record = FailureRecord(
                path=str(raw["path"]),
                code=str(raw["code"]),
                message=str(raw["message"]),
                size=raw.get("size"),
                mtime_ns=raw.get("mtime_ns"),
                failed_at=str(raw.get("failed_at", "")),
            )
        except (ValueError, KeyError, TypeError):
            continue
        records[record.path] = record
    return records


def write_failures(path: Path, records: Iterable[FailureRecord]) -> None:
    """Replace the report atomically (a crash leaves the old or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for record in sorted(records, key=lambda r: r.path):
            handle.write(_json_line(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _json_line(record: FailureRecord) -> str:
    """The record as JSON, readable UTF-8; a name that is not valid UTF-8 (surrogate escapes)
    is written with JSON escapes instead, which read back to the same string."""
    line = json.dumps(asdict(record), ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(asdict(record))
    return line


def is_utf8(path: str) -> bool:
    """Whether ``path`` can be stored: a name that is not valid UTF-8 comes from the file
    system with surrogate escapes, which the store refuses."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """``path`` with the bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def not_utf8_message(path: str) -> str:
    """The failure of a file whose name the store cannot hold, with the remedy."""
    return (
        f"{printable(path)}: the file name is not valid UTF-8, which the store cannot hold; "
        "rename it (for example with `convmv -f latin1 -t utf-8 --notest`), then index again"
    )
