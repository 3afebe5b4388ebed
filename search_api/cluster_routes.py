"""Routes that browse the collection by clusters (``dinoseek.clusters``, computed in the
background by ``search_api.clustering``), and label a whole cluster."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from dinoseek.clusters import Cluster
from search_api.clustering import ClusterVersion
from search_api.errors import RETRY_AFTER_S
from search_api.label_routes import WRITE_RESPONSES, Labelling, collection_name
from search_api.label_schemas import (
    ClusterResponse,
    ClustersPending,
    ClustersResponse,
    ClusterSummary,
    LabelClusterRequest,
    LabelledResponse,
)
from search_api.labelling_service import LabellingService
from search_api.route_params import ERROR_RESPONSES, Collection, Service
from search_api.schemas import ErrorBody
from search_api.writes import WRITE

cluster_routes = APIRouter(responses=ERROR_RESPONSES, tags=["clusters"])

PENDING: dict[int | str, dict[str, object]] = {
    202: {"model": ClustersPending, "description": "the first clusters are being computed"}
}
ClusterId = Annotated[
    int, Path(ge=0, le=1_000_000, description="a cluster id of the current version")
]
Version = Annotated[
    str | None,
    Query(
        max_length=64,
        description="the version the id is of (from GET /clusters): 409 if the clusters were "
        "computed again since",
    ),
]


def summary(cluster: Cluster) -> ClusterSummary:
    """The API's view of a cluster."""
    return ClusterSummary(
        id=cluster.id,
        size=cluster.size,
        representatives=list(cluster.representatives),
        children=list(cluster.children),
        parent=cluster.parent,
    )


def pending(collection: str) -> JSONResponse:
    """202: nothing to show yet."""
    body = ClustersPending(
        collection=collection,
        message="the clusters of this collection are being computed; ask again shortly",
    )
    return JSONResponse(
        body.model_dump(), status_code=202, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


@cluster_routes.get(
    "/clusters",
    response_model=ClustersResponse,
    responses=PENDING,
    summary="The collection by clusters",
)
async def clusters(
    service: Service, labelling: Labelling, collection: Collection = None
) -> ClustersResponse | JSONResponse:
    """The top-level clusters of a hierarchical spherical k-means of the stored vectors (as
    `dinoseek curate --balanced` builds), largest first: each one's size, a few points that
    show it and its child clusters. Every point clustered is in exactly one top-level
    cluster; the ids hold until the next `version`. The clusters are computed again in the
    background when the collection's size has changed by 5% (the last version is served
    meanwhile, `recomputing` true); the first computation answers 202 until it is ready."""
    name = collection_name(service, collection)
    current, computing = await labelling.current_clusters(name)
    if current is None:
        return pending(name)
    tree = current.tree
    return ClustersResponse(
        collection=name,
        version=current.version,
        computed_at=current.computed_at,
        points=tree.points,
        sample=tree.sample,
        levels=list(tree.sizes),
        recomputing=computing,
        clusters=[summary(tree.cluster(c)) for c in tree.top],
    )


@cluster_routes.get(
    "/clusters/{cluster_id}",
    response_model=ClusterResponse,
    responses={
        **PENDING,
        409: {"model": ErrorBody, "description": "the clusters were computed again"},
    },
    summary="A cluster's points and children",
)
async def cluster(
    service: Service,
    labelling: Labelling,
    cluster_id: ClusterId,
    version: Version = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="skip the first N")] = 0,
    limit: Annotated[int, Query(ge=1, le=200, description="points per page")] = 24,
    collection: Collection = None,
) -> ClusterResponse | JSONResponse:
    """A cluster, its child clusters, and a page of its points, most central first (leaf by
    leaf for a cluster with children); `next` is the offset of the next page."""
    name = collection_name(service, collection)
    current = await _current(labelling, name, version)
    if current is None:
        return pending(name)
    page = await labelling.cluster_page(name, current, cluster_id, offset, limit)
    return ClusterResponse(
        collection=name,
        version=current.version,
        cluster=summary(page.cluster),
        children=[summary(child) for child in page.children],
        members=page.members,
        offset=offset,
        next=page.next,
    )


@cluster_routes.post(
    "/clusters/{cluster_id}/labels",
    response_model=LabelledResponse,
    responses={
        **PENDING,
        **WRITE_RESPONSES,
        409: {"model": ErrorBody, "description": "the clusters were computed again"},
    },
    summary="Label a whole cluster",
    openapi_extra=WRITE,
)
async def label_cluster(
    service: Service,
    labelling: Labelling,
    cluster_id: ClusterId,
    body: LabelClusterRequest,
    collection: Collection = None,
) -> LabelledResponse | JSONResponse:
    """Give every point of the cluster the label (null: no label), marked `label_source:
    api`; the clusters must still be of `version` (409 otherwise). Points deleted since are
    skipped. Needs the key."""
    name = collection_name(service, collection)
    current = await _current(labelling, name, body.version)
    if current is None:
        return pending(name)
    written = await labelling.label_cluster(name, current, cluster_id, body.label)
    return LabelledResponse(collection=name, label=body.label, labelled=written)


async def _current(
    labelling: LabellingService, name: str, version: str | None
) -> ClusterVersion | None:
    """The current clusters (None while the first are computed), checked against ``version``."""
    current, _ = await labelling.current_clusters(name)
    if current is not None:
        labelling.check_version(current, version)
    return current
