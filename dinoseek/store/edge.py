"""The embedded store: Qdrant Edge in-process, one shard per collection under a data directory.

Layout::

    DATA_DIR/
      COLLECTION/
        collection.json   embedding space (model, dim, preprocessing, fingerprint)
        shard/            the Qdrant Edge shard (segments + write-ahead log)
        probes/NAME.safetensors, probes/NAME.json   linear probes and their reports
        .lock             who holds the collection (JSON), under an exclusive flock
      .restore.lock       held by a running ``restore`` (and by the recovery of a crashed one)

Probes are plain files written atomically: reading or replacing them needs no lock.

Snapshots (``snapshot``/``restore``, format in ``dinoseek.store.snapshot``) archive a
collection while holding its lock, with the shard flushed and closed. A restore extracts into
a hidden staging directory of the data directory, checks it (manifest, ``collection.json``,
the shard opens and holds the recorded number of points), then swaps it in with renames while
holding the target's lock: ``.NAME.restore-ready`` (complete and fsynced) -> the old
``NAME`` is renamed to ``.NAME.restore-old`` -> ``.NAME.restore-ready`` becomes ``NAME`` ->
the old one is deleted. A crash at any point leaves leftovers that the next ``EdgeStore`` on
the data directory resolves before anything else (``_recover_interrupted_restores``): a ready
directory beside an existing ``NAME`` is dropped (the old collection stays), a ready
directory without ``NAME`` is moved in (the swap completes), and an old one beside ``NAME``
is deleted. Either the old or the new collection survives, never a mix.

Only one process can open a Qdrant Edge shard, and Edge has no read-only mode. dinoseek takes
an exclusive ``flock`` on ``.lock`` before opening a shard and writes who holds it there, so a
second process gets ``StoreLockedError`` at once, naming the holder, instead of Edge's bare
"WouldBlock". The kernel drops the lock when its holder dies (SIGKILL included), so a lock is
never stale.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from dinoseek.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ProbeNotFoundError,
    SnapshotError,
    StoreError,
    StoreLockedError,
)
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.protocol import (
    INDEXED_FIELDS,
    CollectionInfo,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    SnapshotInfo,
    StoredPoint,
    StoredProbe,
)
from dinoseek.store.snapshot import (
    EDGE_DATA_DIR,
    Member,
    SnapshotManifest,
    check_kind,
    check_target,
    collect_probes,
    extract_archive,
    file_member,
    fsync_directory,
    fsync_tree,
    new_manifest,
    probe_members,
    read_manifest,
    tree_members,
    write_snapshot,
)

log = logging.getLogger(__name__)

METADATA_FILE = "collection.json"
SHARD_DIR = "shard"
PROBES_DIR = "probes"
LOCK_FILE = ".lock"
RESTORE_LOCK_FILE = ".restore.lock"
STAGING_PREFIX = ".restore-tmp-"
READY_SUFFIX = ".restore-ready"
OLD_SUFFIX = ".restore-old"


class _OpenCollection:
    """A shard held open by this process, with the lock file that guards it."""

    def __init__(self, shard: qe.EdgeShard, lock_file: IO[str], space: EmbeddingSpace) -> None:
        self.shard = shard
        self.lock_file = lock_file
        self.space = space


class EdgeStore:
    """``VectorStore`` on Qdrant Edge. Collections are opened (and locked) on first use."""

    def __init__(self, data_dir: Path, *, owner: Mapping[str, Any] | None = None) -> None:
        """``owner`` is written into each lock file (e.g. the server's URL) for other processes."""
        self.data_dir = Path(data_dir)
        self.owner = dict(owner or {})
        self._open: dict[str, _OpenCollection] = {}
        self._guard = threading.RLock()
        self._recover_interrupted_restores()

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
        path = self._collection_dir(name) / METADATA_FILE
        try:
            metadata = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CollectionNotFoundError(self._not_found_message(name)) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is unreadable ({exc}); restore it from a backup") from None
        return EmbeddingSpace.from_metadata(metadata)

    def collection_info(self, name: str) -> CollectionInfo:
        """Opens (and locks) the collection to count its points."""
        shard = self._shard(name)
        info = shard.info()
        return CollectionInfo(
            name=name,
            points=int(info.points_count),
            indexed_vectors=int(info.indexed_vectors_count),
            space=self._open[name].space,
        )

    def ensure_collection(self, name: str, space: EmbeddingSpace) -> None:
        """Create the collection (metadata first, then the shard) or check compatibility."""
        directory = self._collection_dir(name)
        metadata_path = directory / METADATA_FILE
        if metadata_path.exists():
            space.check_compatible(self.collection_space(name), name)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            lock_file = self._lock(name)
            try:
                if not metadata_path.exists():
                    _write_json_atomic(metadata_path, space.to_metadata())
            finally:
                _release(lock_file)
        self._shard(name)

    def delete_collection(self, name: str) -> None:
        """Remove the collection directory. Needs the lock, like every write."""
        directory = self._collection_dir(name)
        if not (directory / METADATA_FILE).exists():
            raise CollectionNotFoundError(self._not_found_message(name))
        with self._guard:
            opened = self._open.pop(name, None)
            lock_file = opened.lock_file if opened else self._lock(name)
            if opened:
                opened.shard.close()
            try:
                # Remove the metadata first: a crash half-way leaves no collection, not a
                # collection without its data.
                (directory / METADATA_FILE).unlink()
                shutil.rmtree(directory / SHARD_DIR, ignore_errors=True)
            finally:
                _release(lock_file)
            shutil.rmtree(directory, ignore_errors=True)

    # -- points -----------------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        """Written to Edge's write-ahead log: replayed after a crash."""
        if not points:
            return
        operation = qe.UpdateOperation.upsert_points(
            [qe.Point(p.id, _vector_list(p.vector), p.payload) for p in points]
        )
        self._shard(name).update(operation)

    def set_payload(self, name: str, point_id: str, payload: Mapping[str, Any]) -> None:
        """Overwrite one point's payload."""
        self._shard(name).update(qe.UpdateOperation.overwrite_payload([point_id], dict(payload)))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete by id."""
        if ids:
            self._shard(name).update(qe.UpdateOperation.delete_points(list(ids)))

    def get(
        self, name: str, ids: Sequence[str], *, with_vectors: bool = False
    ) -> list[StoredPoint]:
        """Retrieve by id, in the order asked."""
        if not ids:
            return []
        records = self._shard(name).retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        by_id = {str(r.id): _stored_point(r, with_vectors) for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def search(self, name: str, query: SearchQuery) -> list[SearchHit]:
        """One nearest-neighbour query."""
        hits = self._shard(name).query(_query_request(query))
        return [_hit(h) for h in hits]

    def search_many(self, name: str, queries: Sequence[SearchQuery]) -> list[list[SearchHit]]:
        """Planned as one batch by Edge."""
        if not queries:
            return []
        batch = qe.QueryBatchRequest([_query_request(q) for q in queries])
        return [[_hit(h) for h in hits] for hits in self._shard(name).query_batch(batch)]

    def scroll(
        self,
        name: str,
        *,
        with_vectors: bool = False,
        filters: Mapping[str, FilterValue] | None = None,
        batch_size: int = 512,
    ) -> Iterator[StoredPoint]:
        """Pages through the shard with Edge's scroll offsets."""
        shard = self._shard(name)
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=batch_size,
                    filter=_filter(filters or {}, ()),
                    with_payload=True,
                    with_vector=with_vectors,
                )
            )
            for record in records:
                yield _stored_point(record, with_vectors)
            if offset is None:
                return

    def count(self, name: str) -> int:
        """Exact count."""
        return int(self._shard(name).count(qe.CountRequest(exact=True)))

    def optimize(self, name: str) -> None:
        """Edge builds its HNSW index only when asked; this blocks until it is built."""
        started = time.perf_counter()
        shard = self._shard(name)
        changed = shard.optimize()
        shard.flush()
        if changed:
            log.info("optimised %s in %.1f s", name, time.perf_counter() - started)

    def save_probe(self, collection: str, name: str, data: bytes, info: Mapping[str, Any]) -> None:
        """Written as two files, each replaced atomically (the info last)."""
        directory = self._probes_dir(collection)
        directory.mkdir(exist_ok=True)
        name = validate_collection_name(name, kind="probe")
        _write_bytes_atomic(directory / f"{name}.safetensors", data)
        _write_json_atomic(directory / f"{name}.json", info)

    def list_probes(self, collection: str) -> list[StoredProbe]:
        """Probes whose info and data are both present."""
        directory = self._probes_dir(collection)
        probes = []
        for info_path in sorted(directory.glob("*.json")):
            if not info_path.with_suffix(".safetensors").exists():
                continue
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("skipping unreadable probe info %s", info_path)
                continue
            probes.append(StoredProbe(name=info_path.stem, info=info))
        return probes

    def load_probe(self, collection: str, name: str) -> bytes:
        """The probe's safetensors bytes."""
        path = self._probe_path(collection, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ProbeNotFoundError(self._probe_missing(collection, name)) from None

    def delete_probe(self, collection: str, name: str) -> None:
        """Remove both files."""
        path = self._probe_path(collection, name)
        if not path.exists():
            raise ProbeNotFoundError(self._probe_missing(collection, name))
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self, collection: str, target: Path) -> SnapshotInfo:
        """Archive the collection (``collection.json``, the shard, the probes) into ``target``.

        Holds the collection's lock throughout (``StoreLockedError`` while another process,
        such as ``dinoseek serve``, has it open). The shard is flushed and closed while it is
        archived, so the copy is a consistent set of files, and reopened afterwards; other
        threads of this process must not use the collection meanwhile.
        """
        target = Path(target)
        check_target(target)
        with self._guard:
            shard = self._shard(collection)
            opened = self._open[collection]
            probes = collect_probes(self, collection)
            points = int(shard.count(qe.CountRequest(exact=True)))
            manifest = new_manifest("edge", collection, opened.space, points, probes)
            directory = self._collection_dir(collection)
            try:
                shard.flush()
                shard.close()
                members = [
                    *probe_members(probes),
                    Member(EDGE_DATA_DIR),
                    file_member(f"{EDGE_DATA_DIR}/{METADATA_FILE}", directory / METADATA_FILE),
                    *tree_members(f"{EDGE_DATA_DIR}/{SHARD_DIR}", directory / SHARD_DIR),
                ]
                write_snapshot(target, manifest, members)
            finally:
                self._reopen(collection, opened)
        log.debug("snapshot of %s (%d points) written to %s", collection, points, target)
        return manifest.info(target, collection)

    def restore(self, collection: str, source: Path, *, replace: bool = False) -> SnapshotInfo:
        """Recreate ``collection`` from an embedded-store snapshot (see the module doc).

        The snapshot is extracted and checked in a staging directory first; the collection
        is swapped only once the copy is complete, so a bad archive or a crash never leaves a
        half-restored collection. An existing collection needs ``replace=True``.
        """
        name = validate_collection_name(collection)
        source = Path(source)
        check_kind(read_manifest(source), "edge", source)
        if not replace and self._exists(name):
            raise CollectionExistsError(self._exists_message(name))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        staging = self.data_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        with self._restore_lock():
            try:
                manifest = extract_archive(source, staging, kind="edge")
                staged = self._stage_collection(staging, manifest, source)
                self._swap_in(name, staged, replace=replace)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        log.debug("restored %s (%d points) from %s", name, manifest.points, source)
        return manifest.info(source, name)

    def _exists(self, name: str) -> bool:
        return (self._collection_dir(name) / METADATA_FILE).exists()

    def _exists_message(self, name: str) -> str:
        return (
            f"collection {name!r} already exists in the {self.describe()}; pass --replace to "
            "overwrite it with the snapshot, or restore under another --collection"
        )

    def _reopen(self, name: str, opened: _OpenCollection) -> None:
        """Reopen a shard closed for a snapshot; on failure, give the collection up."""
        try:
            shard_dir = self._collection_dir(name) / SHARD_DIR
            opened.shard = _open_or_create_shard(shard_dir, opened.space)
        except BaseException:
            self._open.pop(name, None)
            _release(opened.lock_file)
            raise

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
        points = _count_staged_points(staged / SHARD_DIR, source)
        if points != manifest.points:
            raise SnapshotError(
                f"{source}: its shard holds {points} points but the manifest records "
                f"{manifest.points}; the snapshot is damaged"
            )
        fsync_tree(staged)
        return staged

    def _swap_in(self, name: str, staged: Path, *, replace: bool) -> None:
        """Move ``staged`` to ``DATA_DIR/NAME``, the old collection aside, then delete it."""
        target = self._collection_dir(name)
        ready = self.data_dir / f".{name}{READY_SUFFIX}"
        aside = self.data_dir / f".{name}{OLD_SUFFIX}"
        with self._guard:
            lock_file = self._take_for_swap(name) if target.exists() else None
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
                    _release(lock_file)
        shutil.rmtree(aside, ignore_errors=True)

    def _take_for_swap(self, name: str) -> IO[str]:
        """The target's lock: this store's own (its shard closed) or taken now."""
        opened = self._open.pop(name, None)
        if opened is None:
            return self._lock(name)
        try:
            opened.shard.flush()
            opened.shard.close()
        except Exception:
            log.exception("closing collection %s before the restore failed", name)
        return opened.lock_file

    @contextmanager
    def _restore_lock(self) -> Iterator[None]:
        """One restore at a time per data directory; leftovers of a crashed one are resolved."""
        lock_file = _try_flock(self.data_dir / RESTORE_LOCK_FILE)
        if lock_file is None:
            raise StoreLockedError(
                f"another `dinoseek snapshot restore` is running in the {self.describe()}; "
                "wait for it to finish, then try again"
            )
        try:
            self._resolve_leftovers()
            yield
        finally:
            _release(lock_file)

    def _recover_interrupted_restores(self) -> None:
        """Resolve what a crashed restore left behind, unless a restore is running now."""
        if not self.data_dir.is_dir() or not any(self.data_dir.glob(".*restore-*")):
            return
        lock_file = _try_flock(self.data_dir / RESTORE_LOCK_FILE)
        if lock_file is None:
            return
        try:
            self._resolve_leftovers()
        finally:
            _release(lock_file)

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

    def close(self) -> None:
        """Flush and close every open shard, then release the locks."""
        with self._guard:
            for name, opened in list(self._open.items()):
                try:
                    opened.shard.flush()
                    opened.shard.close()
                except Exception:
                    log.exception("closing collection %s failed", name)
                finally:
                    _release(opened.lock_file)
            self._open.clear()

    # -- internals --------------------------------------------------------------------------

    def _collection_dir(self, name: str) -> Path:
        return self.data_dir / validate_collection_name(name)

    def _probes_dir(self, collection: str) -> Path:
        directory = self._collection_dir(collection)
        if not (directory / METADATA_FILE).exists():
            raise CollectionNotFoundError(self._not_found_message(collection))
        return directory / PROBES_DIR

    def _probe_path(self, collection: str, name: str) -> Path:
        name = validate_collection_name(name, kind="probe")
        return self._probes_dir(collection) / f"{name}.safetensors"

    def _probe_missing(self, collection: str, name: str) -> str:
        names = ", ".join(p.name for p in self.list_probes(collection)) or "none"
        return (
            f"no probe {name!r} for collection {collection!r} (existing: {names}); "
            "train one with `dinoseek probe train`"
        )

    def _not_found_message(self, name: str) -> str:
        existing = ", ".join(self.list_collections()) or "none"
        return (
            f"no collection {name!r} in the {self.describe()} (existing: {existing}); "
            "run `dinoseek index` first or pass --collection"
        )

    def _shard(self, name: str) -> qe.EdgeShard:
        opened = self._open.get(name)
        if opened is not None:
            return opened.shard
        with self._guard:
            opened = self._open.get(name)
            if opened is None:
                opened = self._open_collection(name)
                self._open[name] = opened
            return opened.shard

    def _open_collection(self, name: str) -> _OpenCollection:
        space = self.collection_space(name)
        lock_file = self._lock(name)
        try:
            shard = _open_or_create_shard(self._collection_dir(name) / SHARD_DIR, space)
        except BaseException:
            _release(lock_file)
            raise
        return _OpenCollection(shard, lock_file, space)

    def _lock(self, name: str) -> IO[str]:
        """Take the collection's exclusive lock without waiting, or raise StoreLockedError."""
        path = self._collection_dir(name) / LOCK_FILE
        lock_file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = _parse_holder(lock_file.read())
            lock_file.close()
            raise StoreLockedError(self._locked_message(name, holder), holder=holder) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(json.dumps({"pid": os.getpid(), "since": time.time(), **self.owner}))
        lock_file.flush()
        return lock_file

    def _locked_message(self, name: str, holder: Mapping[str, Any]) -> str:
        who = f"process {holder.get('pid', '?')}"
        if holder.get("command"):
            who += f" ({holder['command']})"
        message = (
            f"collection {name!r} of the {self.describe()} is in use by {who}. "
            "An embedded store can be opened by one process at a time"
        )
        if holder.get("url"):
            return (
                f"{message}: the dinoseek server at {holder['url']} owns it. Query it through "
                "that server, or stop the server first"
            )
        return f"{message}: wait for that process to finish or stop it, then try again"


