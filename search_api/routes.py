"""HTTP routes. Every handler is thin: decode the request, call the search path, encode the
response. Admission (503 when busy), the upload limit (413) and the API key are checked in
ASGI middleware before any of this runs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, UploadFile
from fastapi.responses import Response

from dinoseek.errors import DinoseekError, StoreLockedError, StoreUnavailableError
from dinoseek.probe import choose_probe, probe_summary
from dinoseek.search import QueryBatch
from dinoseek.search_types import Filters, LabelRequest, SearchResult
from dinoseek.store import POINT_ID_PATTERN, StoredPoint
from search_api.admission import ADMITTED
from search_api.auth import has_key
from search_api.batching import OverloadedError
from search_api.errors import RETRY_AFTER_S, ApiError
from search_api.region_params import RegionBox, Regions, search_by_region
from search_api.route_params import (
    ERROR_RESPONSES,
    MAX_BATCH_IMAGES,
    Collection,
    ImageUpload,
    Label,
    Labelling,
    LabelMethodParam,
    Neighbours,
    PointId,
    ProbeName,
    QueryImages,
    Root,
    Service,
    collection_of,
)
from search_api.schemas import (
    BatchItem,
    BatchSearchResponse,
    BrowseResponse,
    ClassifyResponse,
    CollectionsResponse,
    CollectionSummary,
    DuplicatesResponse,
    EmbedResponse,
    ErrorBody,
    ErrorDetail,
    HealthResponse,
    PointResponse,
    ProbesResponse,
    ProbeSummary,
    ReadyResponse,
    SearchResponse,
    SimilarResponse,
    Timings,
)
from search_api.served_files import content_response
from search_api.service import THUMBNAIL_QUALITY, SearchService, StageClock

open_routes = APIRouter(tags=["health"])
routes = APIRouter(responses=ERROR_RESPONSES)


async def _vector(service: SearchService, upload: UploadFile, clock: StageClock) -> Any:
    prepared = await service.prepare(await upload.read(), upload.filename or "upload", clock)
    try:
        return await service.embed(prepared.pixels, clock)
    except OverloadedError as exc:
        raise ApiError(503, "overloaded", str(exc), retry_after_s=RETRY_AFTER_S) from None


@routes.post(
    "/search",
    response_model=SearchResponse,
    summary="Search with an image",
    openapi_extra=ADMITTED,
)
async def search(
    service: Service,
    image: ImageUpload,
    neighbours: Annotated[Neighbours, Depends()],
    labelling: Annotated[Labelling, Depends()],
    regions: Regions = False,
    region: RegionBox = None,
) -> SearchResponse:
    """Nearest neighbours of an uploaded image in the collection, and its predicted labels
    (by default when the collection has a probe). With `regions=true` (or a `region` box),
    the images that contain something like it, each hit with its `region`: one forward pass
    and a scan of every image's 29 region vectors."""
    clock = StageClock()
    name = collection_of(service, neighbours.collection)
    query, labels = neighbours.query(), labelling.request()
    if regions or region is not None:
        result = await search_by_region(service, image, name, region, query, labels, clock)
    else:
        vector = await _vector(service, image, clock)
        (result,) = await service.search(name, [vector], query, labels, clock)
    return SearchResponse(
        model=service.embedder.model_id,
        collection=name,
        timings_ms=Timings(**clock.as_dict()),
        results=result.neighbours,
        labels=result.labels,
        near_duplicate=result.near_duplicate,
    )


