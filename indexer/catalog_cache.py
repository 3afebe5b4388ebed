"""A saved copy of the catalog, so that a run over an unchanged collection need not read every
point's payload from the store (the slowest part of a rerun over a large folder).

The store stays the only state. A copy names the store's state token
(``VectorStore.state_token``) it was made at, and is used only while the collection still has
that token: any write to the collection, by any command, gives it a new one first. A copy that
is missing, of another token, damaged or of another format is ignored, and the run reads the
store as it always did. Only stores that can tell (the embedded one) have tokens.

The file is a NumPy ``.npz``: numeric columns, strings that cannot hold a NUL (ids, hashes,
paths) as one NUL-separated UTF-8 block each, every other string (roots, labels, formats,
model ids, times) through a JSON table, and the rare point that does not fit these columns (a
payload written by hand, say) as JSON. A label set over HTTP (``ApiLabel``) is saved with its
point: an index run keeps it.

A copy is read as anything else from disk: as hostile. Its members must be exactly the
columns, stored uncompressed (as ``np.savez`` writes them) with the dtype, rank and size each
column has, so that reading never takes more memory than the file's own size; the metadata
is read first and the columns only when its token is the collection's; every value must have
the type the writer gives it. Anything else is no copy.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from dinoseek.collection_admin import catalog_file
from indexer.catalog import CONTENT_KEYS, ApiLabel, Catalog, FileEntry, PointEntry

log = logging.getLogger(__name__)

FORMAT = "dinoseek-catalog"
VERSION = 2
# A point's label set over HTTP, in the ``api_labels`` column: none, removed, or a string.
NO_API_LABEL = -2
API_LABEL_REMOVED = -1
_INT64 = (-(2**63), 2**63 - 1)
# Each member of a copy: its dtype and rank.
_TEXT = (np.dtype(np.uint8), 1)
COLUMNS: dict[str, tuple[np.dtype[Any], int]] = {
    "meta": _TEXT,
    "ids": _TEXT,
    "sha256": _TEXT,
    "point_numbers": (np.dtype(np.int64), 2),
    "point_strings": (np.dtype(np.int32), 2),
    "point_files": (np.dtype(np.int32), 1),
    "api_labels": (np.dtype(np.int32), 1),
    "paths": _TEXT,
    "relative": _TEXT,
    "file_numbers": (np.dtype(np.int64), 2),
    "file_strings": (np.dtype(np.int32), 2),
}


def catalog_cache_path(data_dir: Path, collection: str) -> Path:
    """Where the copy of ``collection``'s catalog lives (``dinoseek.collection_admin``, which
    deletes and renames it with the collection)."""
    return catalog_file(data_dir, collection)


def load_catalog(path: Path, token: str | None) -> Catalog | None:
    """The saved catalog if it was made at ``token``; None otherwise (and for a damaged one,
    which is logged)."""
    if token is None or not path.is_file():
        return None
    try:
        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            saved = _SavedColumns(archive, os.fstat(handle.fileno()).st_size)
            meta = _read_meta(bytes(saved["meta"]))
            if meta is None or meta.token != token:
                return None
            return Catalog(_points(saved, meta))
    except (OSError, ValueError, TypeError, IndexError, RecursionError, zipfile.BadZipFile) as exc:
        log.warning("ignoring the saved catalog %s (%s); reading the collection", path, exc)
        return None


def save_catalog(path: Path, token: str, catalog: Catalog) -> None:
    """Write ``catalog`` as the state of ``token`` (atomically: a reader sees the old copy or
    the new one)."""
    columns = _Columns()
    for point in catalog.points.values():
        columns.add(point)
    arrays = columns.arrays()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "token": token,
        "strings": columns.strings,
        "irregular": columns.irregular,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class _SavedColumns:
    """The columns of a copy, each read when asked for (``ValueError`` for anything that is
    not a column as ``save_catalog`` writes it)."""

    def __init__(self, archive: zipfile.ZipFile, file_size: int) -> None:
        self.archive = archive
        self.members = {info.filename: info for info in archive.infolist()}
        if sorted(self.members) != sorted(f"{name}.npy" for name in COLUMNS):
            raise ValueError("its members are not the columns of a catalog")
        for info in self.members.values():
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise ValueError(f"its member {info.filename} is compressed")
        if sum(info.file_size for info in self.members.values()) > file_size:
            raise ValueError("its members are larger than the file")

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, rank = COLUMNS[name]
        info = self.members[f"{name}.npy"]
        with self.archive.open(info) as member:
            shape, found = _npy_header(member)
            size = math.prod(shape) * dtype.itemsize
            if found != dtype or len(shape) != rank or size != info.file_size - member.tell():
                raise ValueError(f"its column {name} is not {rank}-d {dtype} of its own size")
            data = member.read(size)
        if len(data) != size:
            raise ValueError(f"its column {name} is cut short")
        return np.frombuffer(data, dtype=dtype).reshape(shape)


def _npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype of a C-ordered ``.npy`` member."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"a column in .npy format {version}")
    if fortran or dtype.hasobject:
        raise ValueError("a column that is not a plain C-ordered array")
    return tuple(shape), dtype


@dataclass(frozen=True)
class _Meta:
    """The JSON part of a copy, its types checked."""

    token: str
    strings: list[str]
    irregular: list[tuple[str, list[FileEntry], dict[str, Any], ApiLabel | None]]


def _read_meta(data: bytes) -> _Meta | None:
    """The metadata; None for a copy of another format or version (``ValueError`` when it
    is damaged: not a JSON object, or values of other types than the writer's)."""
    meta = json.loads(data.decode("utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"its metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return None
    token, strings, irregular = meta.get("token"), meta.get("strings"), meta.get("irregular")
    if type(token) is not str:
        raise ValueError("its token is not a string")
    if type(strings) is not list or not all(type(text) is str for text in strings):
        raise ValueError("its string table is not a list of strings")
    if type(irregular) is not list:
        raise ValueError("its irregular points are not a list")
    return _Meta(token, strings, [_irregular_point(item) for item in irregular])


def _irregular_point(
    item: Any,
) -> tuple[str, list[FileEntry], dict[str, Any], ApiLabel | None]:
    if type(item) is not list or len(item) != 4:
        raise ValueError("an irregular point that is not [id, files, content, api label]")
    point_id, rows, content, api = item
    if type(point_id) is not str or type(rows) is not list or type(content) is not dict:
        raise ValueError("an irregular point of other types than [text, list, object, ...]")
    if not set(content) <= set(CONTENT_KEYS):
        raise ValueError("an irregular point with content keys of no catalog")
    if api is not None and not (type(api) is list and len(api) == 1):
        raise ValueError("an irregular point's label set over HTTP is not null or [label]")
    if api is not None and not (api[0] is None or type(api[0]) is str):
        raise ValueError("an irregular point's label set over HTTP is not text")
    api_label = None if api is None else ApiLabel(api[0])
    return point_id, [_file_entry(row) for row in rows], content, api_label


def _file_entry(row: Any) -> FileEntry:
    if type(row) is not list or len(row) != 6:
        raise ValueError("a file row that is not a list of six values")
    path, root, relative, size, mtime_ns, label = row  # a label: any JSON, as in a payload
    texts, numbers = (path, root, relative), (size, mtime_ns)
    if not all(type(text) is str for text in texts) or not all(type(n) is int for n in numbers):
        raise ValueError("a file row of other types than the writer's")
    return FileEntry(path, root, relative, size, mtime_ns, label)


class _Columns:
    """The catalog as columns, built point by point."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._string_index: dict[str, int] = {}
        self.irregular: list[Any] = []
        self.ids: list[str] = []
        self.sha256: list[str] = []
        self.point_numbers: list[tuple[int, int, int]] = []
        self.point_strings: list[tuple[int, int, int]] = []
        self.point_files: list[int] = []
        self.api_labels: list[int] = []
        self.paths: list[str] = []
        self.relative: list[str] = []
        self.file_numbers: list[tuple[int, int]] = []
        self.file_strings: list[tuple[int, int]] = []

    def add(self, point: PointEntry) -> None:
        files = sorted(point.file_entries(), key=lambda f: f.path)
        content = point.content
        api = point.api_label
        if not _regular(point.id, files, content):
            saved_api = None if api is None else [api.label]
            self.irregular.append([point.id, [_file_row(f) for f in files], content, saved_api])
            return
        self.ids.append(point.id)
        self.sha256.append(content["sha256"])
        self.point_numbers.append((content["size"], content["width"], content["height"]))
        self.point_strings.append(
            (self._string(content["format"]), self._string(content["model_id"]),
             self._string(content["indexed_at"]))
        )  # fmt: skip
        self.point_files.append(len(files))
        self.api_labels.append(
            NO_API_LABEL
            if api is None
            else API_LABEL_REMOVED
            if api.label is None
            else self._string(api.label)
        )
        for entry in files:
            self.paths.append(entry.path)
            self.relative.append(entry.relative_path)
            self.file_numbers.append((entry.size, entry.mtime_ns))
            label = -1 if entry.label is None else self._string(entry.label)
            self.file_strings.append((self._string(entry.root), label))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "ids": _block(self.ids),
            "sha256": _block(self.sha256),
            "point_numbers": np.array(self.point_numbers, dtype=np.int64).reshape(-1, 3),
            "point_strings": np.array(self.point_strings, dtype=np.int32).reshape(-1, 3),
            "point_files": np.array(self.point_files, dtype=np.int32),
            "api_labels": np.array(self.api_labels, dtype=np.int32),
            "paths": _block(self.paths),
            "relative": _block(self.relative),
            "file_numbers": np.array(self.file_numbers, dtype=np.int64).reshape(-1, 2),
            "file_strings": np.array(self.file_strings, dtype=np.int32).reshape(-1, 2),
        }

    def _string(self, text: str) -> int:
        index = self._string_index.get(text)
        if index is None:
            index = self._string_index[text] = len(self.strings)
            self.strings.append(text)
        return index


def _regular(point_id: str, files: list[FileEntry], content: dict[str, Any]) -> bool:
    """Whether the point fits the columns (every point this indexer writes does)."""
    if set(content) != set(CONTENT_KEYS) or not files:
        return False
    texts = (content["sha256"], content["format"], content["model_id"], content["indexed_at"])
    numbers = (content["size"], content["width"], content["height"])
    if not all(type(t) is str for t in texts) or not all(type(n) is int for n in numbers):
        return False
    if not all(_INT64[0] <= n <= _INT64[1] for n in numbers):
        return False
    if not all(f.label is None or type(f.label) is str for f in files):
        return False
    blocked = (point_id, content["sha256"], *(f.path for f in files))
    blocked += tuple(f.relative_path for f in files)
    if any("\0" in text for text in blocked):
        return False
    return all(
        _INT64[0] <= f.size <= _INT64[1] and _INT64[0] <= f.mtime_ns <= _INT64[1] for f in files
    )


def _file_row(entry: FileEntry) -> list[Any]:
    return [entry.path, entry.root, entry.relative_path, entry.size, entry.mtime_ns, entry.label]


def _block(texts: list[str]) -> np.ndarray:
    return np.frombuffer("\0".join(texts).encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _unblock(block: np.ndarray, count: int) -> list[str]:
    if count == 0:
        return []
    texts = bytes(block).decode("utf-8", "surrogatepass").split("\0")
    if len(texts) != count:
        raise ValueError(f"a block of {len(texts)} strings where {count} were expected")
    return texts


def _check_indices(indices: np.ndarray, size: int, *, allow_none: bool) -> None:
    """Every index within the string table (-1, no string, where ``allow_none``)."""
    if indices.size and (indices.min() < (-1 if allow_none else 0) or indices.max() >= size):
        raise ValueError("a string index outside the table")


def _points(saved: _SavedColumns, meta: _Meta) -> Iterable[PointEntry]:
    strings = meta.strings
    point_files = saved["point_files"].tolist()
    count = len(point_files)
    ids = _unblock(saved["ids"], count)
    sha256 = _unblock(saved["sha256"], count)
    total = sum(point_files)
    paths = _unblock(saved["paths"], total)
    relative = _unblock(saved["relative"], total)
    # Column by column: a list per row would leave a million small lists to free.
    point_numbers, point_strings = saved["point_numbers"], saved["point_strings"]
    api_codes = saved["api_labels"]
    file_numbers, file_strings = saved["file_numbers"], saved["file_strings"]
    if not len(point_numbers) == len(point_strings) == len(api_codes) == count:
        raise ValueError("point columns of different lengths")
    if not len(file_numbers) == len(file_strings) == total:
        raise ValueError("file columns of different lengths")
    _check_indices(point_strings, len(strings), allow_none=False)
    _check_indices(file_strings[:, :1], len(strings), allow_none=False)
    _check_indices(file_strings[:, 1:], len(strings), allow_none=True)
    if api_codes.size and (api_codes.min() < NO_API_LABEL or api_codes.max() >= len(strings)):
        raise ValueError("a label set over HTTP outside the string table")
    if count and min(point_files) < 1:
        raise ValueError("a point without files")
    table = [*strings, None]  # index -1: no label
    roots = [table[i] for i in file_strings[:, 0].tolist()]
    labels = [table[i] for i in file_strings[:, 1].tolist()]
    files = list(
        map(FileEntry, paths, roots, relative, file_numbers[:, 0].tolist(),
            file_numbers[:, 1].tolist(), labels)
    )  # fmt: skip
    del paths, roots, relative, labels
    sizes = point_numbers[:, 0].tolist()
    widths = point_numbers[:, 1].tolist()
    heights = point_numbers[:, 2].tolist()
    formats = [table[i] for i in point_strings[:, 0].tolist()]
    models = [table[i] for i in point_strings[:, 1].tolist()]
    times = [table[i] for i in point_strings[:, 2].tolist()]
    api_labels = [None if i == NO_API_LABEL else ApiLabel(table[i]) for i in api_codes.tolist()]
    points = []
    start = 0
    for index, point_id in enumerate(ids):
        first = files[start]
        size = first.size if sizes[index] == first.size else sizes[index]  # one int, not two
        content = (sha256[index], size, widths[index], heights[index], formats[index],
                   models[index], times[index])  # fmt: skip
        stop = start + point_files[index]
        part = tuple(files[start:stop])
        points.append(PointEntry.from_parts(point_id, part, content, api_labels[index]))
        start = stop
    for point_id, rows, facts, api_label in meta.irregular:
        points.append(PointEntry(point_id, {row.path: row for row in rows}, facts, api_label))
    return points
