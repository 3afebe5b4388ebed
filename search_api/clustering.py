"""The clusters the service shows, computed in the background (``dinoseek.clusters``).

Each collection's clusters carry a ``version``: cluster ids hold until the next one. A
version is recomputed when the collection's size has changed by ``CHANGE_FRACTION`` (at
least one point) since it was computed; the last version is served meanwhile. Before the first
one is ready there is nothing to serve (the routes answer 202). One computation runs at a
time, for every collection together, and the clusters of at most ``MAX_COLLECTIONS``
collections are kept.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from dinoseek.clusters import ClusterPlan, ClusterTree, cluster_collection
from dinoseek.errors import DinoseekError
from dinoseek.search import Searcher

log = logging.getLogger(__name__)

CHANGE_FRACTION = 0.05
MAX_COLLECTIONS = 4


@dataclass(frozen=True)
class ClusterVersion:
    """One computation's clusters: their version, when, of how many points, in how long."""

    version: str
    tree: ClusterTree
    computed_at: str
    seconds: float
    points: int  # the collection's size when the computation started


@dataclass
class _Clusters:
    """A collection's clusters: the last version, the computation running, its last error."""

    current: ClusterVersion | None = None
    running: Future[None] | None = None
    error: DinoseekError | None = None


def changed_enough(before: int, now: int) -> bool:
    """Whether a collection of ``before`` points that now has ``now`` needs new clusters."""
    return abs(now - before) >= max(1, math.ceil(CHANGE_FRACTION * before))


class ClusterCache:
    """Clusters of the collections, computed on a background thread."""

    def __init__(
        self,
        searcher: Searcher,
        *,
        plan: ClusterPlan | None = None,
        cluster: Callable[..., ClusterTree] = cluster_collection,
    ) -> None:
        self.searcher = searcher
        self.plan = plan or ClusterPlan()
        self._cluster = cluster
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clusters")
        self._lock = threading.Lock()
        self._states: OrderedDict[str, _Clusters] = OrderedDict()

    def get(self, collection: str) -> tuple[ClusterVersion | None, bool]:
        """The last clusters of ``collection`` (None before the first are ready) and whether
        new ones are being computed; starts a computation when the collection changed
        enough. Raises the error of a first computation that failed (the next call tries
        again), and the store's errors for the collection itself."""
        with self.searcher.using(collection):
            points = self.searcher.store.count(collection)
        with self._lock:
            state = self._states.setdefault(collection, _Clusters())
            self._states.move_to_end(collection)
            while len(self._states) > MAX_COLLECTIONS:
                self._states.popitem(last=False)
            if state.current is None and state.error is not None and state.running is None:
                error, state.error = state.error, None
                raise error
            stale = state.current is None or changed_enough(state.current.points, points)
            if stale and state.running is None:
                state.running = self._pool.submit(self._compute, collection, state, points)
            return state.current, state.running is not None

    def _compute(self, collection: str, state: _Clusters, points: int) -> None:
        started = time.perf_counter()
        try:
            with self.searcher.using(collection):
                tree = self._cluster(self.searcher.store, collection, self.plan)
        except DinoseekError as error:
            log.warning("clustering %r failed: %s", collection, error.message)
            with self._lock:
                state.error, state.running = error, None
            return
        except Exception:
            log.exception("clustering %r failed", collection)
            with self._lock:
                state.error = DinoseekError("clustering failed; see the server log")
                state.running = None
            return
        seconds = time.perf_counter() - started
        version = ClusterVersion(
            version=uuid.uuid4().hex[:12],
            tree=tree,
            computed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            seconds=round(seconds, 3),
            points=points,
        )
        log.info(
            "clustered %r: %d points into %d top-level clusters in %.1f s (version %s)",
            collection,
            tree.points,
            len(tree.top),
            seconds,
            version.version,
        )
        with self._lock:
            state.current, state.error, state.running = version, None, None

    def stop(self) -> None:
        """Wait for a computation under way; drop those not started."""
        self._pool.shutdown(wait=True, cancel_futures=True)