@routes.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    summary="Search with several images",
    openapi_extra=ADMITTED,
)
async def search_batch(
    service: Service,
    images: QueryImages,
    neighbours: Annotated[Neighbours, Depends()],
    labelling: Annotated[Labelling, Depends()],
) -> BatchSearchResponse:
    """One result list per image, in upload order. An image that cannot be used gets an error
    item; the others are still answered."""
    if len(images) > MAX_BATCH_IMAGES:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(images)} images in one request; at most {MAX_BATCH_IMAGES}",
        )
    clock = StageClock()
    name = collection_of(service, neighbours.collection)
    batch = QueryBatch(len(images))
    contents = [await upload.read() for upload in images]
    decoded = await asyncio.gather(
        *(
            service.prepare(data, upload.filename or "upload", clock)
            for data, upload in zip(contents, images, strict=True)
        ),
        return_exceptions=True,
    )
    ready = batch.prepared(decoded)
    vectors = batch.embedded(await service.embed_many([p.pixels for p in ready], clock))
    results = await service.search(name, vectors, neighbours.query(), labelling.request(), clock)
    return BatchSearchResponse(
        model=service.embedder.model_id,
        collection=name,
        timings_ms=Timings(**clock.as_dict()),
        items=[
            _batch_item(index, upload.filename, outcome)
            for index, (upload, outcome) in enumerate(
                zip(images, batch.searched(results), strict=True)
            )
        ],
    )


def _batch_item(
    index: int, filename: str | None, outcome: SearchResult | DinoseekError
) -> BatchItem:
    """One image's item: its neighbours and labels, or its error."""
    if isinstance(outcome, DinoseekError):
        error = ErrorDetail(code=outcome.code, message=outcome.message)
        return BatchItem(index=index, filename=filename, error=error)
    return BatchItem(
        index=index,
        filename=filename,
        results=outcome.neighbours,
        labels=outcome.labels,
        near_duplicate=outcome.near_duplicate,
    )


@routes.get(
    "/points/{point_id}/similar",
    response_model=SimilarResponse,
    summary="Neighbours of an indexed image",
)
async def similar(
    service: Service,
    point_id: PointId,
    neighbours: Annotated[Neighbours, Depends()],
) -> SimilarResponse:
    """Neighbours of an already indexed image (itself excluded), with no model call."""
    clock = StageClock()
    name = collection_of(service, neighbours.collection)
    found = await service.similar(name, point_id, neighbours.query(), clock)
    return SimilarResponse(
        collection=name, id=point_id, timings_ms=Timings(**clock.as_dict()), results=found
    )


@routes.get("/points", response_model=BrowseResponse, summary="Browse the collection")
async def browse(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=200, description="points per page")] = 24,
    start: Annotated[
        str | None,
        Query(
            description="where the page starts: a point id (a page's `next`), or `random`",
            json_schema_extra={"pattern": f"^(random|{POINT_ID_PATTERN.pattern[1:-1]})$"},
        ),
    ] = None,
    label: Label = None,
    root: Root = None,
    unlabelled: Annotated[bool, Query(description="only points without a label")] = False,
    collection: Collection = None,
) -> BrowseResponse:
    """A page of stored points in id order, which is a random sample since ids are hashes
    (`start=random`: from a random place), and where the next page starts."""
    name = collection_of(service, collection)
    filters = Filters(label=label, root=root)
    page = await service.browse(name, limit, start, filters, unlabelled=unlabelled)
    return BrowseResponse(collection=name, points=page.points, next=page.next)


@routes.get("/duplicates", response_model=DuplicatesResponse, summary="Near-duplicates")
async def duplicates(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=100, description="groups per page")] = 20,
    start: Annotated[
        str | None,
        Query(
            description="where the page starts: a page's `next`",
            json_schema_extra={"format": "uuid", "pattern": POINT_ID_PATTERN.pattern},
        ),
    ] = None,
    collection: Collection = None,
) -> DuplicatesResponse:
    """The groups of near-duplicates marked by `dinoseek dedup`: each kept image, why it is
    the one kept (`reason`, by the rule of `dinoseek dedup --keep`), and the others, a page at
    a time (largest groups are not first: the order is the kept ids')."""
    name = collection_of(service, collection)
    page = await service.duplicates(name, limit, start)
    return DuplicatesResponse(collection=name, groups=page.groups, next=page.next)


