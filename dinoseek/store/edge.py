"""The embedded store: Qdrant Edge in-process, one shard per collection under a data directory.

Layout::

    DATA_DIR/
      COLLECTION/
        collection.json   embedding space (model, dim, preprocessing, fingerprint)
        state             the content's token (``state_token``): a new one before each write
        shard/            the Qdrant Edge shard (segments + write-ahead log)
        probes/           linear probes and their reports (``edge_probes``)
        .lock             who holds the collection (JSON), under an exclusive flock
      .restore.lock       held by a running restore (``edge_snapshots``)

A collection is used only once acquired (``acquire``: its lock taken, its shard opened; see
``edge_locks``), and stays held until ``release`` or ``close``. ``collection_info`` on a
collection this process has not acquired opens it only for that read.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from dinoseek.errors import (
    CollectionNotAcquiredError,
    CollectionNotFoundError,
    DinoseekError,
    PointRefusedError,
    StoreError,
)
from dinoseek.messages import short_list
from dinoseek.regions import RegionSpec
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.edge_locks import lock_collection, release
from dinoseek.store.edge_probes import METADATA_FILE, EdgeProbes
from dinoseek.store.edge_regions import (
    ids_without_regions,
    region_vectors_update,
    with_region_vector,
)
from dinoseek.store.edge_rename import rename_edge_collection
from dinoseek.store.edge_requests import (
    CLS_ONLY,
    edge_filter,
    edge_point,
    query_request,
    search_hit,
    stored_point,
)
from dinoseek.store.edge_shards import SHARD_DIR, open_or_create_shard
from dinoseek.store.edge_snapshots import EdgeSnapshots
from dinoseek.store.edge_state import STATE_FILE, new_token, read_token
from dinoseek.store.files import write_json_atomic
from dinoseek.store.records import (
    CollectionInfo,
    CollectionRename,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    StoredPoint,
    VectorIndex,
)

log = logging.getLogger(__name__)


class _Held:
    """A collection acquired by this process: its open shard and the lock that guards it."""

    def __init__(self, shard: qe.EdgeShard, lock_file: IO[str], space: EmbeddingSpace) -> None:
        self.shard = shard
        self.lock_file = lock_file
        self.space = space
        self.writing = False  # writes made since the token was last given out


class EdgeStore:
    """``VectorStore`` on Qdrant Edge."""

    def __init__(
        self,
        data_dir: Path,
        *,
        owner: Mapping[str, Any] | None = None,
        index: VectorIndex | None = None,
    ) -> None:
        """``owner`` is written into each lock file (e.g. the server's URL) for other processes;
        ``index`` is how collections created here index their vectors."""
        self.data_dir = Path(data_dir)
        self.owner = dict(owner or {})
        self.index = index or VectorIndex()
        self._held: dict[str, _Held] = {}
        self._guard = threading.RLock()
        self._probes = EdgeProbes(self.data_dir, self.not_found_message)
        self._snapshots = EdgeSnapshots(self)
        self._snapshots.recover_interrupted_restores()

    @property
    def probes(self) -> EdgeProbes:
        """Probe files beside each collection."""
        return self._probes

    @property
    def snapshots(self) -> EdgeSnapshots:
        """Archives of a collection's directory."""
        return self._snapshots

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """E.g. ``embedded store at dinoseek-data``."""
        return f"embedded store at {self.data_dir}"

    # -- collections ------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Collections are the sub-directories that hold a ``collection.json``."""
        if not self.data_dir.is_dir():
            return []
        return sorted(
            p.parent.name
            for p in self.data_dir.glob(f"*/{METADATA_FILE}")
            if not p.parent.name.startswith(".")  # staging directories of a restore
        )

    def collection_space(self, name: str) -> EmbeddingSpace:
        """Read from ``collection.json``; needs no lock."""
        return EmbeddingSpace.from_metadata(self._metadata(name))

    def collection_regions(self, name: str) -> RegionSpec | None:
        """Read from ``collection.json``; needs no lock."""
        recorded = self._metadata(name).get("regions")
        return RegionSpec.from_metadata(recorded) if isinstance(recorded, dict) else None

    def ensure_regions(self, name: str, spec: RegionSpec) -> None:
        """Add and configure the region multivector (``edge_regions``), then record ``spec``
        in ``collection.json``: a crash in between leaves a vector that the next call
        configures again, never a recorded layout without its vector."""
        with self._guard:
            self._shard(name)
            recorded = self.collection_regions(name)
            if recorded is not None:
                spec.check_same(name, recorded)
                return
            held = self._held[name]
            shard_dir = self.collection_dir(name) / SHARD_DIR
            try:
                held.shard = with_region_vector(held.shard, shard_dir, held.space.dim)
            except BaseException:
                self._held.pop(name, None)
                release(held.lock_file)
                raise
            metadata = {**self._metadata(name), "regions": spec.to_metadata()}
            write_json_atomic(self.collection_dir(name) / METADATA_FILE, metadata)

    def collection_info(self, name: str) -> CollectionInfo:
        """From the held shard, or from one opened just for this read."""
        with self._guard:
            held = self._held.get(name)
            if held is not None:
                return _info(name, held)
            held = self._open(name)
            try:
                return _info(name, held)
            finally:
                _close(name, held)

    def ensure_collection(self, name: str, space: EmbeddingSpace) -> None:
        """Create the collection (metadata first, then the shard) or check compatibility; it
        is acquired afterwards. A new collection is never unlocked between its creation and
        its acquisition, so no other process can take it in between."""
        directory = self.collection_dir(name)
        metadata_path = directory / METADATA_FILE
        if metadata_path.exists():
            space.check_compatible(self.collection_space(name), name)
            self.acquire(name)
            return
        directory.mkdir(parents=True, exist_ok=True)
        with self._guard:
            if name in self._held:
                return
            lock_file = self._lock(name)
            try:
                if metadata_path.exists():  # created by another process meanwhile
                    space.check_compatible(self.collection_space(name), name)
                else:
                    write_json_atomic(metadata_path, space.to_metadata())
                shard = open_or_create_shard(directory / SHARD_DIR, space, self.index)
            except BaseException:
                release(lock_file)
                raise
            self._held[name] = _Held(shard, lock_file, self.collection_space(name))

    def delete_collection(self, name: str) -> None:
        """Remove the collection directory. Needs the lock, like every write."""
        directory = self.collection_dir(name)
        if not (directory / METADATA_FILE).exists():
            raise CollectionNotFoundError(self.not_found_message(name))
        with self._guard:
            held = self._held.pop(name, None)
            lock_file = held.lock_file if held else self._lock(name)
            if held:
                held.shard.close()
            try:
                # Remove the metadata first: a crash half-way leaves no collection, not a
                # collection without its data.
                (directory / METADATA_FILE).unlink()
                shutil.rmtree(directory / SHARD_DIR, ignore_errors=True)
            finally:
                release(lock_file)
            shutil.rmtree(directory, ignore_errors=True)

    def rename_collection(self, name: str, new_name: str) -> CollectionRename:
        """Move the collection's directory, whole (``edge_rename``)."""
        return rename_edge_collection(self, name, new_name)

    def acquire(self, name: str) -> None:
        """Take the collection's lock and open its shard (idempotent)."""
        with self._guard:
            if name not in self._held:
                self._held[name] = self._open(name)

    def release(self, name: str) -> None:
        """Flush and close the shard, then drop the lock."""
        with self._guard:
            held = self._held.pop(name, None)
            if held is not None:
                _close(name, held)

    def is_held(self, name: str) -> bool:
        """Whether this store has acquired ``name``."""
        return name in self._held

    # -- points -----------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        """Written to Edge's write-ahead log: replayed after a crash."""
        if not points:
            return
        operation = qe.UpdateOperation.upsert_points([edge_point(p) for p in points])
        self._write(name, operation)

    def set_regions(self, name: str, regions: Mapping[str, Any]) -> None:
        """One update-vectors operation for the points still stored."""
        operation = region_vectors_update(self._shard(name), regions)
        if operation is None:
            return
        try:
            self._write(name, operation)
        except DinoseekError:
            raise
        except Exception as exc:  # noqa: BLE001 - Qdrant Edge raises plain Exception
            raise PointRefusedError(f"region vectors refused: {exc}") from None

    def ids_without_regions(self, name: str) -> Iterator[str]:
        """Scrolled by Edge's ``has_vector`` condition."""
        return ids_without_regions(self._shard(name))

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        """Overwrite one point's payload."""
        self._write(name, qe.UpdateOperation.overwrite_payload([point_id], dict(payload)))

    def merge_payload(self, name: str, ids: Sequence[str], fields: Mapping[str, Any]) -> None:
        """One set-payload operation for all of ``ids``."""
        if ids:
            self._write(name, qe.UpdateOperation.set_payload(list(ids), dict(fields)))

    def delete_payload_fields(self, name: str, ids: Sequence[str], keys: Sequence[str]) -> None:
        """One delete-payload operation for all of ``ids``."""
        if ids and keys:
            self._write(name, qe.UpdateOperation.delete_payload(list(ids), list(keys)))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete by id."""
        if ids:
            self._write(name, qe.UpdateOperation.delete_points(list(ids)))

    def get(
        self, name: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        """Retrieve by id, in the order asked."""
        shard = self._shard(name)
        if not ids:
            return []
        with_vector = CLS_ONLY if with_vectors else False
        records = shard.retrieve(list(ids), with_payload=True, with_vector=with_vector)
        by_id = {str(r.id): stored_point(r, with_vectors) for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def search(self, name: str, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """Planned as one batch by Edge."""
        shard = self._shard(name)
        if not queries:
            return []
        batch = qe.QueryBatchRequest([query_request(q, self.index.hnsw_ef) for q in queries])
        return [[search_hit(h) for h in hits] for hits in shard.query_batch(batch)]

    def scroll(
        self,
        name: str,
        *,
        with_vectors: bool = False,
        filters: Mapping[str, FilterValue] | None = None,
        batch_size: int = 512,
        start: str | None = None,
    ) -> Iterator[StoredPoint]:
        """Pages through the shard with Edge's scroll offsets."""
        shard = self._shard(name)
        offset: Any = start
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=batch_size,
                    filter=edge_filter(filters or {}, ()),
                    with_payload=True,
                    with_vector=CLS_ONLY if with_vectors else False,
                )
            )
            for record in records:
                yield stored_point(record, with_vectors)
            if offset is None:
                return

    def count(self, name: str) -> int:
        """Exact count."""
        return int(self._shard(name).count(qe.CountRequest(exact=True)))

    def state_token(self, name: str) -> str | None:
        """The token of the collection's content now (flushed): every write made through an
        ``EdgeStore`` first gives the collection a new token, durably, so the same token
        later means the same content. Cheap when nothing was written since the last one (a
        file read: the service asks before each query)."""
        with self._guard:
            shard, held = self._shard(name), self._held[name]
            if held.writing:
                shard.flush()
            path = self.collection_dir(name) / STATE_FILE
            token = read_token(path) or new_token(path)
            held.writing = False
            return token

    def optimize(self, name: str) -> None:
        """Edge builds its HNSW index only when asked; this blocks until it is built."""
        started = time.perf_counter()
        shard = self._shard(name)
        changed = shard.optimize()
        shard.flush()
        if changed:
            log.info("optimised %s in %.1f s", name, time.perf_counter() - started)

    def close(self) -> None:
        """Flush and close every held shard, then release the locks."""
        with self._guard:
            for name, held in list(self._held.items()):
                _close(name, held)
            self._held.clear()

    # -- for EdgeSnapshots ------------------------------------------------------------------

    def collection_dir(self, name: str) -> Path:
        """``DATA_DIR/NAME`` (the name validated)."""
        return self.data_dir / validate_collection_name(name)

    def not_found_message(self, name: str) -> str:
        """The message of ``CollectionNotFoundError`` for ``name``."""
        existing = short_list(self.list_collections())
        return (
            f"no collection {name!r} in the {self.describe()} (existing: {existing}); "
            "run `dinoseek index` first or pass --collection"
        )

    @contextmanager
    def closed_but_held(self, name: str) -> Iterator[tuple[EmbeddingSpace, int]]:
        """Hold the collection's lock with its shard flushed and closed (a consistent set of
        files to copy), reopening it afterwards (and releasing it, unless it was held before);
        yields its space and point count. Other threads of this process must not use the
        collection meanwhile."""
        with self._guard:
            was_held = name in self._held
            self.acquire(name)
            held = self._held[name]
            points = int(held.shard.count(qe.CountRequest(exact=True)))
            held.shard.flush()
            held.shard.close()
            try:
                yield held.space, points
            finally:
                try:
                    shard_dir = self.collection_dir(name) / SHARD_DIR
                    held.shard = open_or_create_shard(shard_dir, held.space)
                except BaseException:
                    self._held.pop(name, None)
                    release(held.lock_file)
                    raise
                if not was_held:  # as it was before: a snapshot takes nothing for good
                    self.release(name)

    def take_for_swap(self, name: str) -> IO[str]:
        """The collection's lock with nothing open: this store's own (its shard closed and
        forgotten) or taken now. The caller releases it."""
        with self._guard:
            held = self._held.pop(name, None)
            if held is None:
                return self._lock(name)
            try:
                held.shard.flush()
                held.shard.close()
            except Exception:
                log.exception("closing collection %s before the restore failed", name)
            return held.lock_file

    # -- internals --------------------------------------------------------------------------

    def _metadata(self, name: str) -> dict[str, Any]:
        path = self.collection_dir(name) / METADATA_FILE
        try:
            metadata = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CollectionNotFoundError(self.not_found_message(name)) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is unreadable ({exc}); restore it from a backup") from None
        if not isinstance(metadata, dict):
            raise StoreError(f"{path} is not a JSON object; restore it from a backup")
        return metadata

    def _shard(self, name: str) -> qe.EdgeShard:
        held = self._held.get(name)
        if held is None:
            raise CollectionNotAcquiredError(
                f"collection {name!r} of the {self.describe()} was not acquired by this "
                "process; acquire it before reading or writing its points"
            )
        return held.shard

    def _write(self, name: str, operation: qe.UpdateOperation) -> None:
        """Apply ``operation`` once the collection has a token no one has been given yet. Under
        the guard: a token given out meanwhile (``state_token`` on another thread) would not
        cover a write that lands after it."""
        with self._guard:
            shard = self._shard(name)
            held = self._held[name]
            if not held.writing:
                new_token(self.collection_dir(name) / STATE_FILE)
                held.writing = True
            shard.update(operation)

    def _open(self, name: str) -> _Held:
        space = self.collection_space(name)
        lock_file = self._lock(name)
        try:
            shard = open_or_create_shard(self.collection_dir(name) / SHARD_DIR, space)
        except BaseException:
            release(lock_file)
            raise
        return _Held(shard, lock_file, space)

    def _lock(self, name: str) -> IO[str]:
        return lock_collection(
            self.collection_dir(name), name, owner=self.owner, where=self.describe()
        )


def _info(name: str, held: _Held) -> CollectionInfo:
    info = held.shard.info()
    return CollectionInfo(
        name=name,
        points=int(info.points_count),
        indexed_vectors=int(info.indexed_vectors_count),
        space=held.space,
    )


def _close(name: str, held: _Held) -> None:
    try:
        held.shard.flush()
        held.shard.close()
    except Exception:
        log.exception("closing collection %s failed", name)
    finally:
        release(held.lock_file)
