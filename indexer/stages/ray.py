"""The Ray engine's embedding stage, its driver side (``--engine ray``; the cluster side is
``indexer.ray_engine``).

``results(files, stop)`` runs Ray Data over the files: decode tasks, then embedding actors.
Each row comes back with its vector, written by an actor (with a Qdrant server), stored
already (content the collection held when the run started: not embedded), or failed. Results
arrive as blocks finish, not in order. A file that a worker cannot find but the driver can is
reported as ``not_on_worker``; files whose blocks are lost for good as ``worker_lost``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dinoseek.errors import ConfigError, ImageErrorCode
from dinoseek.scan import ScannedFile
from dinoseek.store import point_id_for_sha256
from indexer.catalog import LabelSource
from indexer.ray_engine import (
    DECODE_CPUS,
    NOT_ON_WORKER,
    WORKER_LOST,
    EmbedActor,
    EmbedJob,
    RayEngine,
    decode_batch,
    facts_of_row,
    import_ray,
)
from indexer.regions import Embedded
from indexer.stages.base import (
    EmbeddedFile,
    Model,
    StageResult,
    StoredContent,
    WrittenFile,
    embed_again,
)
from indexer.workers import FailedFile

if TYPE_CHECKING:
    from ray.data import Dataset

log = logging.getLogger(__name__)


class RayStage:
    """The embedding stage on a Ray cluster (module doc)."""

    def __init__(
        self, engine: RayEngine, model: Model, *, collection: str, labels: LabelSource
    ) -> None:
        self.options = engine.options
        self.model = model
        self.config = model.decode
        self.batch_size = model.batch_size
        self.labels = labels
        self.job = EmbedJob(
            loader=engine.loader,
            settings=engine.settings,
            model_id=model.embedder.model_id,
            write_to_server=engine.settings.qdrant_url is not None,
            collection=collection,
            cpu_threads=engine.options.cpu_threads,
        )
        self._ray = import_ray()
        self._connected = False

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, StageResult]]:
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
    ) -> Iterator[tuple[ScannedFile, StageResult]]:
        by_path = {f.path: f for f in files}
        pending = set(by_path)
        known_ids = frozenset(self.model.stored)  # the decode tasks skip their pixels
        batches = self._dataset(files, known_ids).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=2
        )
        try:
            for batch in batches:
                for result in results_of(batch):
                    if result.path not in pending:
                        continue  # a retried block's second answer
                    pending.discard(result.path)
                    yield by_path[result.path], self._still_stored(result)
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

    def _still_stored(self, result: StageResult) -> StageResult:
        """Content stored when the run started, and not any more now that the run takes the
        file (its last file changed meanwhile), is read and embedded here."""
        if not isinstance(result, StoredContent):
            return result
        if point_id_for_sha256(result.sha256) in self.model.stored:
            return result
        return embed_again(result.path, self.model)

    def _dataset(self, files: Sequence[ScannedFile], known_ids: frozenset[str]) -> Dataset:
        ray = self._ray
        rows = [
            {
                "path": f.path,
                "root": f.root,
                "relative_path": f.relative_path,
                "label": self.labels.label_for(f.path, f.relative_path) or "",
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
                fn_kwargs={"config": self.config, "known_ids": known_ids},
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


def results_of(batch: dict[str, np.ndarray]) -> list[StageResult]:
    """The rows of an embedded batch as the stage's results."""
    return [_result(batch, row) for row in range(len(batch["path"]))]


def _result(batch: dict[str, np.ndarray], row: int) -> StageResult:
    path = str(batch["path"][row])
    if not bool(batch["ok"][row]):
        code, message = str(batch["code"][row]), str(batch["message"][row])
        if code == ImageErrorCode.FILE_NOT_FOUND and os.path.exists(path):
            code, message = NOT_ON_WORKER, not_on_worker_message(path, str(batch["node"][row]))
        return FailedFile(path, code, message)
    facts = facts_of_row(batch, row).__dict__
    if batch["has_vector"][row]:
        return EmbeddedFile(**facts, embedded=Embedded(batch["vector"][row].copy()))
    if batch["written"][row]:
        return WrittenFile(**facts, indexed_at=str(batch["indexed_at"][row]))
    return StoredContent(**facts)
