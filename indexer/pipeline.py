"""An index run: scan -> plan -> embedding stage -> writes.

- Plan: compare the scan with the catalog (the store's own payloads, or their saved copy),
  file by file as the scan finds them. Unchanged files (same path, size, mtime) are skipped
  without being read, and the model is loaded only if some file needs it; files that
  failed before and have not changed are skipped unless ``retry_failed``; files gone from a
  scanned root are pruned.
- Embed: the engine's stage (``indexer.stages``: local processes, GPU decode or Ray) turns
  the files to process into vectors or failures; memory stays bounded on any folder size.
- Write: the run keeps the catalog, records the failures, and hands its store operations to
  the writer thread (``indexer.writer``), which builds the index every ``optimize_every``
  points.

Every operation is idempotent and the plan is rebuilt from the store on each run, so killing
the indexer at any moment and running it again converges to the state of one clean run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.progress import Progress
from dinoseek.regions import RegionSpec
from dinoseek.runtime import batch_size_for, decode_workers_for
from dinoseek.scan import ScanCounts, ScannedFile, ScanProblem, scan
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, VectorStore, point_id_for_sha256
from indexer.catalog import Catalog, FileEntry, build_payload, content_of
from indexer.catalog_cache import load_catalog, save_catalog
from indexer.options import IndexOptions, IndexSummary, ModelOnDemand
from indexer.ray_engine import RETRIED_NEXT_RUN
from indexer.regions import Embedded, add_missing_regions, files_lacking_regions, run_regions
from indexer.report import (
    FailureRecord,
    is_utf8,
    load_failures,
    not_utf8_message,
    write_failures,
)
from indexer.stages import Engine, open_decoder, open_stage
from indexer.stages.base import EmbeddedFile, Model, StoredContent, WrittenFile
from indexer.workers import FailedFile, WorkerConfig
from indexer.writer import Delete, Operation, SetPayload, StoreWriter, Upsert

__all__ = ["IndexOptions", "IndexRun", "IndexSummary", "ModelOnDemand", "index_folders"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pending:
    """A new point waiting for its batch's write."""

    point_id: str
    embedded: Embedded


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
        model = self._stage_model()
        decoder = open_decoder(self._engine(), model, warn=self.summary.warnings.append)
        counts = add_missing_regions(
            files,
            decoder,
            self.embedder,
            self.store,
            self.options.collection,
            spec,
            batch_size=model.batch_size,
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

    def _engine(self) -> Engine:
        """The engine the options ask for, with the decode workers the runtime decides."""
        workers = decode_workers_for(self.options.workers, self.embedder)
        return Engine(workers=workers, gpu_decode=self.options.gpu_decode, ray=self.options.ray)

    def _stage_model(self) -> Model:
        """What the stage embeds with; ``stored`` is the catalog's own live set of ids."""
        options = self.options
        config = WorkerConfig(
            self.embedder.preprocessing,
            options.max_image_pixels,
            max_file_bytes=options.max_file_bytes,
            decode_timeout_s=options.decode_timeout_s,
            follow_links=options.scan.follow_links,
        )
        batch_size = batch_size_for(options.batch_size, self.embedder)
        return Model(self.embedder, self.regions, batch_size, config, self.catalog.points.keys())

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
            self._record_failure(path, "file_name_not_utf8", not_utf8_message(path), file)
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
        model = self._stage_model()
        stage = open_stage(
            self._engine(),
            model,
            collection=options.collection,
            labels=options.labels,
            warn=self.summary.warnings.append,
        )
        progress = Progress(
            len(files),
            description="indexing",
            mode=options.progress,
            interval_s=options.progress_interval_s,
        )
        try:
            for file, result in stage.results(files, self.stop):
                if isinstance(result, FailedFile):
                    self._forget_path(file.path)
                    retried = result.code in RETRIED_NEXT_RUN  # so not recorded with a stat
                    stat = None if retried else file
                    self._record_failure(result.path, result.code, result.message, stat)
                else:
                    self._accept(file, result)
                if len(self._batch) >= model.batch_size:
                    self._flush_batch()
                progress.advance()
                if self.on_progress is not None:
                    self.on_progress(progress.done)
            if not self.stop.is_set():
                self._flush_batch()
        finally:
            stage.close()
            progress.close()

    def _accept(
        self, file: ScannedFile, result: EmbeddedFile | WrittenFile | StoredContent
    ) -> None:
        path = file.path
        point_id = point_id_for_sha256(result.sha256)
        self._forget_path(path, keep=point_id)
        listed = self.catalog.points.get(point_id)
        already_listed = listed is not None and listed.has_file(path)
        entry = FileEntry(
            path=path,
            root=file.root,
            relative_path=file.relative_path,
            size=result.size,
            mtime_ns=result.mtime_ns,
            label=self.options.labels.label_for(path, file.relative_path),
        )
        indexed_at = result.indexed_at if isinstance(result, WrittenFile) else _now()
        content = content_of(result, self.embedder.model_id, indexed_at)
        self.failures.pop(path, None)
        if self.catalog.add_file(point_id, entry, content):
            if isinstance(result, WrittenFile):  # a Ray actor wrote this very payload
                self.summary.embedded += 1
                self._embedded_ids.add(point_id)
                return
            # A stage yields stored content only while its point is in the catalog.
            assert isinstance(result, EmbeddedFile), f"{path}: stored content, no point"
            self._batch.append(_Pending(point_id, result.embedded))
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
        records = []
        for pending in batch:
            point = self.catalog.points.get(pending.point_id)
            if point is not None:
                embedded = pending.embedded
                payload = build_payload(point)
                records.append(
                    PointRecord(pending.point_id, embedded.vector, payload, embedded.regions)
                )
        if records:
            self._put(Upsert(records))  # one write per batch keeps the writer far ahead
            self.summary.embedded += len(records)
            self._embedded_ids.update(r.id for r in records)

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
            failed_at=_now(),
        )
        reasons = Counter(self.summary.failed_by_reason)
        reasons[code] += 1
        self.summary.failed_by_reason = dict(sorted(reasons.items()))

    def _put(self, operation: Operation) -> None:
        assert self._writer is not None
        self._writer.put(operation)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def index_folders(
    embedder: ImageEmbedder | ModelOnDemand,
    store: VectorStore,
    options: IndexOptions,
    *,
    stop: threading.Event | None = None,
) -> IndexSummary:
    """Make ``options.collection`` mirror ``options.roots``. See ``IndexRun``."""
    return IndexRun(embedder, store, options, stop=stop).run()
