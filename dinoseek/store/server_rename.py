"""Renaming a collection on a Qdrant server, which cannot rename one: a copy, then a delete.

A Qdrant alias would give the collection a second name, but the old one would stay the
collection's real name, listed, snapshotted and deleted as such; so dinoseek copies instead:

1. the new collection is created with the old one's vector and index configuration and a
   marker (``RENAME_KEY``) instead of dinoseek's metadata, so it is not yet listed as a
   collection;
2. every point (vector, region vectors and payload, as stored: nothing is re-embedded) and
   every probe is copied to it;
3. dinoseek's metadata (the embedding space, the layout of its region vectors) is set on it:
   from here it is the collection;
4. the old collection and its probes are deleted.

A rename that stops before step 3 leaves an unlisted collection with the marker; the next
rename to that name drops it and starts again. One that stops between 3 and 4 leaves both
collections, whole. Writes to the old collection while it is copied may be lost: stop the
writers (``dinoseek index``, ``dedup``) first.
"""

from __future__ import annotations

import dataclasses

from dinoseek.errors import CollectionExistsError
from dinoseek.store.records import CollectionRename, PointRecord
from dinoseek.store.server_collections import ServerCollections
from dinoseek.store.server_requests import METADATA_KEY

RENAME_KEY = "dinoseek-rename-from"
COPY_BATCH = 256


def copy_server_collection(store: ServerCollections, name: str, new_name: str) -> CollectionRename:
    """Copy ``name`` to ``new_name``, then delete ``name`` (see the module doc)."""
    space = store.collection_space(name)  # CollectionNotFoundError, or not dinoseek's
    if store.exists(new_name):
        if not _left_by_a_rename_of(store, new_name, name):
            raise CollectionExistsError(
                f"collection {new_name!r} already exists on the {store.describe()}; choose "
                f"another name, or delete it first (`dinoseek collection delete {new_name}`)"
            )
        store.delete_collection(new_name)  # an interrupted rename of the same collection
    regions = store.collection_regions(name)
    store.create_collection_like(new_name, name, metadata={RENAME_KEY: name})
    points = _copy_points(store, name, new_name, with_regions=regions is not None)
    probes = store.probes.list(name)
    for probe in probes:
        store.probes.save(new_name, probe.name, store.probes.load(name, probe.name), probe.info)
    store.set_space(new_name, space, clear=RENAME_KEY, regions=regions)
    store.delete_collection(name)
    return CollectionRename(name, new_name, points, len(probes), "copied")


def _left_by_a_rename_of(store: ServerCollections, new_name: str, name: str) -> bool:
    """Whether ``new_name`` is the unfinished copy of ``name`` (step 3 never reached)."""
    metadata = store.collection_metadata(new_name)
    return metadata.get(RENAME_KEY) == name and metadata.get(METADATA_KEY) is None


def _copy_points(store: ServerCollections, name: str, new_name: str, *, with_regions: bool) -> int:
    store.acquire(name)
    store.acquire(new_name)
    copied = 0
    batch: list[PointRecord] = []
    for point in store.scroll(name, with_vectors=True, batch_size=COPY_BATCH):
        assert point.vector is not None  # asked for with_vectors
        batch.append(PointRecord(point.id, point.vector, point.payload))
        if len(batch) == COPY_BATCH:
            _write(store, name, new_name, batch, with_regions)
            copied += len(batch)
            batch = []
    _write(store, name, new_name, batch, with_regions)
    store.release(new_name)
    store.release(name)
    return copied + len(batch)


def _write(
    store: ServerCollections, name: str, new_name: str, batch: list[PointRecord], with_regions: bool
) -> None:
    """``batch`` written to ``new_name``, each point with its region vectors in ``name``
    when the collection has them (one read for the batch)."""
    if with_regions:
        regions = store.regions_of(name, [point.id for point in batch])
        batch = [dataclasses.replace(p, regions=regions.get(p.id)) for p in batch]
    store.upsert(new_name, batch, named=with_regions)
