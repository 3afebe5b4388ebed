"""Probes trained by the service, in the background, from the collection's labels now.

The training and calibration are ``dinoseek probe train``'s (``train_collection_probe``). One
training at a time per probe name, at most ``MAX_TRAININGS`` at once in all; the probe is
stored when it is ready, and the service's probe cache is emptied for its collection then, so
the next search or ``/classify`` uses it: until then the previous probe of that name (if any)
is served, never a probe half-written.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Literal

from dinoseek.errors import DinoseekError
from dinoseek.probe.collection import train_collection_probe
from dinoseek.search import Searcher
from search_api.errors import RETRY_AFTER_S, ApiError

log = logging.getLogger(__name__)

MAX_TRAININGS = 2
MAX_JOBS_KEPT = 256
TrainingStatus = Literal["training", "ready", "failed"]


@dataclass(frozen=True)
class TrainingRequest:
    """What ``POST /probes/{name}/train`` asks for (``dinoseek probe train``'s options)."""

    holdout: float = 0.2
    min_per_class: int = 5
    min_confidence: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class TrainingJob:
    """A training the service ran or runs: its status, when, and why it failed."""

    collection: str
    name: str
    status: TrainingStatus
    started_at: str
    finished_at: str | None = None
    error_code: str | None = None
    error_message: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ProbeTrainer:
    """Runs trainings on background threads and remembers the last of each probe."""

    def __init__(
        self, searcher: Searcher, *, train: Callable[..., object] = train_collection_probe
    ) -> None:
        self.searcher = searcher
        self._train = train
        self._pool = ThreadPoolExecutor(max_workers=MAX_TRAININGS, thread_name_prefix="train")
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple[str, str], TrainingJob] = OrderedDict()

    def start(self, collection: str, name: str, request: TrainingRequest) -> TrainingJob:
        """Start training probe ``name`` of ``collection``: 409 while it trains already, 429
        (with Retry-After) while ``MAX_TRAININGS`` others run."""
        self.searcher.check(collection)
        key = (collection, name)
        with self._lock:
            running = [job for job in self._jobs.values() if job.status == "training"]
            mine = self._jobs.get(key)
            if mine is not None and mine.status == "training":
                raise ApiError(
                    409,
                    "probe_training",
                    f"probe {name!r} is training already (since {mine.started_at}); "
                    f"GET /probes/{name} says when it is ready",
                )
            if len(running) >= MAX_TRAININGS:
                raise ApiError(
                    429,
                    "too_many_trainings",
                    f"{len(running)} probes are training (at most {MAX_TRAININGS} at once); "
                    "try again when one is ready",
                    retry_after_s=RETRY_AFTER_S,
                )
            job = TrainingJob(collection, name, "training", _now())
            self._jobs[key] = job
            self._jobs.move_to_end(key)
            self._forget_old()
        log.info("training probe %r of %r: %s", name, collection, request)
        self._pool.submit(self._run, job, request)
        return job

    def job(self, collection: str, name: str) -> TrainingJob | None:
        """The last training of this probe in this service, if any."""
        with self._lock:
            return self._jobs.get((collection, name))

    def _run(self, job: TrainingJob, request: TrainingRequest) -> None:
        try:
            with self.searcher.using(job.collection):
                self._train(
                    self.searcher.store,
                    job.collection,
                    name=job.name,
                    holdout=request.holdout,
                    min_per_class=request.min_per_class,
                    min_confidence=request.min_confidence,
                    seed=request.seed,
                )
        except DinoseekError as error:
            log.warning("training probe %r failed: %s", job.name, error.message)
            self._finish(job, "failed", error.code, error.message)
            return
        except Exception:
            log.exception("training probe %r failed", job.name)
            self._finish(job, "failed", "internal_error", "training failed; see the server log")
            return
        self.searcher.probe_cache.invalidate(job.collection)  # used from the next query on
        log.info("probe %r of %r is ready", job.name, job.collection)
        self._finish(job, "ready", None, None)

    def _finish(self, job: TrainingJob, status: TrainingStatus, code: str | None,
                message: str | None) -> None:  # fmt: skip
        done = replace(job, status=status, finished_at=_now(), error_code=code,
                       error_message=message)  # fmt: skip
        with self._lock:
            self._jobs[(job.collection, job.name)] = done

    def _forget_old(self) -> None:
        """Keep at most ``MAX_JOBS_KEPT`` jobs, dropping the oldest finished ones."""
        finished = [key for key, job in self._jobs.items() if job.status != "training"]
        for key in finished[: max(0, len(self._jobs) - MAX_JOBS_KEPT)]:
            del self._jobs[key]

    def stop(self) -> None:
        """Wait for the trainings under way (their probes are stored); drop those not started."""
        self._pool.shutdown(wait=True, cancel_futures=True)
