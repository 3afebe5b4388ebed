"""A saved copy of the catalog, so that a run over an unchanged collection need not read every
point's payload from the store (the slowest part of a rerun over a large folder).

The store stays the only state. A copy names the store's state token
(``VectorStore.state_token``) it was made at, and is used only while the collection still has
that token: any write to the collection, by any command, gives it a new one first. A copy that
is missing, of another token, damaged or of another format is ignored, and the run reads the
store as it always did. Only stores that can tell (the embedded one) have tokens.

The file is a NumPy ``.npz`` (read with ``allow_pickle=False``): numeric columns, strings that
cannot hold a NUL (ids, hashes, paths) as one NUL-separated UTF-8 block each, every other string
(roots, labels, formats, model ids, times) through a JSON table, and the rare point that does
not fit these columns (a payload written by hand, say) as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.catalog import CONTENT_KEYS, Catalog, FileEntry, PointEntry

log = logging.getLogger(__name__)

FORMAT = "dinoseek-catalog"
VERSION = 1
_INT64 = (-(2**63), 2**63 - 1)


def catalog_cache_path(data_dir: Path, collection: str) -> Path:
    """Where the copy of ``collection``'s catalog lives."""
    return data_dir / "catalogs" / f"{collection}.npz"


def load_catalog(path: Path, token: str | None) -> Catalog | None:
    """The saved catalog if it was made at ``token``; None otherwise (and for a damaged one,
    which is logged)."""
    if token is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(bytes(saved["meta"]).decode("utf-8"))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                return None
            if meta.get("token") != token:
                return None
            return Catalog(_points(saved, meta))
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
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
        self.paths: list[str] = []
        self.relative: list[str] = []
        self.file_numbers: list[tuple[int, int]] = []
        self.file_strings: list[tuple[int, int]] = []

    def add(self, point: PointEntry) -> None:
        files = sorted(point.file_entries(), key=lambda f: f.path)
        content = point.content
        if not _regular(point.id, files, content):
            self.irregular.append([point.id, [_file_row(f) for f in files], content])
            return
        self.ids.append(point.id)
        self.sha256.append(content["sha256"])
        self.point_numbers.append((content["size"], content["width"], content["height"]))
        self.point_strings.append(
            (self._string(content["format"]), self._string(content["model_id"]),
             self._string(content["indexed_at"]))
        )  # fmt: skip
        self.point_files.append(len(files))
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


def _points(saved: Any, meta: dict[str, Any]) -> Iterable[PointEntry]:
    strings: list[str] = meta["strings"]
    point_files = saved["point_files"].tolist()
    count = len(point_files)
    ids = _unblock(saved["ids"], count)
    sha256 = _unblock(saved["sha256"], count)
    total = sum(point_files)
    paths = _unblock(saved["paths"], total)
    relative = _unblock(saved["relative"], total)
    # Column by column: a list per row would leave a million small lists to free.
    point_numbers, point_strings = saved["point_numbers"], saved["point_strings"]
    file_numbers, file_strings = saved["file_numbers"], saved["file_strings"]
    if not len(point_numbers) == len(point_strings) == count:
        raise ValueError("point columns of different lengths")
    if not len(file_numbers) == len(file_strings) == total:
        raise ValueError("file columns of different lengths")
    _check_indices(point_strings, len(strings), allow_none=False)
    _check_indices(file_strings[:, :1], len(strings), allow_none=False)
    _check_indices(file_strings[:, 1:], len(strings), allow_none=True)
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
    points = []
    start = 0
    for index, point_id in enumerate(ids):
        first = files[start]
        size = first.size if sizes[index] == first.size else sizes[index]  # one int, not two
        content = (sha256[index], size, widths[index], heights[index], formats[index],
                   models[index], times[index])  # fmt: skip
        stop = start + point_files[index]
        points.append(PointEntry.from_parts(point_id, tuple(files[start:stop]), content))
        start = stop
    for point_id, rows, content in meta["irregular"]:
        by_path = {row[0]: FileEntry(*row) for row in rows}
        points.append(PointEntry(point_id, by_path, content))
    return points
