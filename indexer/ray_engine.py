"""``dinoseek index --engine ray``: decode and embed on a Ray cluster (Ray Data).

The driver (the ``dinoseek index`` process) scans, plans and keeps the catalog exactly as the
local engine does (``indexer.pipeline``); only the decode and embed stage differs:

- decode: CPU tasks (``map_batches`` with a function) read, hash, decode and preprocess
  files by path, so every node must see the folders at the same path (a shared file
  system). A file that a worker cannot find but the driver can is reported as
  ``not_on_worker``, with the remedy;
- embed: an actor pool (``map_batches`` with a class), each actor loading the model once:
  one actor per GPU (``num_gpus=1``), or CPU actors on a cluster without GPUs;
- writes: with a Qdrant server the actors upsert their points straight to it (the driver
  then only merges duplicates and updates payloads); with the embedded store the vectors
  stream back to the driver, its only writer.

Ray retries tasks and restarts actors whose process dies; files whose blocks are lost for
good are reported as ``worker_lost`` without their size and mtime, so the next run retries
them. Ray is an optional dependency (``pip install 'dinoseek[ray]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from dinoseek.errors import ConfigError, EmbeddingError, ImageErrorCode, PointRefusedError
from dinoseek.runtime import ModelLoader, Runtime
from dinoseek.scan import ScannedFile
from dinoseek.settings import Settings
from dinoseek.store import PointRecord, VectorStore, point_id_for_sha256
from indexer.catalog import FileEntry, PointEntry, build_payload, content_of
from indexer.workers import DECODE_TIMEOUT, FailedFile, PreparedFile, WorkerConfig, prepare_file

if TYPE_CHECKING:
    from ray.data import Dataset

log = logging.getLogger(__name__)

NOT_ON_WORKER = "not_on_worker"
WORKER_LOST = "worker_lost"
INSTALL_HINT = "install it with: pip install 'dinoseek[ray]'"
DECODE_CPUS = 0.5
RETRIED_NEXT_RUN = frozenset({NOT_ON_WORKER, WORKER_LOST})  # not the file's fault
Result = PreparedFile | FailedFile


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray engine runs.

    ``address``: a running cluster (``HOST:6379``, ``ray://HOST:10001``, ``auto``) or
    ``local`` (a Ray instance started for this run); None is Ray's default: ``RAY_ADDRESS``,
    else the cluster ``ray start`` began on this machine, else ``local``.
    ``actors``: embedding actors (None: one per GPU of the cluster, else one CPU actor).
    ``decode_batch``: files per decode task (None: the embedding batch size).
    ``cpu_threads``: torch threads of a CPU actor (None: every core of its node, as the
    local engine uses).
    """

    address: str | None = None
    actors: int | None = None
    decode_batch: int | None = None
    cpu_threads: int | None = None


@dataclass(frozen=True)
class RayEngine:
    """``--engine ray``: its options, and how the actors load the model and reach the store."""

    options: RayOptions
    loader: ModelLoader
    settings: Settings


@dataclass(frozen=True)
class EmbedJob:
    """What every embedding actor needs: how to load the model, and where to write."""

    loader: ModelLoader
    settings: Settings
    model_id: str
    write_to_server: bool
    collection: str
    cpu_threads: int | None


def import_ray() -> Any:
    """``ray``, or a ``ConfigError`` saying how to install it."""
    try:
        import ray
        import ray.data  # Ray Data comes with the extra, not with bare ray
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data ({exc}); {INSTALL_HINT}") from None
    return ray