@routes.get(
    "/points/{point_id:point_id}",  # not /points/labels (search_api.route_table)
    response_model=PointResponse,
    summary="A stored point",
)
async def point(
    service: Service, point_id: PointId, collection: Collection = None
) -> PointResponse:
    """The payload stored for a point."""
    name = collection_of(service, collection)
    stored = await service.point(name, point_id)
    return PointResponse(id=stored.id, collection=name, payload=stored.payload)


@routes.get(
    "/points/{point_id}/image",
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {}, "image/*": {}},
            "description": "the indexed file, or a JPEG thumbnail",
        }
    },
    summary="The indexed image or a thumbnail",
    openapi_extra=ADMITTED,
)
async def point_image(
    request: Request,
    service: Service,
    point_id: PointId,
    size: Annotated[int | None, Query(ge=16, le=2048, description="thumbnail size")] = None,
    collection: Collection = None,
) -> Response:
    """The file behind a point, found by id only (never by a path from the request), and
    served only while its content is the one indexed (its sha256 is checked first)."""
    name = collection_of(service, collection)
    stored = await service.point(name, point_id)
    # Behind a key, shared caches must not keep a copy for other clients.
    caching = {
        "Cache-Control": "private, max-age=3600" if service.settings.api_key else "max-age=3600"
    }
    content = await service.image_file(stored)  # read and checked against the point's hash
    etag = image_etag(stored, size)
    if etag is not None:
        caching["ETag"] = etag
        if _matches(etag, request.headers.get("if-none-match", "")):
            content.close()
            return Response(status_code=304, headers=caching)
    if size is None:
        return content_response(content, headers=caching)
    thumbnail = await service.thumbnail(content, size)
    return Response(thumbnail, media_type="image/jpeg", headers=caching)


def image_etag(point: StoredPoint, size: int | None) -> str | None:
    """A strong ETag for a point's image: its content hash, and the thumbnail size."""
    sha256 = point.payload.get("sha256")
    if not isinstance(sha256, str) or not sha256.isalnum():
        return None
    kind = "file" if size is None else f"{size}q{THUMBNAIL_QUALITY}"
    return f'"{sha256[:32]}-{kind}"'


def _matches(etag: str, if_none_match: str) -> bool:
    """Whether an If-None-Match header names ``etag`` (or is ``*``)."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags or "*" in tags


@routes.post(
    "/embed", response_model=EmbedResponse, summary="Embed an image", openapi_extra=ADMITTED
)
async def embed(
    service: Service,
    image: ImageUpload,
    patch_tokens: Annotated[bool, Query(description="also return the patch tokens")] = False,
) -> EmbedResponse:
    """The vector the indexer would store for this image (and its patch tokens on request)."""
    clock = StageClock()
    if not patch_tokens:
        vector = await _vector(service, image, clock)
        return EmbedResponse(
            model=service.embedder.model_id,
            dim=service.embedder.dim,
            vector=vector.tolist(),
            patch_tokens=None,
            timings_ms=Timings(**clock.as_dict()),
        )
    prepared = await service.prepare(await image.read(), image.filename or "upload", clock)
    result = await service.embed_with_patches(prepared.pixels, clock)
    return EmbedResponse(
        model=service.embedder.model_id,
        dim=service.embedder.dim,
        vector=result.cls[0].tolist(),
        patch_tokens=result.patch_tokens[0].tolist(),
        timings_ms=Timings(**clock.as_dict()),
    )


@routes.post(
    "/embed/pca",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "the patch grid in colours, each patch as many pixels as the model "
            "input gave it",
        }
    },
    summary="What the model sees",
    openapi_extra=ADMITTED,
)
async def embed_pca(
    service: Service,
    image: ImageUpload,
    mask: Annotated[
        bool, Query(description="black out the background (first component below zero)")
    ] = False,
) -> Response:
    """The image's patch features projected on their first three principal components, as
    an RGB PNG of the patch grid (the picture of the DINOv2 paper)."""
    clock = StageClock()
    prepared = await service.prepare(await image.read(), image.filename or "upload", clock)
    result = await service.embed_with_patches(prepared.pixels, clock)
    png = await service.patch_png(result, prepared.pixels.shape[1], mask=mask)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@routes.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Labels of an image",
    openapi_extra=ADMITTED,
)
async def classify(
    service: Service,
    image: ImageUpload,
    label_method: LabelMethodParam = None,
    probe: ProbeName = None,
    top_k: Annotated[int, Query(ge=1, le=1000, description="neighbours that vote (knn)")] = 10,
    labels: Annotated[int, Query(ge=1, le=100, description="labels to return")] = 5,
    collection: Collection = None,
) -> ClassifyResponse:
    """Predicted labels only: the collection's probe, or a kNN vote when it has none."""
    clock = StageClock()
    name = collection_of(service, collection)
    vector = await _vector(service, image, clock)
    request = LabelRequest(with_labels=True, method=label_method, probe=probe, top_k=labels)
    predicted = await service.classify(name, vector, top_k, request)
    return ClassifyResponse(
        model=service.embedder.model_id,
        collection=name,
        timings_ms=Timings(**clock.as_dict()),
        labels=predicted,
    )


