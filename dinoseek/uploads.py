"""Images added over HTTP (``POST /points``): their files and their points' payloads.

An added image is kept in the data directory's upload pool, ``DATA_DIR/.uploads``, under its
content hash: ``.uploads/ab/ab12...ef.jpg`` (the first two hex digits, then the sha256 and
the extension of its format). The pool is shared by the store's collections: the same
content added to two collections is one file. A file is written whole under a temporary name
in the same folder and renamed into place, so no partial file is ever visible under a pool
name, and a failed write leaves nothing behind. (Collection names cannot begin with a dot, so
``.uploads`` is never a collection's directory.)

The point's payload has the keys of an indexed point (``indexer.catalog.build_payload``), its
one file being the pool file with the pool as its root: an index run reads it back as it is
(it scans and prunes only the folders it is given), search filters and the served-file check
(``search_api.served_files``) treat it as any other point.

A pool file is removed only when no point of any collection lists it any more
(``remove_unused``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dinoseek.errors import (
    DinoseekError,
    FileReadError,
    PointInFolderError,
    UploadNotWrittenError,
)
from dinoseek.file_read import ReadLimits, copy_file
from dinoseek.images import EXTENSIONS_BY_FORMAT
from dinoseek.labelling import API_SOURCE, LABEL_FIELD, LABEL_SOURCE_FIELD, check_label
from dinoseek.store import StoredPoint, VectorStore, point_id_for_sha256
from dinoseek.store.files import fsync_directory

log = logging.getLogger(__name__)

UPLOADS_DIR = ".uploads"
TEMPORARY_PREFIX = ".partial-"
# Finds the points of a collection (its name, ids): the caller's way of reading one, since a
# process must hold a collection to read it and only the caller knows what it holds.
PointLookup = Callable[[str, Sequence[str]], list[StoredPoint]]


def content_sha256(data: bytes) -> str:
    """The sha256 of ``data`` in lowercase hex (what a point's id is made from)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class UploadPool:
    """The pool of added images in a data directory (see the module doc)."""

    root: Path  # absolute

    @classmethod
    def of(cls, data_dir: Path) -> UploadPool:
        """The pool of ``data_dir``."""
        return cls(Path(os.path.abspath(data_dir)) / UPLOADS_DIR)

    def path_for(self, sha256: str, image_format: str) -> Path:
        """Where content of this hash and format is kept."""
        extensions = EXTENSIONS_BY_FORMAT.get(image_format, ())
        suffix = extensions[0] if extensions else ""
        return self.root / sha256[:2] / f"{sha256}{suffix}"

    def owns(self, path: str, sha256: str) -> bool:
        """Whether ``path`` (as a payload records it) is the pool file of content ``sha256``:
        a file the pool may remove. Nothing outside the pool ever is."""
        candidate = Path(path)
        return (
            candidate.parent == self.root / sha256[:2]
            and candidate.stem == sha256
            and candidate.suffix in {"", *_ALL_EXTENSIONS}
        )

    def write(self, data: bytes, sha256: str, image_format: str) -> tuple[Path, bool]:
        """Keep ``data`` (whose hash is ``sha256``) in the pool: (its path, whether this call
        wrote it; False when a file of that content was there already)."""
        target = self.path_for(sha256, image_format)
        if _has_content(target, sha256, len(data)):
            return target, False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=target.parent)
        except OSError as exc:
            raise _not_written(target, exc) from None
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            fsync_directory(target.parent)
        except BaseException as exc:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _not_written(target, exc) from None
            raise
        return target, True

    def remove(self, path: str, sha256: str) -> bool:
        """Remove the pool file ``path`` of content ``sha256`` (nothing outside the pool);
        whether a file was removed."""
        if not self.owns(path, sha256):
            return False
        try:
            Path(path).unlink()
        except FileNotFoundError:
            return False
        return True


_ALL_EXTENSIONS = frozenset(e for extensions in EXTENSIONS_BY_FORMAT.values() for e in extensions)


def _not_written(target: Path, exc: OSError) -> UploadNotWrittenError:
    reason = exc.strerror or str(exc)
    return UploadNotWrittenError(f"the image could not be kept at {target}: {reason}")


class _Discard:
    def write(self, data: bytes, /) -> int:
        return len(data)


