"""``dinoseek index --engine ray``: decode and embed on a Ray cluster (Ray Data); this module
is what runs on the cluster, and the options.

The driver (the ``dinoseek index`` process) scans, plans and keeps the catalog exactly as the
local engine does (``indexer.pipeline``); only the embedding stage differs (its driver side:
``indexer.stages.ray``):

- decode: CPU tasks (``map_batches`` with a function) read, hash, decode and preprocess
  files by path, so every node must see the folders at the same path (a shared file
  system). A file that a worker cannot find but the driver can is reported as
  ``not_on_worker``, with the remedy;
- embed: an actor pool (``map_batches`` with a class), each actor loading the model once:
  one actor per GPU (``num_gpus=1``), or CPU actors on a cluster without GPUs;
- writes: with a Qdrant server the actors upsert their points straight to it through
  ``indexer.writer`` (the driver then only merges duplicates and updates payloads); with the
  embedded store the vectors stream back to the driver, its only writer.

Ray retries tasks and restarts actors whose process dies; files whose blocks are lost for
good are reported as ``worker_lost`` without their size and mtime, so the next run retries
them. Ray is an optional dependency (``pip install 'dinoseek[ray]'``), imported only here.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from dinoseek.errors import ConfigError, EmbeddingError
from dinoseek.runtime import ModelLoader, Runtime
from dinoseek.settings import Settings
from dinoseek.store import PointRecord, VectorStore, point_id_for_sha256
from indexer.catalog import FileEntry, PointEntry, build_payload, content_of
from indexer.workers import (
    DECODE_TIMEOUT,
    DecodedFile,
    FailedFile,
    FileFacts,
    WorkerConfig,
    prepare_file,
)
from indexer.writer import upsert_isolating

NOT_ON_WORKER = "not_on_worker"
WORKER_LOST = "worker_lost"
INSTALL_HINT = "install it with: pip install 'dinoseek[ray]'"
DECODE_CPUS = 0.5
RETRIED_NEXT_RUN = frozenset({NOT_ON_WORKER, WORKER_LOST})  # not the file's fault
Result = DecodedFile | FailedFile


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
        if embed:
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
        records = [
            PointRecord(_point_id(out, row), out["vector"][row], self._payload(out, row))
            for row in rows
        ]
        if not records:
            return
        refused = dict(upsert_isolating(self.store, self.job.collection, records))
        done = []
        for row, record in zip(rows, records, strict=True):
            if record.id in refused:
                _fail(out, row, "store_refused", f"the store refused it ({refused[record.id]})")
                out["has_vector"][row] = False
            else:
                done.append(row)
        out["written"][done] = True
        out["has_vector"][done] = False
        out["vector"][done] = 0.0

    def _payload(self, out: dict[str, np.ndarray], row: int) -> dict[str, Any]:
        entry = file_entry(out, row)
        content = content_of(
            facts_of_row(out, row), self.embedder.model_id, str(out["indexed_at"][row])
        )
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


def facts_of_row(batch: dict[str, np.ndarray], row: int) -> FileFacts:
    """The facts of a decoded row."""
    return FileFacts(
        path=str(batch["path"][row]),
        size=int(batch["size"][row]),
        mtime_ns=int(batch["mtime_ns"][row]),
        sha256=str(batch["sha256"][row]),
        width=int(batch["width"][row]),
        height=int(batch["height"][row]),
        format=str(batch["format"][row]),
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
