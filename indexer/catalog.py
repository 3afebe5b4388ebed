"""Catalog: what the collection holds, by file path and by point, and how it must change.

The store is the only state: every run rebuilds the catalog from the points' payloads (or
from their saved copy, ``indexer.catalog_cache``, while the collection's state token says
nothing was written since), so a run killed at any moment is followed by a run that sees
exactly what was acknowledged and converges. Each point is one distinct content (its id is
uuid5 of the sha256) and lists every file that has that content.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinoseek.store import VectorStore
from indexer.workers import FileFacts


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a point, as recorded in its payload."""

    path: str
    root: str
    relative_path: str
    size: int
    mtime_ns: int
    label: str | None = None


# Payload keys describing the content itself (not its files).
CONTENT_KEYS = ("sha256", "size", "width", "height", "format", "model_id", "indexed_at")
_ABSENT = object()  # a content key the payload does not have
# A label set over HTTP (the page) is marked so in the payload (``dinoseek.labelling``).
LABEL_SOURCE_KEY = "label_source"
API_LABEL_SOURCE = "api"


@dataclass(frozen=True, slots=True)
class ApiLabel:
    """A point's label set over HTTP (``label_source: api``), kept by index runs unless they
    relabel; ``label`` None: the label was removed there."""

    label: str | None


class PointEntry:
    """A point of the collection: its files and the facts about its content.

    A run holds one per point of the collection, so it is kept small: slots, the files as a
    tuple (almost always of one), the content as a tuple in ``CONTENT_KEYS`` order. ``files``
    and ``content`` are dicts made on demand.
    """

    __slots__ = ("_content", "_files", "api_label", "id")

    def __init__(
        self,
        id: str,
        files: Mapping[str, FileEntry] | None = None,
        content: Mapping[str, Any] | None = None,
        api_label: ApiLabel | None = None,
    ) -> None:
        self.id = id
        self._files: tuple[FileEntry, ...] = tuple((files or {}).values())
        given = content or {}
        values = [_shared(given.get(key, _ABSENT)) for key in CONTENT_KEYS[1:]]
        self._content = (_packed_sha256(given.get("sha256", _ABSENT)), *values)
        self.api_label = api_label

    @classmethod
    def from_parts(
        cls,
        id: str,
        files: tuple[FileEntry, ...],
        content: tuple[Any, ...],
        api_label: ApiLabel | None = None,
    ) -> PointEntry:
        """A point from its files and every one of its content values, in ``CONTENT_KEYS``
        order (what ``indexer.catalog_cache`` saved)."""
        if len(content) != len(CONTENT_KEYS):
            raise ValueError(f"{len(content)} content values, not {len(CONTENT_KEYS)}")
        point = cls.__new__(cls)
        point.id = id
        point._files = files
        point._content = (_packed_sha256(content[0]), *content[1:])
        point.api_label = api_label
        return point

    @property
    def files(self) -> dict[str, FileEntry]:
        """Path -> entry (a new dict: change the point with ``put_file``, ``drop_file``)."""
        return {entry.path: entry for entry in self._files}

    @property
    def content(self) -> dict[str, Any]:
        """The content keys the point has."""
        sha256, *rest = self._content
        values = (sha256.hex() if type(sha256) is bytes else sha256, *rest)
        return {k: v for k, v in zip(CONTENT_KEYS, values, strict=True) if v is not _ABSENT}

    def file_entries(self) -> tuple[FileEntry, ...]:
        """The files, in the order they were added."""
        return self._files

    def file(self, path: str) -> FileEntry:
        """The entry of ``path`` (``KeyError`` if the point does not list it)."""
        for entry in self._files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def has_file(self, path: str) -> bool:
        """Whether the point lists ``path``."""
        return any(entry.path == path for entry in self._files)

    def put_file(self, entry: FileEntry) -> None:
        """Add ``entry``, or replace the entry of its path."""
        kept = tuple(f for f in self._files if f.path != entry.path)
        self._files = (*kept, entry)

    def drop_file(self, path: str) -> None:
        """Forget ``path`` (nothing if the point does not list it)."""
        self._files = tuple(f for f in self._files if f.path != path)


def content_of(prepared: FileFacts, model_id: str, indexed_at: str) -> dict[str, Any]:
    """What a point's payload records about its content (``CONTENT_KEYS``)."""
    return {
        "sha256": prepared.sha256,
        "size": prepared.size,
        "width": prepared.width,
        "height": prepared.height,
        "format": prepared.format,
        "model_id": model_id,
        "indexed_at": indexed_at,
    }


def _packed_sha256(value: Any) -> Any:
    """A sha256 in lowercase hex as its 32 bytes (half the memory); anything else as it is
    (a payload can hold what it likes). ``PointEntry.content`` gives the hex back."""
    if type(value) is str and len(value) == 64 and value == value.lower():
        try:
            packed = bytes.fromhex(value)
        except ValueError:
            return value
        return packed if len(packed) == 32 else value  # fromhex skips whitespace
    return value


def _shared(value: Any) -> Any:
    """Strings repeated across points (roots, labels, the model, a run's time) stored once."""
    return sys.intern(value) if type(value) is str and len(value) <= 256 else value


