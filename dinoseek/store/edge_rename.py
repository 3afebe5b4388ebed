"""Renaming a collection of the embedded store: its directory moved, whole.

The collection's lock is taken (or this store's own hold given up, its shard closed) and the
data directory's restore lock held, so that no process has the collection open and no
restore swaps either name meanwhile. Then ``DATA_DIR/OLD`` becomes ``DATA_DIR/NEW`` in one
``rename``: the shard, the probes and the state token go with it, and a crash leaves the
collection under one name or the other, never both or neither.
"""

from __future__ import annotations

import os
from pathlib import Path

from dinoseek.errors import CollectionExistsError, CollectionNotFoundError, StoreLockedError
from dinoseek.store.edge_collections import EdgeCollections
from dinoseek.store.edge_locks import RESTORE_LOCK_FILE, release, try_flock
from dinoseek.store.edge_probes import METADATA_FILE
from dinoseek.store.files import fsync_directory
from dinoseek.store.records import CollectionRename


def rename_edge_collection(store: EdgeCollections, name: str, new_name: str) -> CollectionRename:
    """Move ``DATA_DIR/name`` to ``DATA_DIR/new_name`` (see the module doc)."""
    source = store.collection_dir(name)
    target = store.collection_dir(new_name)
    if not (source / METADATA_FILE).exists():
        raise CollectionNotFoundError(store.not_found_message(name))
    _check_free(store, new_name, target)
    restore_lock = try_flock(store.data_dir / RESTORE_LOCK_FILE)
    if restore_lock is None:
        raise StoreLockedError(
            f"a `dinoseek snapshot restore` is running in the {store.describe()}; wait for "
            "it to finish, then try again"
        )
    try:
        info = store.collection_info(name)  # StoreLockedError while another process holds it
        probes = len(store.probes.list(name))
        was_held = store.is_held(name)
        lock_file = store.take_for_swap(name)
        try:
            _check_free(store, new_name, target)  # again, now that nobody else can create it
            os.rename(source, target)
            fsync_directory(store.data_dir)
        finally:
            release(lock_file)
    finally:
        release(restore_lock)
    if was_held:  # this process held the collection: it holds it under its new name
        store.acquire(new_name)
    return CollectionRename(name, new_name, info.points, probes, "moved")


def _check_free(store: EdgeCollections, new_name: str, target: Path) -> None:
    if (target / METADATA_FILE).exists():
        raise CollectionExistsError(
            f"collection {new_name!r} already exists in the {store.describe()}; choose another "
            f"name, or delete it first (`dinoseek collection delete {new_name}`)"
        )
    if target.exists():
        raise CollectionExistsError(f"{target} exists and is not a collection; choose another name")