@routes.get("/probes", response_model=ProbesResponse, summary="Trained probes")
async def probes(service: Service, collection: Collection = None) -> ProbesResponse:
    """The linear probes trained on the collection (`dinoseek probe train`)."""
    name = collection_of(service, collection)
    stored = await service.probes(name)
    return ProbesResponse(
        collection=name,
        default=choose_probe(stored),
        probes=[ProbeSummary(**probe_summary(p)) for p in stored],
    )


@routes.get("/collections", response_model=CollectionsResponse, summary="Collections")
async def collections(service: Service) -> CollectionsResponse:
    """Every collection: its size, the model it was built with and whether it holds region
    vectors."""
    summaries = [
        CollectionSummary(
            name=status.name,
            points=status.points,
            indexed_vectors=status.indexed_vectors,
            model=status.space.model_id if status.space else None,
            dim=status.space.dim if status.space else None,
            regions=status.regions,
        )
        for status in await service.collections()
    ]
    return CollectionsResponse(store=service.store.describe(), collections=summaries)


@routes.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(service: Service) -> Response:
    """Request latency by route and status, time per stage, batch sizes, queue depth, and
    the indexed files not served because they changed (by reason)."""
    service.metrics.queue_depth.set(service.batcher.queue_depth)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@open_routes.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """The process is alive (no check of the model or the store)."""
    return HealthResponse()


@open_routes.get(
    "/ready",
    response_model=ReadyResponse,
    response_model_exclude_none=True,  # a caller without the key gets {"ready": ...} alone
    summary="Readiness",
    responses={503: {"model": ErrorBody, "description": "not ready"}},
)
async def ready(request: Request) -> ReadyResponse:
    """Model loaded and warmed up, store reachable, collection compatible."""
    service: SearchService | None = getattr(request.app.state, "service", None)
    if service is None or not service.started:
        raise ApiError(503, "not_ready", "the model is still loading", retry_after_s=RETRY_AFTER_S)
    shown = has_key(request.headers.get("x-api-key"), service.settings.api_key)
    try:
        state = await service.in_thread(service.ready_state)
    except (StoreUnavailableError, StoreLockedError) as exc:
        message = exc.message if shown else "the store is unreachable"
        raise ApiError(503, "store_unavailable", message, retry_after_s=RETRY_AFTER_S) from None
    except DinoseekError as exc:  # e.g. a collection built with another model: not ready
        message = exc.message if shown else "the collection cannot be served"
        raise ApiError(503, exc.code, message, retry_after_s=RETRY_AFTER_S) from None
    return ReadyResponse(**state) if shown else ReadyResponse(ready=state["ready"])