def _parse_holder(text: str) -> dict[str, Any]:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _release(lock_file: IO[str]) -> None:
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    finally:
        lock_file.close()


def _try_flock(path: Path) -> IO[str] | None:
    """An exclusive flock on ``path`` (written with our pid), or None if someone holds it."""
    lock_file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - returned to the caller
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(json.dumps({"pid": os.getpid(), "since": time.time()}))
    lock_file.flush()
    return lock_file


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


def _count_staged_points(path: Path, source: Path) -> int:
    """Open a restored shard once, to prove it loads, and count its points."""
    try:
        shard = qe.EdgeShard.load(str(path))
    except Exception as exc:  # noqa: BLE001 - Qdrant Edge raises plain Exception
        raise SnapshotError(f"{source}: the shard in the snapshot does not open ({exc})") from None
    try:
        return int(shard.count(qe.CountRequest(exact=True)))
    finally:
        shard.close()


def _open_or_create_shard(path: Path, space: EmbeddingSpace) -> qe.EdgeShard:
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=space.dim, distance=qe.Distance.Cosine))
    try:
        if (path / "edge_config.json").exists():
            return qe.EdgeShard.load(str(path))
        # A shard directory without its config is a create() that died half-way: nothing
        # in it was ever acknowledged, so it is safe to start over.
        shutil.rmtree(path, ignore_errors=True)
        shard = qe.EdgeShard.create(str(path), config)
        for field_name in INDEXED_FIELDS:
            shard.update(
                qe.UpdateOperation.create_field_index(field_name, qe.PayloadSchemaType.Keyword)
            )
        shard.flush()
        return shard
    except Exception as exc:  # noqa: BLE001 - Qdrant Edge raises plain Exception
        if "WouldBlock" in str(exc):
            raise StoreLockedError(
                f"the shard at {path} is open in another process (Qdrant Edge: {exc})"
            ) from None
        raise StoreError(f"cannot open the shard at {path}: {exc}") from None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    _write_bytes_atomic(path, json.dumps(data, indent=1).encode("utf-8"))


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename over ``path``, fsync the directory."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _vector_list(vector: np.ndarray) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()  # type: ignore[no-any-return]


def _filter(filters: Mapping[str, FilterValue], exclude_ids: Sequence[str]) -> qe.Filter | None:
    must: list[Any] = [
        qe.FieldCondition(key, match=qe.MatchValue(value)) for key, value in filters.items()
    ]
    must_not: list[Any] = [qe.HasIdCondition(set(exclude_ids))] if exclude_ids else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _query_request(query: SearchQuery) -> qe.QueryRequest:
    return qe.QueryRequest(
        limit=query.top_k,
        offset=query.offset,
        query=qe.Query.Nearest(_vector_list(query.vector)),
        filter=_filter(query.filters, query.exclude_ids),
        score_threshold=query.score_threshold,
        with_payload=True,
        with_vector=False,
    )


def _hit(point: qe.ScoredPoint) -> SearchHit:
    return SearchHit(id=str(point.id), score=float(point.score), payload=dict(point.payload or {}))


def _stored_point(record: qe.Record, with_vectors: bool) -> StoredPoint:
    vector = None
    if with_vectors and record.vector is not None:
        vector = np.asarray(record.vector, dtype=np.float32)
    return StoredPoint(id=str(record.id), payload=dict(record.payload or {}), vector=vector)
