"""Snapshots of the embedded store: a collection's directory in one archive, and its restore.

``create`` archives ``collection.json``, the shard and the probes while holding the
collection's lock, with the shard flushed and closed, so the copy is a consistent set of files
(archive format: ``dinoseek.store.archive``).

``restore`` extracts into a hidden staging directory of the data directory and checks it there
(manifest, ``collection.json``, the shard opens and holds the recorded number of points), then
swaps it in with renames while holding the target's lock: ``.NAME.restore-ready`` (complete
and fsynced) -> the old ``NAME`` is renamed to ``.NAME.restore-old`` -> ``.NAME.restore-ready``
becomes ``NAME`` -> the old one is deleted. A crash at any point leaves leftovers that the next
``EdgeStore`` on the data directory resolves before anything else
(``recover_interrupted_restores``): a ready directory beside an existing ``NAME`` is dropped
(the old collection stays), a ready directory without ``NAME`` is moved in (the swap
completes), and an old one beside ``NAME`` is deleted. Either the old or the new collection
survives, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dinoseek.errors import CollectionExistsError, SnapshotError, StoreError, StoreLockedError
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.archive import (
    EDGE_DATA_DIR,
    Member,
    SnapshotManifest,
    check_target,
    collect_probes,
    file_member,
    new_manifest,
    probe_members,
    tree_members,
    write_snapshot,
)
from dinoseek.store.archive_read import check_kind, extract_archive, read_manifest
from dinoseek.store.edge_collections import EdgeCollections
from dinoseek.store.edge_locks import RESTORE_LOCK_FILE, release, try_flock
from dinoseek.store.edge_probes import METADATA_FILE, PROBES_DIR
from dinoseek.store.edge_shards import SHARD_DIR, count_points
from dinoseek.store.files import fsync_directory, fsync_tree
from dinoseek.store.records import SnapshotInfo

log = logging.getLogger(__name__)

STAGING_PREFIX = ".restore-tmp-"
READY_SUFFIX = ".restore-ready"
OLD_SUFFIX = ".restore-old"


class EdgeSnapshots:
    """``SnapshotStore`` of an ``EdgeStore``."""

    def __init__(self, store: EdgeCollections) -> None:
        self.store = store
        self.data_dir = store.data_dir

    def create(self, collection: str, target: Path) -> SnapshotInfo:
        """Archive the collection into ``target`` (``StoreLockedError`` while another
        process, such as ``dinoseek serve``, holds it)."""
        target = Path(target)
        check_target(target)
        directory = self.store.collection_dir(collection)
        probes = collect_probes(self.store.probes, collection)
        with self.store.closed_but_held(collection) as (space, points):
            manifest = new_manifest("edge", collection, space, points, probes)
            members = [
                *probe_members(probes),
                Member(EDGE_DATA_DIR),
                file_member(f"{EDGE_DATA_DIR}/{METADATA_FILE}", directory / METADATA_FILE),
                *tree_members(f"{EDGE_DATA_DIR}/{SHARD_DIR}", directory / SHARD_DIR),
            ]
            write_snapshot(target, manifest, members)
        log.debug("snapshot of %s (%d points) written to %s", collection, points, target)
        return manifest.info(target, collection)

    def restore(
        self,
        collection: str,
        source: Path,
        *,
        replace: bool = False,
        max_bytes: int | None = None,
    ) -> SnapshotInfo:
        """Recreate ``collection`` from an embedded-store snapshot (see the module doc)."""
        name = validate_collection_name(collection)
        source = Path(source)
        check_kind(read_manifest(source), "edge", source)
        if not replace and self._exists(name):
            raise CollectionExistsError(self._exists_message(name))
        self._refuse_if_held_elsewhere(name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        staging = self.data_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        with self._restore_lock():
            try:
                manifest = extract_archive(source, staging, kind="edge", max_bytes=max_bytes)
                staged = self._stage_collection(staging, manifest, source)
                self._swap_in(name, staged, replace=replace)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        log.debug("restored %s (%d points) from %s", name, manifest.points, source)
        return manifest.info(source, name)

    def recover_interrupted_restores(self) -> None:
        """Resolve what a crashed restore left behind, unless a restore is running now."""
        if not self.data_dir.is_dir() or not any(self.data_dir.glob(".*restore-*")):
            return
        lock_file = try_flock(self.data_dir / RESTORE_LOCK_FILE)
        if lock_file is None:
            return
        try:
            self._resolve_leftovers()
        finally:
            release(lock_file)

    # -- internals --------------------------------------------------------------------------

    def _exists(self, name: str) -> bool:
        return (self.store.collection_dir(name) / METADATA_FILE).exists()

    def _refuse_if_held_elsewhere(self, name: str) -> None:
        """``StoreLockedError`` now, before the archive is unpacked, while another process
        (``dinoseek serve``) holds the collection; the swap takes the lock again."""
        if self._exists(name) and not self.store.is_held(name):
            release(self.store.take_for_swap(name))

    def _exists_message(self, name: str) -> str:
        return (
            f"collection {name!r} already exists in the {self.store.describe()}; pass --replace "
            "to overwrite it with the snapshot, or restore under another --collection"
        )

    def _stage_collection(self, staging: Path, manifest: SnapshotManifest, source: Path) -> Path:
        """Assemble and check the restored collection directory inside ``staging``."""
        staged = staging / EDGE_DATA_DIR
        if (staging / PROBES_DIR).is_dir():
            os.rename(staging / PROBES_DIR, staged / PROBES_DIR)
        try:
            metadata = json.loads((staged / METADATA_FILE).read_text(encoding="utf-8"))
            space = EmbeddingSpace.from_metadata(metadata)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{source}: its collection.json is invalid ({exc})") from None
        if (space.model_id, space.dim) != (manifest.space.model_id, manifest.space.dim):
            raise SnapshotError(
                f"{source}: its collection.json ({space.model_id}, {space.dim}-d) contradicts "
                f"its manifest ({manifest.space.model_id}, {manifest.space.dim}-d)"
            )
        try:
            points = count_points(staged / SHARD_DIR)
        except StoreError as exc:
            raise SnapshotError(f"{source}: {exc.message}") from None
        if points != manifest.points:
            raise SnapshotError(
                f"{source}: its shard holds {points} points but the manifest records "
                f"{manifest.points}; the snapshot is damaged"
            )
        fsync_tree(staged)
        return staged

    def _swap_in(self, name: str, staged: Path, *, replace: bool) -> None:
        """Move ``staged`` to ``DATA_DIR/NAME``, the old collection aside, then delete it."""
        target = self.store.collection_dir(name)
        ready = self.data_dir / f".{name}{READY_SUFFIX}"
        aside = self.data_dir / f".{name}{OLD_SUFFIX}"
        was_held = self.store.is_held(name)
        lock_file = self.store.take_for_swap(name) if target.exists() else None
        try:
            if not replace and self._exists(name):
                raise CollectionExistsError(self._exists_message(name))
            os.rename(staged, ready)
            fsync_directory(self.data_dir)
            if target.exists():
                os.rename(target, aside)
            _move_in(ready, target, aside)
            fsync_directory(self.data_dir)
        finally:
            if lock_file is not None:
                release(lock_file)
        shutil.rmtree(aside, ignore_errors=True)
        if was_held:  # this process held the old collection: it holds the restored one
            self.store.acquire(name)

    @contextmanager
    def _restore_lock(self) -> Iterator[None]:
        """One restore at a time per data directory; leftovers of a crashed one are resolved."""
        lock_file = try_flock(self.data_dir / RESTORE_LOCK_FILE)
        if lock_file is None:
            raise StoreLockedError(
                f"another `dinoseek snapshot restore` is running in the "
                f"{self.store.describe()}; wait for it to finish, then try again"
            )
        try:
            self._resolve_leftovers()
            yield
        finally:
            release(lock_file)

    def _resolve_leftovers(self) -> None:
        """Finish or undo interrupted swaps (see the module doc); needs the restore lock."""
        for ready in self.data_dir.glob(f".*{READY_SUFFIX}"):
            target = self.data_dir / ready.name[1 : -len(READY_SUFFIX)]
            if target.exists():
                log.warning("dropping %s: an interrupted restore never replaced %s", ready, target)
                shutil.rmtree(ready, ignore_errors=True)
            else:
                log.warning("completing an interrupted restore of %s", target.name)
                os.rename(ready, target)
        for aside in self.data_dir.glob(f".*{OLD_SUFFIX}"):
            target = self.data_dir / aside.name[1 : -len(OLD_SUFFIX)]
            if target.exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(aside, target)
        for staging in self.data_dir.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(staging, ignore_errors=True)
        fsync_directory(self.data_dir)


def _move_in(ready: Path, target: Path, aside: Path) -> None:
    """The last rename of a restore; if it fails, put the old collection back."""
    try:
        os.rename(ready, target)
    except OSError as exc:
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        shutil.rmtree(ready, ignore_errors=True)
        raise StoreError(
            f"cannot move the restored collection into {target} ({exc}); nothing was changed"
        ) from None
