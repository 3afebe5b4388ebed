"""The indexing pipeline: scan -> plan -> decode (processes) -> embed (batches) -> upsert (thread).

- Plan: compare the scan with the catalog (the store's own payloads, or their saved copy),
  file by file as the scan finds them. Unchanged files (same path, size, mtime) are skipped
  without being read, and the model is loaded only if some file needs it; files that
  failed before and have not changed are skipped unless ``retry_failed``; files gone from a
  scanned root are pruned.
- Decode: worker processes read, hash, decode and preprocess files (see ``indexer.decode``);
  memory stays bounded on any folder size, and a dying worker loses nothing.
- Embed: the main thread embeds full batches. A batch that fails for lack of memory is split
  and retried; a single image that still fails is reported, not fatal.
- Upsert: a writer thread applies the store operations in order, through a bounded queue,
  and builds the index every ``optimize_every`` points.

Every operation is idempotent and the plan is rebuilt from the store on each run, so killing
the indexer at any moment and running it again converges to the state of one clean run.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dinoseek.embedder_protocol import ImageEmbedder, Pixels, available_cores
from dinoseek.errors import EmbeddingError, PointRefusedError
from dinoseek.progress import Progress
from dinoseek.regions import RegionSpec
from dinoseek.runtime import default_decode_workers
from dinoseek.scan import ScanCounts, ScannedFile, ScanOptions, ScanProblem, scan
from dinoseek.settings import default_of
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, VectorStore, point_id_for_sha256
from indexer.catalog import Catalog, FileEntry, LabelSource, build_payload, content_of
from indexer.catalog_cache import load_catalog, save_catalog
from indexer.decode import DecodePool, GpuDecodeStage
from indexer.ray_engine import RETRIED_NEXT_RUN, EmbedJob, RayEngine, RayStage
from indexer.regions import (
    Embedded,
    add_missing_regions,
    embed_batch,
    files_lacking_regions,
    run_regions,
)
from indexer.report import FailureRecord, load_failures, write_failures
from indexer.workers import FailedFile, PreparedFile, WorkerConfig, prepare_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOptions:
    """What to index and how."""

    roots: tuple[Path, ...]
    collection: str
    failures_report: Path
    batch_size: int | None = 16  # None: the model's default
    workers: int | None = 1  # None: the default for the model's device
    max_image_pixels: int = default_of("max_image_pixels")
    max_file_bytes: int = default_of("max_file_bytes")
    decode_timeout_s: float = default_of("decode_timeout_s")
    labels: LabelSource = field(default_factory=LabelSource)
    relabel: bool = False  # ``labels`` replace the labels set over HTTP (the page)
    scan: ScanOptions = field(default_factory=ScanOptions)
    prune: bool = True
    retry_failed: bool = False
    optimize: bool = True
    optimize_every: int = 100_000  # points written between index builds during the run
    progress: str = "auto"  # bar, log, off or auto
    progress_interval_s: float = 10.0
    gpu_decode: bool = False  # decode JPEGs with nvJPEG (CUDA only; see dinoseek.gpu_decode)
    ray: RayEngine | None = None  # decode and embed on a Ray cluster (indexer.ray_engine)
    catalog_cache: Path | None = None  # a saved copy of the catalog (indexer.catalog_cache)
    regions: bool = False  # give the collection region vectors (indexer.regions)


@dataclass
class IndexSummary:
    """What a run did. ``to_dict`` is the ``--json`` output."""

    collection: str
    store: str
    model: str
    scanned: int = 0
    embedded: int = 0
    unchanged: int = 0
    duplicates: int = 0
    relabelled: int = 0
    labels_kept: int = 0  # set over HTTP, other than ``labels`` says, and kept (no relabel)
    removed: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    known_failures_skipped: int = 0
    excluded: int = 0
    links_skipped: int = 0
    points: int = 0
    catalog_source: str = "store"  # or "saved copy": where the catalog was read from
    elapsed_s: float = 0.0
    embed_elapsed_s: float = 0.0
    optimize_s: float = 0.0
    images_per_s: float = 0.0
    regions_added: int = 0  # points given region vectors after they were stored
    regions_missing: int = 0  # points left without them (their file unreadable or changed)
    interrupted: bool = False
    failures_report: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return dict(self.__dict__)


# Store operations, applied in order by the writer thread.
@dataclass(frozen=True)
class Upsert:
    """Insert or replace points."""

    points: list[PointRecord]


@dataclass(frozen=True)
class SetPayload:
    """Replace one point's payload."""

    point_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Delete points."""

    ids: list[str]


Operation = Upsert | SetPayload | Delete


class StoreWriter:
    """Applies operations on a thread, in order, through a bounded queue.

    A write that the store refuses for its data (``REFUSED_DATA``) is retried one point at a
    time; the points still refused are collected in ``rejected`` (id, reason), so that one
    bad point never ends a run. A payload update refused leaves its point stale: its id is
    also in ``stale``. Any other failure is the store's (unreachable, locked, a full disk, a
    deleted collection...): the run ends with it.

    Every ``optimize_every`` points written (0: never), it builds the index of what it wrote
    so far: a long run's collection is searchable at speed even if the run stops, and the
    build at its end covers only the last points.
    """

    REFUSED_DATA = (PointRefusedError, TypeError, ValueError)

    def __init__(
        self, store: VectorStore, collection: str, *, depth: int = 4, optimize_every: int = 0
    ) -> None:
        self.store = store
        self.collection = collection
        self.optimize_every = optimize_every
        self._written_since_optimize = 0
        self.rejected: list[tuple[str, str]] = []
        self.stale: list[str] = []
        self._queue: queue.Queue[Operation | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dinoseek-writer", daemon=True)
        self._thread.start()

    def put(self, operation: Operation) -> None:
        """Queue an operation (blocks while the queue is full); re-raise a writer failure."""
        self._raise_if_failed()
        while True:
            try:
                self._queue.put(operation, timeout=0.5)
                return
            except queue.Full:
                self._raise_if_failed()

    def close(self) -> None:
        """Apply everything queued, stop the thread, re-raise a writer failure."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            operation = self._queue.get()
            if operation is None:
                return
            if self._error is not None:
                continue  # drain without applying: the run is failing
            try:
                self._apply_isolating(operation)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc

    def _apply_isolating(self, operation: Operation) -> None:
        try:
            self._apply(operation)
        except self.REFUSED_DATA as exc:  # one refused point must not end the run
            if isinstance(operation, Delete):
                raise
            if isinstance(operation, Upsert) and len(operation.points) > 1:
                for point in operation.points:
                    self._apply_isolating(Upsert([point]))
                return
            reason = first_line(exc)
            if isinstance(operation, Upsert):
                self.rejected += [(p.id, reason) for p in operation.points]
            else:
                self.rejected.append((operation.point_id, reason))
                self.stale.append(operation.point_id)

    def _apply(self, operation: Operation) -> None:
        if isinstance(operation, Upsert):
            self.store.upsert(self.collection, operation.points)
            self._written_since_optimize += len(operation.points)
            if self.optimize_every and self._written_since_optimize >= self.optimize_every:
                self.store.optimize(self.collection)
                self._written_since_optimize = 0
        elif isinstance(operation, SetPayload):
            self.store.set_payload(self.collection, operation.point_id, operation.payload)
        else:
            self.store.delete(self.collection, operation.ids)