class RayStage:
    """The decode and embed stage on Ray: ``results(files, stop)`` yields each file with a
    ``PreparedFile`` carrying its vector (or ``written`` by an actor), or a ``FailedFile``."""

    def __init__(
        self,
        options: RayOptions,
        job: EmbedJob,
        config: WorkerConfig,
        *,
        known_ids: frozenset[str],
        labels: dict[str, str | None],
        batch_size: int,
    ) -> None:
        self.options = options
        self.job = job
        self.config = config
        self.known_ids = known_ids
        self.labels = labels
        self.batch_size = batch_size
        self._ray = import_ray()
        self._connected = False

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, Result]]:
        """Run the cluster's pipeline over ``files``; results arrive as blocks finish (not in
        order). Files of blocks lost for good are reported last as ``worker_lost``."""
        if not files:
            return
        # Ray's driver prints its cluster's errors (a worker that died...) on stdout, where
        # --json promises one document: they go to stderr while Ray runs.
        with contextlib.redirect_stdout(sys.stderr):
            self._connect()
            yield from self._run(files, stop)

    def _run(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, Result]]:
        by_path = {f.path: f for f in files}
        pending = set(by_path)
        batches = self._dataset(files).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=2
        )
        try:
            for batch in batches:
                for result in results_of(batch):
                    if result.path not in pending:
                        continue  # a retried block's second answer
                    pending.discard(result.path)
                    yield by_path[result.path], result
                if stop.is_set():
                    return
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        for path in sorted(pending):
            message = (
                f"{path}: its Ray task was lost (a worker or node died more often than Ray "
                "retries); it will be tried again on the next run"
            )
            yield by_path[path], FailedFile(path, WORKER_LOST, message)

    def close(self) -> None:
        """Disconnect from Ray if this stage connected (a Ray instance it started stops; a
        cluster it joined stays up). A caller that connected first stays connected."""
        if self._connected:
            with contextlib.redirect_stdout(sys.stderr):
                self._ray.shutdown()
            self._connected = False

    # -- internals --------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        address = self.options.address
        # Worker output is already in the driver's report; Ray's own lines would be noise:
        # its notes that token authentication is on and that Ray Data's bars are off.
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        for name in ("ray._private.authentication.authentication_token_setup", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            ray.init(address=address, include_dashboard=False, **common)
            self._connected = True
        except ConnectionError as exc:
            raise ConfigError(
                f"cannot reach the Ray cluster at {address} ({exc}); start it with "
                "`ray start --head` or check --ray-address"
            ) from None
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.max_errored_blocks = -1  # a block lost for good is reported, not fatal

    def _dataset(self, files: Sequence[ScannedFile]) -> Dataset:
        ray = self._ray
        rows = [
            {
                "path": f.path,
                "root": f.root,
                "relative_path": f.relative_path,
                "label": self.labels.get(f.path) or "",
            }
            for f in files
        ]
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = self.options.actors or max(1, gpus)
        # Bookings in Ray's accounting, not limits: a CPU actor books a quarter of a CPU and
        # runs torch on every core of its node, as the local engine does; a decode task books
        # half of one. So a node of one CPU holds an actor and a decode task, and the unequal
        # bookings keep Ray from fusing the decode into the actors (they would take turns).
        booked = {"num_cpus": 0.25, **({"num_gpus": 1} if gpus else {})}
        # One block per embedding batch, decoded by one task and embedded by one actor call,
        # so that results stream back to the driver a batch at a time.
        per_block = self.options.decode_batch or self.batch_size
        blocks = max(1, -(-len(rows) // per_block))
        dataset: Dataset = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                decode_batch,
                batch_size=None,
                num_cpus=DECODE_CPUS,
                fn_kwargs={"config": self.config, "known_ids": self.known_ids},
            )
            .map_batches(
                EmbedActor,
                batch_size=self.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                fn_constructor_kwargs={"job": self.job},
                **booked,
            )
        )
        return dataset


def not_on_worker_message(path: str, node: str | None = None) -> str:
    """The error for a path that this machine sees and a Ray worker does not."""
    where = f"the Ray worker on {node}" if node else "a Ray worker"
    return (
        f"{path}: {where} cannot find it, but this machine can. Every node of the cluster "
        "must see the folders at the same path: mount them on each node (NFS, a shared "
        "volume; see docker-compose.ray.yml), then index again"
    )


# -- decode tasks ---------------------------------------------------------------------------


def decode_batch(
    batch: dict[str, np.ndarray], *, config: WorkerConfig, known_ids: frozenset[str]
) -> dict[str, np.ndarray]:
    """A Ray task: prepare each file of ``batch`` (never raises for a bad file). Files whose
    content is already a point of the collection are hashed but not embedded again."""
    height, width = config.preprocessing.output_size
    paths = [str(p) for p in batch["path"]]
    pixels = np.zeros((len(paths), height, width, 3), dtype=np.uint8)
    rows: list[dict[str, Any]] = []
    node = socket.gethostname()
    for row, path in enumerate(paths):
        result = prepare_with_deadline(path, config)
        if isinstance(result, FailedFile):
            rows.append({**_FAILED, "path": path, "code": result.code, "message": result.message})
            continue
        embed = point_id_for_sha256(result.sha256) not in known_ids
        if embed and result.pixels is not None:
            pixels[row] = np.asarray(result.pixels)
        rows.append({
            "path": path, "ok": True, "code": "", "message": "", "sha256": result.sha256,
            "size": result.size, "mtime_ns": result.mtime_ns, "width": result.width,
            "height": result.height, "format": result.format, "embed": embed,
        })  # fmt: skip
    out = {key: np.asarray([r[key] for r in rows]) for key in _FAILED}
    out.update({key: batch[key] for key in ("root", "relative_path", "label")})
    out["node"] = np.asarray([node] * len(paths))
    out["pixels"] = pixels
    return out


# The columns of a decoded row, as a file that failed has them.
_FAILED: dict[str, Any] = {
    "path": "", "ok": False, "code": "", "message": "", "sha256": "", "size": 0,
    "mtime_ns": 0, "width": 0, "height": 0, "format": "", "embed": False,
}  # fmt: skip


def prepare_with_deadline(path: str, config: WorkerConfig) -> Result:
    """``prepare_file`` on a daemon thread, given up after ``config.decode_timeout_s`` (the
    thread is left behind: a decoder stuck in C cannot be interrupted)."""
    future: Future[Result] = Future()

    def run() -> None:
        try:
            future.set_result(prepare_file(path, config))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(exc)

    threading.Thread(target=run, name="decode", daemon=True).start()
    try:
        return future.result(timeout=config.decode_timeout_s)
    except FutureTimeoutError:
        message = f"{path}: decoding took longer than {config.decode_timeout_s:g} s; skipped"
        return FailedFile(path, DECODE_TIMEOUT, message)


# -- embedding actors -----------------------------------------------------------------------


class EmbedActor:
    """A Ray actor: loads the model once, embeds the decoded rows, and (with a Qdrant
    server) writes their points itself."""

    def __init__(self, job: EmbedJob, store: VectorStore | None = None) -> None:
        """Ray gives the ``job`` only; a test may hand in the ``store`` to write to."""
        self.job = job
        self.embedder = job.loader.load(job.model_id, job.settings)
        if self.embedder.device_type == "cpu" and "torch" in sys.modules:  # a torch model
            from dinoseek.torch_embedder import use_cpu_threads

            use_cpu_threads(job.cpu_threads or os.cpu_count() or 1)
        if store is None and job.write_to_server:
            store = Runtime.open(job.settings, collection="existing", model=False).store
        self.store = store

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["path"])
        out = {key: batch[key] for key in batch if key != "pixels"}
        out["ok"] = batch["ok"].copy()
        out["code"] = batch["code"].astype(object)
        out["message"] = batch["message"].astype(object)
        out["vector"] = np.zeros((rows, self.embedder.space.dim), dtype=np.float32)
        out["has_vector"] = np.zeros(rows, dtype=bool)
        out["written"] = np.zeros(rows, dtype=bool)
        out["indexed_at"] = np.array([_now()] * rows, dtype=object)
        chosen = [row for row in range(rows) if batch["embed"][row]]
        if chosen:
            embedded = self.embedder.embed_each(
                self.embedder.stack([batch["pixels"][row] for row in chosen])
            )
            for row, vector in zip(chosen, embedded, strict=True):
                if isinstance(vector, EmbeddingError):
                    _fail(out, row, vector.code, vector.message)
                else:
                    out["vector"][row], out["has_vector"][row] = vector, True
        if self.store is not None:
            self._write(out)
        return out

    def _write(self, out: dict[str, np.ndarray]) -> None:
        """Upsert the new points with the payload of their one file (the driver merges the
        files of duplicates afterwards: its update comes after this write). Vectors written
        here do not travel back to the driver."""
        assert self.store is not None
        rows = [row for row in range(len(out["path"])) if out["has_vector"][row]]
        decoded = results_of(out)
        records = [
            PointRecord(
                _point_id(out, row), out["vector"][row], self._payload(out, row, decoded[row])
            )
            for row in rows
        ]
        if not records:
            return
        try:
            self.store.upsert(self.job.collection, records)
            done = rows
        except (PointRefusedError, TypeError, ValueError):
            done = []
            for row, record in zip(rows, records, strict=True):  # find the points it refuses
                try:
                    self.store.upsert(self.job.collection, [record])
                    done.append(row)
                except (PointRefusedError, TypeError, ValueError) as exc:
                    _fail(out, row, "store_refused", f"the store refused it ({exc})")
                    out["has_vector"][row] = False
        out["written"][done] = True
        out["has_vector"][done] = False
        out["vector"][done] = 0.0

    def _payload(self, out: dict[str, np.ndarray], row: int, decoded: Result) -> dict[str, Any]:
        assert isinstance(decoded, PreparedFile), "only rows with a vector are written"
        entry = file_entry(out, row)
        content = content_of(decoded, self.embedder.model_id, str(out["indexed_at"][row]))
        point = PointEntry(id=_point_id(out, row), files={entry.path: entry}, content=content)
        return build_payload(point)

    def __del__(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def _fail(out: dict[str, np.ndarray], row: int, code: str, message: str) -> None:
    out["ok"][row], out["code"][row] = False, code
    out["message"][row] = f"{out['path'][row]}: {message}"


def _point_id(batch: dict[str, np.ndarray], row: int) -> str:
    return point_id_for_sha256(str(batch["sha256"][row]))


def file_entry(batch: dict[str, np.ndarray], row: int) -> FileEntry:
    """The catalog entry of a decoded row."""
    return FileEntry(
        path=str(batch["path"][row]),
        root=str(batch["root"][row]),
        relative_path=str(batch["relative_path"][row]),
        size=int(batch["size"][row]),
        mtime_ns=int(batch["mtime_ns"][row]),
        label=str(batch["label"][row]) or None,
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- back on the driver ---------------------------------------------------------------------


def results_of(batch: dict[str, np.ndarray]) -> list[Result]:
    """The rows of an embedded batch as the pipeline's results."""
    return list(_results(batch))


def _results(batch: dict[str, np.ndarray]) -> Iterator[Result]:
    for row in range(len(batch["path"])):
        path = str(batch["path"][row])
        if not bool(batch["ok"][row]):
            code, message = str(batch["code"][row]), str(batch["message"][row])
            if code == ImageErrorCode.FILE_NOT_FOUND and os.path.exists(path):
                code, message = NOT_ON_WORKER, not_on_worker_message(path, str(batch["node"][row]))
            yield FailedFile(path, code, message)
            continue
        yield PreparedFile(
            path=path,
            size=int(batch["size"][row]),
            mtime_ns=int(batch["mtime_ns"][row]),
            sha256=str(batch["sha256"][row]),
            width=int(batch["width"][row]),
            height=int(batch["height"][row]),
            format=str(batch["format"][row]),
            vector=batch["vector"][row].copy() if batch["has_vector"][row] else None,
            written=bool(batch["written"][row]),
            indexed_at=str(batch["indexed_at"][row]),
        )
