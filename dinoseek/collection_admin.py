"""Deleting and renaming a collection with everything that goes with it: what
``dinoseek collection delete/rename`` and ``DELETE /collections/{name}``, ``POST
/collections/{name}/rename`` do.

What goes with a collection: its points and probes, which the store deletes or renames
(``VectorStore.delete_collection``, ``rename_collection``); two files of the data directory
that follow here, its saved catalog (``DATA_DIR/catalogs/NAME.npz``, which spares a rerun of
``index`` from reading the store) and its failures report
(``DATA_DIR/reports/NAME.failures.jsonl``); and, on deletion, the images added to it over HTTP
that no other collection lists (``dinoseek.uploads``). A rename moves no image: the upload
pool is shared by the collections, whatever their names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dinoseek.settings import validate_collection_name
from dinoseek.store import CollectionRename, VectorStore
from dinoseek.uploads import PointLookup, UploadPool, pool_files, remove_unused, upload_points

CATALOGS_DIR = "catalogs"
REPORTS_DIR = "reports"


def catalog_file(data_dir: Path, collection: str) -> Path:
    """Where the copy of ``collection``'s catalog lives."""
    return data_dir / CATALOGS_DIR / f"{collection}.npz"


def failures_file(data_dir: Path, collection: str) -> Path:
    """Where ``dinoseek index`` keeps ``collection``'s failures report unless told otherwise."""
    return data_dir / REPORTS_DIR / f"{collection}.failures.jsonl"


def collection_files(data_dir: Path, collection: str) -> tuple[Path, Path]:
    """The collection's files in the data directory: the saved catalog, the failures report."""
    return catalog_file(data_dir, collection), failures_file(data_dir, collection)


@dataclass(frozen=True)
class CollectionDeleted:
    """What ``delete_collection`` removed besides the collection: its files, and the added
    images no other collection lists."""

    name: str
    files_removed: list[str]
    uploads_removed: list[str]


def delete_collection(
    store: VectorStore, data_dir: Path, name: str, lookup: PointLookup
) -> CollectionDeleted:
    """Delete the collection ``name`` (``CollectionNotFoundError``; ``StoreLockedError``
    while another process holds it), its files and its added images that no other collection
    lists (``lookup`` reads the others: see ``dinoseek.uploads.remove_unused``)."""
    validate_collection_name(name)
    pool = UploadPool.of(data_dir)
    store.acquire(name)  # refused while another process holds it; delete_collection gives it up
    added = [
        (path, str(point.payload["sha256"]))
        for point in upload_points(store, name, pool)
        for path in pool_files(pool, point)[0]
    ]
    store.delete_collection(name)
    removed = [str(path) for path in collection_files(data_dir, name) if _remove(path)]
    others = [c for c in store.list_collections() if c != name]
    return CollectionDeleted(name, removed, remove_unused(pool, added, others, lookup))


def rename_collection(
    store: VectorStore, data_dir: Path, name: str, new_name: str
) -> tuple[CollectionRename, list[tuple[Path, Path]]]:
    """Rename the collection ``name`` to ``new_name`` (``CollectionNotFoundError``,
    ``CollectionExistsError``, ``StoreLockedError``; a name that is not a collection name:
    ``ValueError``), and its files: (what the store did, the files moved)."""
    validate_collection_name(name)
    validate_collection_name(new_name)
    done = store.rename_collection(name, new_name)
    return done, _move_files(data_dir, name, new_name)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _move_files(data_dir: Path, name: str, new_name: str) -> list[tuple[Path, Path]]:
    """Give the collection's files their new names (a stale file under the new name, left by
    a collection of that name deleted before, is replaced or removed)."""
    moved = []
    for old, new in zip(
        collection_files(data_dir, name), collection_files(data_dir, new_name), strict=True
    ):
        if old.exists():
            os.replace(old, new)
            moved.append((old, new))
        else:
            _remove(new)
    return moved