def _has_content(path: Path, sha256: str, size: int) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes hashing to ``sha256`` (anything
    else there, left by hand, is replaced); read without blocking and without following a
    link."""
    try:
        facts = copy_file(str(path), _Discard(), ReadLimits(max_bytes=size))
    except FileReadError:
        return False
    return facts.sha256 == sha256 and facts.size == size


@dataclass(frozen=True)
class AddedImage:
    """What a point made from an added image records about it."""

    sha256: str
    size: int
    width: int
    height: int
    format: str
    model_id: str
    label: str | None = None

    @property
    def point_id(self) -> str:
        """The point's id: the id ``dinoseek index`` gives the same content."""
        return point_id_for_sha256(self.sha256)


def upload_payload(pool: UploadPool, image: AddedImage, path: Path) -> dict[str, Any]:
    """The payload of the point of ``image`` kept at ``path`` in ``pool``: the keys of an
    indexed point's (``indexer.catalog.build_payload``), with its label marked as set over
    HTTP when it has one."""
    label = check_label(image.label)
    text = str(path)
    root = str(pool.root)
    relative = os.path.relpath(text, root)
    source = {LABEL_SOURCE_FIELD: API_SOURCE} if label is not None else {}
    file_entry = {
        "path": text,
        "root": root,
        "relative_path": relative,
        "size": image.size,
        "mtime_ns": os.stat(text).st_mtime_ns,
        "label": None,
    }
    return {
        "path": text,
        "paths": [text],
        "root": root,
        "roots": [root],
        "relative_path": relative,
        LABEL_FIELD: label,
        **source,
        "files": [file_entry],
        "sha256": image.sha256,
        "size": image.size,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "model_id": image.model_id,
        "indexed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def recorded_files(payload: Mapping[str, Any]) -> list[str]:
    """The file paths a point's payload lists."""
    entries = payload.get("files")
    if not isinstance(entries, list):
        return []
    paths = [str(entry.get("path", "")) for entry in entries if isinstance(entry, Mapping)]
    return [path for path in paths if path]


def pool_files(pool: UploadPool, point: StoredPoint) -> tuple[list[str], list[str]]:
    """(the point's files in the pool, its other files: those of indexed folders)."""
    sha256 = point.payload.get("sha256")
    ours, others = [], []
    for path in recorded_files(point.payload):
        if isinstance(sha256, str) and pool.owns(path, sha256):
            ours.append(path)
        else:
            others.append(path)
    return ours, others


def check_deletable(pool: UploadPool, point: StoredPoint, collection: str) -> list[str]:
    """The pool files of a point that may be deleted over HTTP; ``PointInFolderError`` when
    it is (also) the image of a file in an indexed folder, which the API never deletes."""
    ours, others = pool_files(pool, point)
    if others:
        roots = point.payload.get("roots")
        folders = (
            [r for r in roots if isinstance(r, str) and r != str(pool.root)]
            if isinstance(roots, list)
            else []
        )
        where = f" (indexed from {', '.join(folders)})" if folders else ""
        raise PointInFolderError(
            f"point {point.id} of collection {collection!r} is the image of {others[0]}{where}; "
            "only images added with POST /points are deleted over HTTP: delete or move the "
            "file, then run `dinoseek index` on its folder again"
        )
    return ours


def remove_unused(
    pool: UploadPool,
    files: Iterable[tuple[str, str]],
    collections: Sequence[str],
    lookup: PointLookup,
) -> list[str]:
    """Remove the pool files of ``files`` ((path, sha256) of points deleted) that no point
    of ``collections`` lists any more; the paths removed. A collection that cannot be read
    (held by another process, say) counts as listing them: a file is kept rather than lost."""
    wanted = {path: sha256 for path, sha256 in files if pool.owns(path, sha256)}
    if not wanted:
        return []
    in_use: set[str] = set()
    ids = sorted({point_id_for_sha256(sha256) for sha256 in wanted.values()})
    for collection in collections:
        try:
            found = lookup(collection, ids)
        except DinoseekError as exc:
            log.warning("uploads kept: collection %r cannot be read (%s)", collection, exc)
            return []
        for point in found:
            in_use.update(recorded_files(point.payload))
    return [
        path for path, sha256 in wanted.items() if path not in in_use and pool.remove(path, sha256)
    ]


def lookup_releasing(store: VectorStore) -> PointLookup:
    """A lookup for a process that holds no collection (a command): each collection is
    taken for the read and given back."""

    def lookup(collection: str, ids: Sequence[str]) -> list[StoredPoint]:
        store.acquire(collection)
        try:
            return store.get(collection, ids)
        finally:
            store.release(collection)

    return lookup


def upload_points(store: VectorStore, collection: str, pool: UploadPool) -> list[StoredPoint]:
    """The points of an acquired collection that list a file in the pool."""
    return [
        point
        for point in store.scroll(collection, filters={"roots": str(pool.root)})
        if pool_files(pool, point)[0]
    ]