def build_payload(point: PointEntry) -> dict[str, Any]:
    """The payload stored for a point: its primary file first, every file listed; its label
    the one set over HTTP if there is one (marked so), else its files' label."""
    files = sorted(point.file_entries(), key=lambda f: f.path)
    primary = files[0]
    label = next((f.label for f in files if f.label), None)
    source = {}
    if point.api_label is not None:
        label = point.api_label.label
        source = {LABEL_SOURCE_KEY: API_LABEL_SOURCE}
    return {
        "path": primary.path,
        "paths": [f.path for f in files],
        "root": primary.root,
        "roots": sorted({f.root for f in files}),
        "relative_path": primary.relative_path,
        "label": label,
        **source,
        "files": [dataclasses.asdict(f) for f in files],
        **point.content,
    }


def api_label_of(payload: Mapping[str, Any]) -> ApiLabel | None:
    """The label set over HTTP recorded in a payload, if it has one."""
    if payload.get(LABEL_SOURCE_KEY) != API_LABEL_SOURCE:
        return None
    label = payload.get("label")
    return ApiLabel(_shared(label) if isinstance(label, str) and label else None)


def _file_from_payload(raw: Mapping[str, Any]) -> FileEntry | None:
    try:
        label = raw.get("label")
        return FileEntry(
            path=str(raw["path"]),
            root=_shared(str(raw["root"])),
            relative_path=str(raw["relative_path"]),
            size=int(raw["size"]),
            mtime_ns=int(raw["mtime_ns"]),
            label=_shared(label),
        )
    except (KeyError, TypeError, ValueError):
        return None


class Catalog:
    """The collection's points and a path index over them. Only the main thread uses it.

    The path index maps a path to its one point's id; the rare path that several points list
    (after an interrupted run) has its set of ids in ``_shared_paths`` instead.
    """

    def __init__(self, points: Iterable[PointEntry] = ()) -> None:
        self.points: dict[str, PointEntry] = {}
        self._owner: dict[str, str] = {}
        self._shared_paths: dict[str, set[str]] = {}
        for point in points:
            self.points[point.id] = point
            for entry in point.file_entries():
                self._add_owner(entry.path, point.id)

    @classmethod
    def load(cls, store: VectorStore, collection: str) -> Catalog:
        """Read every point's payload (no vectors)."""
        entries = []
        for stored in store.scroll(collection, batch_size=4096):
            files = {}
            for raw in stored.payload.get("files") or ():
                entry = _file_from_payload(raw) if isinstance(raw, Mapping) else None
                if entry is not None:
                    files[entry.path] = entry
            content = {k: stored.payload[k] for k in CONTENT_KEYS if k in stored.payload}
            api_label = api_label_of(stored.payload)
            entries.append(PointEntry(stored.id, files, content, api_label))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.points)

    def paths(self) -> list[str]:
        """Every recorded file path."""
        return [*self._owner, *self._shared_paths]

    def owners(self, path: str) -> set[str]:
        """Ids of the points listing ``path`` (more than one only after an interrupted run)."""
        owner = self._owner.get(path)
        if owner is not None:
            return {owner}
        return set(self._shared_paths.get(path, ()))

    def unchanged(self, path: str, size: int, mtime_ns: int) -> FileEntry | None:
        """The recorded entry if ``path`` is recorded once with this size and mtime."""
        owner = self._owner.get(path)
        if owner is None:
            return None
        entry = self.points[owner].file(path)
        if entry.size == size and entry.mtime_ns == mtime_ns:
            return entry
        return None

    def add_file(self, point_id: str, entry: FileEntry, content: Mapping[str, Any]) -> bool:
        """Record ``entry`` under ``point_id``, creating the point. True if the point is new."""
        point = self.points.get(point_id)
        created = point is None
        if point is None:
            point = PointEntry(id=point_id, content=content)
            self.points[point_id] = point
        point.put_file(entry)
        self._add_owner(entry.path, point_id)
        return created

    def set_label(self, point_id: str, path: str, label: str | None) -> None:
        """Change the label of one file of a point."""
        point = self.points[point_id]
        point.put_file(dataclasses.replace(point.file(path), label=_shared(label)))

    def remove_path(self, path: str, *, keep: str | None = None) -> tuple[list[str], list[str]]:
        """Drop ``path`` from every point except ``keep``.

        Returns (ids of points that still have files and need a payload update, ids of points
        left without files, to delete).
        """
        updated, emptied = [], []
        for point_id in sorted(self.owners(path)):
            if point_id == keep:
                continue
            point = self.points[point_id]
            point.drop_file(path)
            self._remove_owner(path, point_id)
            if point.file_entries():
                updated.append(point_id)
            else:
                del self.points[point_id]
                emptied.append(point_id)
        return updated, emptied

    def _add_owner(self, path: str, point_id: str) -> None:
        shared = self._shared_paths.get(path)
        if shared is not None:
            shared.add(point_id)
            return
        owner = self._owner.get(path)
        if owner is None or owner == point_id:
            self._owner[path] = point_id
            return
        del self._owner[path]
        self._shared_paths[path] = {owner, point_id}

    def _remove_owner(self, path: str, point_id: str) -> None:
        if self._owner.get(path) == point_id:
            del self._owner[path]
            return
        shared = self._shared_paths.get(path)
        if shared is None:
            return
        shared.discard(point_id)
        if len(shared) == 1:  # back to one owner
            self._owner[path] = shared.pop()
        if not shared:
            del self._shared_paths[path]


@dataclass(frozen=True)
class LabelSource:
    """Where labels come from: parent folder names, and/or a CSV of path -> label."""

    from_folders: bool = False
    mapping: Mapping[str, str] = field(default_factory=dict)

    @property
    def gives_labels(self) -> bool:
        """Whether this source labels anything (folders, or a CSV)."""
        return self.from_folders or bool(self.mapping)

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