@dataclass
class _Pending:
    """A new point waiting for its batch to be embedded (or only written: the Ray engine
    brings its ``vector``; it brings neither for content it expected to be stored already)."""

    point_id: str
    path: str
    pixels: Pixels | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class ModelOnDemand:
    """The model of a run, loaded only once a file needs embedding: a run with nothing new
    never imports torch. Known before loading: its id and, when the collection exists, the
    collection's embedding space (``load`` checks the model against it)."""

    model_id: str
    collection_space: EmbeddingSpace | None
    load: Callable[[], ImageEmbedder]


class IndexRun:
    """One run of ``dinoseek index``: build with everything it needs, then call ``run()``."""

    def __init__(
        self,
        embedder: ImageEmbedder | ModelOnDemand,
        store: VectorStore,
        options: IndexOptions,
        *,
        stop: threading.Event | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._model = embedder
        self._embedder = None if isinstance(embedder, ModelOnDemand) else embedder
        self.store = store
        self.options = options
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.summary = IndexSummary(
            collection=options.collection, store=store.describe(), model=embedder.model_id
        )
        self.catalog = Catalog()
        self.failures: dict[str, FailureRecord] = {}
        self._batch: list[_Pending] = []
        self._embedded_ids: set[str] = set()
        self._labels_kept: set[str] = set()  # points whose label set over HTTP was kept
        self._writer: StoreWriter | None = None
        self.regions: RegionSpec | None = None

    def run(self) -> IndexSummary:
        """Scan, plan, process, flush, optimise; always returns a summary unless the store fails."""
        started = time.perf_counter()
        options = self.options
        self.store.ensure_collection(options.collection, self._space())
        self.regions = run_regions(
            self.store,
            options.collection,
            options.regions,
            lambda: self.embedder,
            ray=options.ray is not None,
        )
        token = self.store.state_token(options.collection)
        self.catalog = self._load_catalog(token)
        previous_failures = load_failures(options.failures_report)
        self._writer = StoreWriter(
            self.store,
            options.collection,
            optimize_every=options.optimize_every if options.optimize else 0,
        )
        try:
            to_process = self._scan_and_plan(previous_failures)
            embed_started = time.perf_counter()
            if to_process:
                _ = self.embedder  # loaded now: not counted in the embedding rate
                embed_started = time.perf_counter()
                self._process(to_process)
            self.summary.embed_elapsed_s = round(time.perf_counter() - embed_started, 3)
        finally:
            self._writer.close()
        if self._writer.stale:  # kept its old payload: removed, its files reported below
            self.store.delete(options.collection, self._writer.stale)
        self._report_rejected(self._writer.rejected)
        if self.regions is not None and not self.stop.is_set():
            self._add_missing_regions(self.regions)
        self.summary.interrupted = self.stop.is_set()
        mirrored = not (self.summary.interrupted or self._writer.rejected or self._writer.stale)
        write_failures(options.failures_report, self.failures.values())
        self.summary.failures_report = str(options.failures_report) if self.failures else None
        if options.optimize and not self.summary.interrupted:
            optimize_started = time.perf_counter()
            self.store.optimize(options.collection)
            self.summary.optimize_s = round(time.perf_counter() - optimize_started, 3)
        if mirrored:
            self._save_catalog(token)
        self.summary.points = self.store.count(options.collection)
        self.summary.elapsed_s = round(time.perf_counter() - started, 3)
        if self.summary.embed_elapsed_s > 0:
            rate = self.summary.embedded / self.summary.embed_elapsed_s
            self.summary.images_per_s = round(rate, 2)
        self.summary.failed = sum(self.summary.failed_by_reason.values())
        return self.summary

    def _add_missing_regions(self, spec: RegionSpec) -> None:
        """Region vectors for the stored points without them (``indexer.regions``)."""
        files = files_lacking_regions(self.store, self.options.collection, self.catalog)
        if not files:
            return
        stage = self._decode_stage([file for _, file in files])
        counts = add_missing_regions(
            files,
            stage,
            self.embedder,
            self.store,
            self.options.collection,
            spec,
            batch_size=self.batch_size,
            stop=self.stop,
        )
        self.summary.regions_added += counts.added
        self.summary.regions_missing += counts.missing

    # -- the model --------------------------------------------------------------------------

    @property
    def embedder(self) -> ImageEmbedder:
        """The model, loaded now if it was not yet."""
        if self._embedder is None:
            assert isinstance(self._model, ModelOnDemand)
            self._embedder = self._model.load()
            self.summary.model = self._embedder.model_id
        return self._embedder

    def _space(self) -> EmbeddingSpace:
        """The embedding space of the collection: the model's, or the collection's own while
        the model waits (it is checked against it when it loads)."""
        if isinstance(self._model, ModelOnDemand) and self._model.collection_space is not None:
            return self._model.collection_space
        return self.embedder.space

    @property
    def batch_size(self) -> int:
        """Images per forward pass: the option, else the model's default."""
        return self.options.batch_size or self.embedder.default_batch_size()

    @property
    def workers(self) -> int:
        """Decode processes: the option, else the default for the model's device."""
        if self.options.workers is not None:
            return self.options.workers
        return default_decode_workers(self.embedder.device_type, available_cores())

    # -- catalog ----------------------------------------------------------------------------

    def _load_catalog(self, token: str | None) -> Catalog:
        """The saved copy if it is of the collection's present state, else the store's
        payloads."""
        path = self.options.catalog_cache
        saved = load_catalog(path, token) if path is not None else None
        if saved is not None:
            self.summary.catalog_source = "saved copy"
            return saved
        return Catalog.load(self.store, self.options.collection)

    def _save_catalog(self, token_before: str | None) -> None:
        """Save the catalog as the collection's state now: it mirrors every write of a run
        that was neither interrupted nor refused a point."""
        path = self.options.catalog_cache
        token = self.store.state_token(self.options.collection)
        if path is None or token is None:
            return
        if token == token_before and self.summary.catalog_source == "saved copy":
            return  # nothing written, and the copy is already of this state
        try:
            save_catalog(path, token, self.catalog)
        except (OSError, ValueError) as exc:  # a full disk; a name that cannot be encoded
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.summary.warnings.append(
                f"could not save the catalog to {path} ({reason}); the next run reads it "
                "from the collection instead"
            )

    # -- plan -------------------------------------------------------------------------------

    def _scan_and_plan(self, previous_failures: dict[str, FailureRecord]) -> list[ScannedFile]:
        """Plan each file as the scan finds it (an unchanged file is kept only as its path,
        the catalog's own string), then relabel and prune; the files to process."""
        counts = ScanCounts()
        seen: set[str] = set()
        roots_with_files: set[str] = set()
        problems: list[ScanProblem] = []
        to_process: list[ScannedFile] = []
        relabelled: set[str] = set()
        for item in scan(self.options.roots, self.options.scan, counts):
            if isinstance(item, ScanProblem):
                problems.append(item)
                continue
            self.summary.scanned += 1
            roots_with_files.add(item.root)
            seen.add(self._plan_file(item, previous_failures, relabelled, to_process))
        self.summary.excluded = counts.excluded
        self.summary.links_skipped = counts.links_skipped
        for problem in problems:
            self._record_failure(str(problem.path), "unreadable_folder", problem.message, None)
        for point_id in sorted(relabelled):
            self._put(SetPayload(point_id, build_payload(self.catalog.points[point_id])))
        self.summary.relabelled = len(relabelled)
        self.summary.labels_kept = len(self._labels_kept - relabelled)
        if self.options.prune:
            self._prune(seen, roots_with_files, problems)
        return to_process

    def _plan_file(
        self,
        file: ScannedFile,
        previous_failures: dict[str, FailureRecord],
        relabelled: set[str],
        to_process: list[ScannedFile],
    ) -> str:
        """Skip ``file`` if unchanged (relabelling it if its label changed) or failed before,
        else add it to ``to_process``; its path."""
        path = file.path
        entry = self.catalog.unchanged(path, file.size, file.mtime_ns)
        if entry is not None:
            self.summary.unchanged += 1
            label = self.options.labels.label_for(path, file.relative_path)
            self._relabel(path, entry, label, relabelled)
            return entry.path
        known = previous_failures.get(path)
        if (
            known is not None
            and not self.options.retry_failed
            and (known.size, known.mtime_ns) == (file.size, file.mtime_ns)
        ):
            self.failures[path] = known
            self.summary.known_failures_skipped += 1
        elif not is_utf8(path):
            self._record_failure(path, "file_name_not_utf8", _not_utf8_message(path), file)
        else:
            to_process.append(file)
        return path

    def _relabel(
        self, path: str, entry: FileEntry, label: str | None, relabelled: set[str]
    ) -> None:
        """Give an unchanged file the label of this run. A point labelled over HTTP keeps
        that label (and its files theirs) unless the run relabels."""
        (point_id,) = self.catalog.owners(path)
        point = self.catalog.points[point_id]
        if point.api_label is not None:
            if not self.options.relabel:
                if self.options.labels.gives_labels and label != point.api_label.label:
                    self._labels_kept.add(point_id)
                return
            point.api_label = None
            relabelled.add(point_id)
        if label != entry.label:
            self.catalog.set_label(point_id, path, label)
            relabelled.add(point_id)

    def _prune(
        self, seen: set[str], roots_with_files: set[str], problems: list[ScanProblem]
    ) -> None:
        """Forget files that vanished from a scanned root (never under an unreadable folder,
        never all of a root that now looks empty: that is more likely an unmounted disk)."""
        blocked = [str(p.path) + os.sep for p in problems]
        for root in self.options.roots:
            root_text = os.path.abspath(root)
            prefix = root_text + os.sep
            recorded = [p for p in self.catalog.paths() if p.startswith(prefix)]
            vanished = [
                p for p in recorded if p not in seen and not any(p.startswith(b) for b in blocked)
            ]
            if not vanished:
                continue
            if root_text not in roots_with_files:
                self.summary.warnings.append(
                    f"{root_text} holds no images now but {len(recorded)} indexed files were "
                    "under it; nothing was removed (is a disk unmounted?). Pass --no-prune to "
                    "silence this, or start over with `dinoseek collection delete "
                    f"{self.options.collection}`"
                )
                continue
            for path in sorted(vanished):
                self._forget_path(path)
                self.summary.removed += 1

    # -- process ----------------------------------------------------------------------------

    def _process(self, files: list[ScannedFile]) -> None:
        options = self.options
        pool = self._decode_stage(files)
        batch_size = self.batch_size
        progress = Progress(
            len(files),
            description="indexing",
            mode=options.progress,
            interval_s=options.progress_interval_s,
        )
        try:
            for file, result in pool.results(files, self.stop):
                if isinstance(result, FailedFile):
                    self._forget_path(file.path)
                    retried = result.code in RETRIED_NEXT_RUN  # so not recorded with a stat
                    stat = None if retried else file
                    self._record_failure(result.path, result.code, result.message, stat)
                else:
                    self._accept(file, result)
                if len(self._batch) >= batch_size:
                    self._flush_batch()
                progress.advance()
                if self.on_progress is not None:
                    self.on_progress(progress.done)
            if not self.stop.is_set():
                self._flush_batch()
        finally:
            pool.close()
            progress.close()

    def _decode_stage(self, files: list[ScannedFile]) -> DecodePool | GpuDecodeStage | RayStage:
        options = self.options
        config = self._worker_config()
        if options.ray is not None:
            return self._ray_stage(options.ray, config, files)
        if options.gpu_decode:
            from dinoseek.gpu_decode import GpuJpegDecoder  # torch, only when asked for

            decoder = GpuJpegDecoder.create(self.embedder.preprocessing, self.embedder.device)
            if decoder is not None:
                threads = max(4, self.workers)
                return GpuDecodeStage(decoder, config, threads=threads, batch=self.batch_size)
            self.summary.warnings.append("--gpu-decode unavailable here; decoded on the CPU")
        window = max(2 * self.batch_size, 4 * self.workers)
        return DecodePool(config, self.workers, window)

    def _worker_config(self) -> WorkerConfig:
        options = self.options
        return WorkerConfig(
            self.embedder.preprocessing,
            options.max_image_pixels,
            max_file_bytes=options.max_file_bytes,
            decode_timeout_s=options.decode_timeout_s,
            follow_links=options.scan.follow_links,
        )

    def _ray_stage(
        self, engine: RayEngine, config: WorkerConfig, files: list[ScannedFile]
    ) -> RayStage:
        job = EmbedJob(
            loader=engine.loader,
            settings=engine.settings,
            model_id=self.embedder.model_id,
            write_to_server=engine.settings.qdrant_url is not None,
            collection=self.options.collection,
            cpu_threads=engine.options.cpu_threads,
        )
        labels = {f.path: self.options.labels.label_for(f.path, f.relative_path) for f in files}
        return RayStage(
            engine.options,
            job,
            config,
            known_ids=frozenset(self.catalog.points),
            labels=labels,
            batch_size=self.batch_size,
        )

    def _accept(self, file: ScannedFile, prepared: PreparedFile) -> None:
        path = file.path
        point_id = point_id_for_sha256(prepared.sha256)
        self._forget_path(path, keep=point_id)
        listed = self.catalog.points.get(point_id)
        already_listed = listed is not None and listed.has_file(path)
        entry = FileEntry(
            path=path,
            root=file.root,
            relative_path=file.relative_path,
            size=prepared.size,
            mtime_ns=prepared.mtime_ns,
            label=self.options.labels.label_for(path, file.relative_path),
        )
        indexed_at = prepared.indexed_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
        content = content_of(prepared, self.embedder.model_id, indexed_at)
        self.failures.pop(path, None)
        if self.catalog.add_file(point_id, entry, content):
            if prepared.written:  # a Ray actor wrote this very payload to the server
                self.summary.embedded += 1
                self._embedded_ids.add(point_id)
                return
            self._batch.append(_Pending(point_id, path, prepared.pixels, prepared.vector))
            return
        if already_listed:
            self.summary.unchanged += 1  # touched, same content: only the mtime is refreshed
        else:
            self.summary.duplicates += 1
        if not any(p.point_id == point_id for p in self._batch):
            self._put(SetPayload(point_id, build_payload(self.catalog.points[point_id])))

    def _forget_path(self, path: str, *, keep: str | None = None) -> None:
        updated, emptied = self.catalog.remove_path(path, keep=keep)
        pending = {p.point_id for p in self._batch}
        for point_id in updated:
            if point_id not in pending:
                self._put(SetPayload(point_id, build_payload(self.catalog.points[point_id])))
        if emptied:
            self._batch = [p for p in self._batch if p.point_id not in emptied]
            self._put(Delete(emptied))

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        records = []
        for pending, embedded in self._embed(batch):
            point = self.catalog.points.get(pending.point_id)
            if point is not None:
                payload = build_payload(point)
                records.append(
                    PointRecord(pending.point_id, embedded.vector, payload, embedded.regions)
                )
        if records:
            self._put(Upsert(records))  # one write per batch keeps the writer far ahead
            self.summary.embedded += len(records)
            self._embedded_ids.update(r.id for r in records)

    def _embed(self, batch: list[_Pending]) -> list[tuple[_Pending, Embedded]]:
        """Embed a batch (with region vectors in a run with regions); images that cannot be
        embedded are reported, not fatal (the embedder splits a batch that runs out of
        memory). Vectors already made are kept."""
        done = [(p, Embedded(p.vector)) for p in batch if p.vector is not None]
        todo = [p for p in batch if p.vector is None and self._has_pixels(p)]
        if not todo:
            return done
        pixels = self.embedder.stack([p.pixels for p in todo])
        vectors = embed_batch(self.embedder, pixels, self.regions)
        for pending, vector in zip(todo, vectors, strict=True):
            if isinstance(vector, EmbeddingError):
                self._fail_point(pending.point_id, vector.code, vector.message)
            else:
                done.append((pending, vector))
        return done

    def _has_pixels(self, pending: _Pending) -> bool:
        """Read a file again here when its content was not expected to be new (the Ray
        engine skips embedding content the collection held when the run started)."""
        if pending.pixels is not None:
            return True
        prepared = prepare_file(pending.path, self._worker_config())
        if isinstance(prepared, FailedFile) or prepared.pixels is None:
            failed = prepared if isinstance(prepared, FailedFile) else None
            message = failed.message if failed else "could not be read again"
            message = message.removeprefix(f"{pending.path}: ")
            self._fail_point(pending.point_id, failed.code if failed else "decode_error", message)
            return False
        pending.pixels = prepared.pixels
        return True

    def _report_rejected(self, rejected: list[tuple[str, str]]) -> None:
        """Points the store refused: their files are reported, and not counted as embedded."""
        for point_id, reason in rejected:
            if point_id in self._embedded_ids:
                self.summary.embedded -= 1
                self._embedded_ids.discard(point_id)
            self._fail_point(point_id, "store_refused", f"the store refused it ({reason})")

    def _fail_point(self, point_id: str, code: str, message: str) -> None:
        point = self.catalog.points.get(point_id)
        if point is None:
            return
        for entry in point.file_entries():
            path = entry.path
            self.catalog.remove_path(path)
            self._record_failure(path, code, f"{path}: {message}", entry)

    def _record_failure(
        self, path: str, code: str, message: str, stat: ScannedFile | FileEntry | None
    ) -> None:
        self.failures[path] = FailureRecord(
            path=path,
            code=code,
            message=message,
            size=stat.size if stat else None,
            mtime_ns=stat.mtime_ns if stat else None,
            failed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        reasons = Counter(self.summary.failed_by_reason)
        reasons[code] += 1
        self.summary.failed_by_reason = dict(sorted(reasons.items()))

    def _put(self, operation: Operation) -> None:
        assert self._writer is not None
        self._writer.put(operation)


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (store errors can run over many lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def is_utf8(path: str) -> bool:
    """Whether ``path`` can be stored: a name that is not valid UTF-8 comes from the file
    system with surrogate escapes, which the store refuses."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """``path`` with the bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _not_utf8_message(path: str) -> str:
    return (
        f"{printable(path)}: the file name is not valid UTF-8, which the store cannot hold; "
        "rename it (for example with `convmv -f latin1 -t utf-8 --notest`), then index again"
    )


def index_folders(
    embedder: ImageEmbedder | ModelOnDemand,
    store: VectorStore,
    options: IndexOptions,
    *,
    stop: threading.Event | None = None,
) -> IndexSummary:
    """Make ``options.collection`` mirror ``options.roots``. See ``IndexRun``."""
    return IndexRun(embedder, store, options, stop=stop).run()
