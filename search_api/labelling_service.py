"""Browsing by clusters, labelling and training, scheduled for the event loop: store calls on
the default thread pool, clustering and training on background threads of their own
(``search_api.clustering``, ``search_api.training``). The work itself is the core's
(``dinoseek.clusters``, ``dinoseek.labelling``, ``dinoseek.probe``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from dinoseek.clusters import Cluster, ClusterPlan
from dinoseek.errors import ClustersChangedError
from dinoseek.labelling import (
    UncertainPage,
    least_certain,
    predict_points,
    set_labels,
)
from dinoseek.labels import PredictedLabel
from dinoseek.probe import choose_probe
from dinoseek.search_types import ListedPoint
from dinoseek.store import StoredProbe
from search_api.clustering import ClusterCache, ClusterVersion
from search_api.service import SearchService
from search_api.training import ProbeTrainer, TrainingJob, TrainingRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterPage:
    """A cluster of one version, its children, and a page of its points."""

    version: ClusterVersion
    cluster: Cluster
    children: list[Cluster]
    members: list[ListedPoint]
    next: int | None


class LabellingService:
    """What the cluster and label routes need; built beside the search service."""

    def __init__(self, service: SearchService, *, plan: ClusterPlan | None = None) -> None:
        self.searcher = service.searcher
        self.store = service.store
        self.clusters = ClusterCache(self.searcher, plan=plan)
        self.trainer = ProbeTrainer(self.searcher)

    async def stop(self) -> None:
        """Wait for the clustering and the trainings under way."""
        await run_in_threadpool(self.clusters.stop)
        await run_in_threadpool(self.trainer.stop)

    # -- clusters -----------------------------------------------------------------------------

    async def current_clusters(self, collection: str) -> tuple[ClusterVersion | None, bool]:
        """The last clusters (None before the first) and whether new ones are coming."""
        return await run_in_threadpool(self.clusters.get, collection)

    async def cluster_page(
        self, collection: str, version: ClusterVersion, cluster_id: int, offset: int, limit: int
    ) -> ClusterPage:
        """A page of a cluster's points, read now (points deleted since are left out)."""
        tree = version.tree
        cluster = tree.cluster(cluster_id)
        ids = tree.members(cluster_id, offset, limit)

        def read() -> list[ListedPoint]:
            with self.searcher.using(collection):
                return [ListedPoint.from_stored(p) for p in self.store.get(collection, ids)]

        members = await run_in_threadpool(read)
        following = offset + len(ids) if offset + len(ids) < cluster.size else None
        children = [tree.cluster(child) for child in cluster.children]
        return ClusterPage(version, cluster, children, members, following)

    def check_version(self, version: ClusterVersion, asked: str | None) -> None:
        """``ClustersChangedError`` when ``asked`` is a version other than ``version``."""
        if asked is not None and asked != version.version:
            raise ClustersChangedError(
                f"the clusters were computed again (version {version.version}, not {asked}): "
                "their ids changed; see GET /clusters"
            )

    # -- labels -------------------------------------------------------------------------------

    async def set_labels(self, collection: str, ids: Sequence[str], label: str | None) -> int:
        """Label the points of ``ids`` (all of them, or ``PointNotFoundError``)."""

        def write() -> int:
            with self.searcher.using(collection):
                return len(set_labels(self.store, collection, ids, label))

        written = await run_in_threadpool(write)
        log.info("labelled %d points of %r as %r", written, collection, label)
        return written

    async def label_cluster(
        self, collection: str, version: ClusterVersion, cluster_id: int, label: str | None
    ) -> int:
        """Label every point of a cluster (those deleted since are skipped)."""
        cluster = version.tree.cluster(cluster_id)
        ids = version.tree.members(cluster_id, 0, cluster.size)

        def write() -> int:
            with self.searcher.using(collection):
                return len(set_labels(self.store, collection, ids, label, skip_missing=True))

        written = await run_in_threadpool(write)
        log.info(
            "labelled cluster %d (version %s, %d points) of %r as %r: %d points",
            cluster_id, version.version, cluster.size, collection, label, written,
        )  # fmt: skip
        return written

    # -- probes -------------------------------------------------------------------------------

    async def predictions(
        self, collection: str, ids: Sequence[str], probe: str | None, top_k: int
    ) -> tuple[str | None, dict[str, list[PredictedLabel]]]:
        """The probe's label of each stored point of ``ids`` (the named probe, or the
        default; no labels when the collection has no probe)."""

        def predict() -> tuple[str | None, dict[str, list[PredictedLabel]]]:
            with self.searcher.using(collection):
                chosen = self.searcher.probe_cache.get(collection, probe)
                if chosen is None:
                    return None, {}
                return chosen.name, predict_points(self.store, collection, chosen, ids, top_k)

        return await run_in_threadpool(predict)

    async def uncertain(self, collection: str, probe: str, limit: int) -> UncertainPage:
        """The unlabelled points the probe is least sure about."""

        def find() -> UncertainPage:
            with self.searcher.using(collection):
                chosen = self.searcher.probe_cache.get(collection, probe)
                assert chosen is not None, "a named probe, or ProbeNotFoundError"
                return least_certain(self.store, collection, chosen, limit)

        return await run_in_threadpool(find)

    async def train(self, collection: str, name: str, request: TrainingRequest) -> TrainingJob:
        """Start training probe ``name`` in the background."""
        return await run_in_threadpool(self.trainer.start, collection, name, request)

    async def probe_state(
        self, collection: str, name: str
    ) -> tuple[TrainingJob | None, StoredProbe | None, str | None]:
        """The last training of probe ``name`` in this service, the probe stored under that
        name, and the collection's default probe."""

        def read() -> tuple[StoredProbe | None, str | None]:
            self.searcher.check(collection)
            probes = self.searcher.probe_cache.list(collection)
            return next((p for p in probes if p.name == name), None), choose_probe(probes)

        stored, default = await run_in_threadpool(read)
        return self.trainer.job(collection, name), stored, default
