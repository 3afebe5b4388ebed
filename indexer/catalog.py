"""Catalog: what the collection holds, by file path and by point, and how it must change.

The store is the only state: every run rebuilds the catalog from the points' payloads, so a
run killed at any moment is followed by a run that sees exactly what was acknowledged and
converges. Each point is one distinct content (its id is uuid5 of the sha256) and lists every
file that has that content.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinoseek.errors import ConfigError
from dinoseek.store import VectorStore


@dataclass(frozen=True)
class FileEntry:
    """One file of a point, as recorded in its payload."""

    path: str
    root: str
    relative_path: str
    size: int
    mtime_ns: int
    label: str | None = None


@dataclass
class PointEntry:
    """A point of the collection: its files and the facts about its content."""

    id: str
    files: dict[str, FileEntry]
    content: dict[str, Any] = field(default_factory=dict)


# Payload keys describing the content itself (not its files).
CONTENT_KEYS = ("sha256", "size", "width", "height", "format", "model_id", "indexed_at")


def build_payload(point: PointEntry) -> dict[str, Any]:
    """The payload stored for a point: its primary file first, every file listed."""
    files = sorted(point.files.values(), key=lambda f: f.path)
    primary = files[0]
    label = next((f.label for f in files if f.label), None)
    return {
        "path": primary.path,
        "paths": [f.path for f in files],
        "root": primary.root,
        "roots": sorted({f.root for f in files}),
        "relative_path": primary.relative_path,
        "label": label,
        "files": [dataclasses.asdict(f) for f in files],
        **{key: point.content[key] for key in CONTENT_KEYS if key in point.content},
    }


def _file_from_payload(raw: Mapping[str, Any]) -> FileEntry | None:
    try:
        return FileEntry(
            path=str(raw["path"]),
            root=str(raw["root"]),
            relative_path=str(raw["relative_path"]),
            size=int(raw["size"]),
            mtime_ns=int(raw["mtime_ns"]),
            label=raw.get("label"),
        )
    except (KeyError, TypeError, ValueError):
        return None


class Catalog:
    """The collection's points and a path index over them. Only the main thread uses it."""

    def __init__(self, points: Iterable[PointEntry] = ()) -> None:
        self.points: dict[str, PointEntry] = {}
        self._owners: dict[str, set[str]] = defaultdict(set)
        for point in points:
            self.points[point.id] = point
            for path in point.files:
                self._owners[path].add(point.id)

    @classmethod
    def load(cls, store: VectorStore, collection: str) -> Catalog:
        """Read every point's payload (no vectors)."""
        entries = []
        for stored in store.scroll(collection, batch_size=1024):
            files = {}
            for raw in stored.payload.get("files") or ():
                entry = _file_from_payload(raw) if isinstance(raw, Mapping) else None
                if entry is not None:
                    files[entry.path] = entry
            content = {k: stored.payload[k] for k in CONTENT_KEYS if k in stored.payload}
            entries.append(PointEntry(id=stored.id, files=files, content=content))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.points)

    def paths(self) -> list[str]:
        """Every recorded file path."""
        return list(self._owners)

    def owners(self, path: str) -> set[str]:
        """Ids of the points listing ``path`` (more than one only after an interrupted run)."""
        return set(self._owners.get(path, ()))

    def unchanged(self, path: str, size: int, mtime_ns: int) -> FileEntry | None:
        """The recorded entry if ``path`` is recorded once with this size and mtime."""
        owners = self._owners.get(path)
        if not owners or len(owners) != 1:
            return None
        entry = self.points[next(iter(owners))].files[path]
        if entry.size == size and entry.mtime_ns == mtime_ns:
            return entry
        return None

    def add_file(self, point_id: str, entry: FileEntry, content: Mapping[str, Any]) -> bool:
        """Record ``entry`` under ``point_id``, creating the point. True if the point is new."""
        point = self.points.get(point_id)
        created = point is None
        if point is None:
            point = PointEntry(id=point_id, files={}, content=dict(content))
            self.points[point_id] = point
        point.files[entry.path] = entry
        self._owners[entry.path].add(point_id)
        return created

    def set_label(self, point_id: str, path: str, label: str | None) -> None:
        """Change the label of one file of a point."""
        point = self.points[point_id]
        point.files[path] = dataclasses.replace(point.files[path], label=label)

    def remove_path(self, path: str, *, keep: str | None = None) -> tuple[list[str], list[str]]:
        """Drop ``path`` from every point except ``keep``.

        Returns (ids of points that still have files and need a payload update, ids of points
        left without files, to delete).
        """
        updated, emptied = [], []
        for point_id in sorted(self._owners.get(path, ())):
            if point_id == keep:
                continue
            point = self.points[point_id]
            point.files.pop(path, None)
            self._owners[path].discard(point_id)
            if point.files:
                updated.append(point_id)
            else:
                del self.points[point_id]
                emptied.append(point_id)
        if not self._owners.get(path):
            self._owners.pop(path, None)
        return updated, emptied


@dataclass(frozen=True)
class LabelSource:
    """Where labels come from: parent folder names, and/or a CSV of path -> label."""

    from_folders: bool = False
    mapping: Mapping[str, str] = field(default_factory=dict)

    def label_for(self, path: str, relative_path: str) -> str | None:
        """The CSV entry (absolute or root-relative path) wins over the folder name."""
        if self.mapping:
            label = self.mapping.get(path) or self.mapping.get(relative_path)
            if label:
                return label
        if self.from_folders:
            parent = Path(relative_path).parent
            return parent.name or None
        return None


def read_labels_csv(path: Path) -> dict[str, str]:
    """Read ``path,label`` rows (a header row is optional). Paths may be absolute or relative
    to their root; absolute ones are normalised."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"labels file {path} is not a UTF-8 CSV file: {exc}") from None
    mapping: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(
                f"{path}, line {number}: expected 'path,label', got {','.join(row)!r}"
            )
        key = row[0].strip()
        if os.path.isabs(key):
            key = os.path.abspath(key)
        mapping[key] = row[1].strip()
    return mapping
