"""HTTP routes. Every handler is thin: parse, call the service, shape the response."""

from __future__ import annotations

import asyncio
import hmac
import mimetypes
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Header, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from dinoseek.errors import DinoseekError, StoreError
from dinoseek.labelling import LabelPrediction, choose_probe
from dinoseek.settings import validate_collection_name
from dinoseek.store import SearchHit, SearchQuery
from search_api.batching import OverloadedError
from search_api.errors import RETRY_AFTER_S, ApiError
from search_api.schemas import (
    BatchItem,
    BatchSearchResponse,
    ClassifyResponse,
    CollectionsResponse,
    CollectionSummary,
    EmbedResponse,
    ErrorBody,
    ErrorDetail,
    HealthResponse,
    LabelOut,
    PointResponse,
    ProbesResponse,
    ProbeSummary,
    ReadyResponse,
    SearchResponse,
    SearchResult,
    SimilarResponse,
    Timings,
)
from search_api.service import SearchService, StageClock

MAX_BATCH_IMAGES = 64

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "missing or wrong X-API-Key",
        404: "unknown collection or point",
        409: "the collection was built with another model",
        413: "upload or image too large",
        415: "unsupported image format",
        422: "corrupt image or invalid parameters",
        503: "overloaded or store unreachable (see Retry-After)",
    }.items()
}


def get_service(request: Request) -> SearchService:
    """The app's service (built by the lifespan)."""
    service: SearchService = request.app.state.service
    return service


Service = Annotated[SearchService, Depends(get_service)]


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="the service's API key, if set")] = None,
) -> None:
    """Checks X-API-Key in constant time when DINOSEEK_API_KEY is set."""
    expected = get_service(request).settings.api_key
    if expected is None:
        return
    given = (x_api_key or "").encode()
    if not hmac.compare_digest(given, expected.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


open_routes = APIRouter(tags=["health"])
routes = APIRouter(dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


# Query parameters shared by the search endpoints.
TopK = Annotated[int, Query(ge=1, le=1000, description="number of neighbours")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip the first N neighbours")]
Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="minimum cosine similarity")]
Label = Annotated[str | None, Query(description="only neighbours with this label")]
Root = Annotated[str | None, Query(description="only neighbours indexed under this folder")]
Collection = Annotated[str | None, Query(description="collection (default: the service's)")]
WithLabels = Annotated[
    bool | None,
    Query(description="predict labels (default: yes when the collection has a probe)"),
]
LabelMethod = Annotated[
    Literal["probe", "knn"] | None,
    Query(
        description="probe: a trained linear probe; knn: a vote of the neighbours' labels "
        "(default: the probe when there is one, else knn)"
    ),
]
ProbeName = Annotated[
    str | None, Query(description="which probe (default: 'default', else the newest)")
]


@dataclass
class Neighbours:
    """The query parameters every neighbour search takes (a FastAPI dependency)."""

    top_k: TopK = 10
    offset: Offset = 0
    score_threshold: Threshold = None
    label: Label = None
    root: Root = None
    collection: Collection = None

    def query(self, vector: np.ndarray) -> SearchQuery:
        """The store query for ``vector`` with these parameters."""
        return SearchQuery(
            vector=vector,
            top_k=self.top_k,
            offset=self.offset,
            score_threshold=self.score_threshold,
            filters=_filters(self.label, self.root),
        )


@dataclass
class Labelling:
    """How to predict labels (a FastAPI dependency)."""

    with_labels: WithLabels = None
    label_method: LabelMethod = None
    probe: ProbeName = None


def _filters(label: str | None, root: str | None) -> dict[str, str]:
    filters = {}
    if label is not None:
        filters["label"] = label
    if root is not None:
        filters["roots"] = root
    return filters


def _labels(labels: list[LabelPrediction] | None) -> list[LabelOut] | None:
    if labels is None:
        return None
    return [
        LabelOut(label=p.label, probability=p.probability, method=p.method, probe=p.probe)
        for p in labels
    ]


async def _predict(
    service: SearchService,
    collection: str,
    vector: np.ndarray,
    hits: list[SearchHit],
    labelling: Labelling,
) -> list[LabelOut] | None:
    labels = await service.labels(
        collection,
        vector,
        hits,
        with_labels=labelling.with_labels,
        method=labelling.label_method,
        probe_name=labelling.probe,
    )
    return _labels(labels)


def _results(hits: list[SearchHit]) -> list[SearchResult]:
    return [
        SearchResult(
            id=hit.id,
            score=round(hit.score, 6),
            path=hit.payload.get("path"),
            label=hit.payload.get("label"),
            payload=hit.payload,
        )
        for hit in hits
    ]


async def _read(upload: UploadFile) -> bytes:
    return await upload.read()


def _collection(service: SearchService, collection: str | None) -> str:
    try:
        return validate_collection_name(collection or service.settings.collection)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


async def _embed(service: SearchService, upload: UploadFile, clock: StageClock) -> Any:
    query = await service.decode(await _read(upload), upload.filename or "upload", clock)
    try:
        return await service.embed(query, clock)
    except OverloadedError as exc:
        raise ApiError(503, "overloaded", str(exc), retry_after_s=RETRY_AFTER_S) from None


@routes.post("/search", response_model=SearchResponse, summary="Search with an image")
async def search(
    service: Service,
    image: Annotated[UploadFile, File(description="the query image")],
    neighbours: Annotated[Neighbours, Depends()],
    labelling: Annotated[Labelling, Depends()],
) -> SearchResponse:
    """Nearest neighbours of an uploaded image in the collection, and its predicted labels
    (by default when the collection has a probe)."""
    clock = StageClock()
    name = _collection(service, neighbours.collection)
    vector = await _embed(service, image, clock)
    hits = await service.search(name, neighbours.query(vector), clock)
    labels = await _predict(service, name, vector, hits, labelling)
    return SearchResponse(
        model=service.embedder.model_id,
        collection=name,
        timings_ms=Timings(**clock.as_dict()),
        results=_results(hits),
        labels=labels,
    )


@routes.post(
    "/search/batch", response_model=BatchSearchResponse, summary="Search with several images"
)
async def search_batch(
    service: Service,
    images: Annotated[list[UploadFile], File(description="the query images")],
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
    name = _collection(service, neighbours.collection)
    items: list[BatchItem] = []
    queries: list[SearchQuery] = []
    outcomes = await asyncio.gather(
        *(_embed(service, upload, clock) for upload in images), return_exceptions=True
    )
    for index, (upload, outcome) in enumerate(zip(images, outcomes, strict=True)):
        if isinstance(outcome, DinoseekError):
            items.append(
                BatchItem(
                    index=index,
                    filename=upload.filename,
                    error=ErrorDetail(code=outcome.code, message=outcome.message),
                )
            )
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            items.append(BatchItem(index=index, filename=upload.filename, results=[]))
            queries.append(neighbours.query(outcome))
    answered = iter(zip(queries, await service.search_many(name, queries, clock), strict=True))
    for item in items:
        if item.error is None:
            query, hits = next(answered)
            item.results = _results(hits)
            item.labels = await _predict(service, name, query.vector, hits, labelling)
    return BatchSearchResponse(
        model=service.embedder.model_id,
        collection=name,
        timings_ms=Timings(**clock.as_dict()),
        items=items,
    )


PointId = Annotated[str, Path(description="a point id, as returned by search")]


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
    name = _collection(service, neighbours.collection)
    hits = await service.similar(
        name,
        point_id,
        clock,
        top_k=neighbours.top_k,
        offset=neighbours.offset,
        score_threshold=neighbours.score_threshold,
        filters=_filters(neighbours.label, neighbours.root),
    )
    return SimilarResponse(
        collection=name, id=point_id, timings_ms=Timings(**clock.as_dict()), results=_results(hits)
    )


@routes.get("/points/{point_id}", response_model=PointResponse, summary="A stored point")
async def point(
    service: Service, point_id: PointId, collection: Collection = None
) -> PointResponse:
    """The payload stored for a point."""
    name = _collection(service, collection)
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
)
async def point_image(
    service: Service,
    point_id: PointId,
    size: Annotated[int | None, Query(ge=16, le=2048, description="thumbnail size")] = None,
    collection: Collection = None,
) -> Response:
    """The file behind a point, found by id only (never by a path from the request)."""
    name = _collection(service, collection)
    stored = await service.point(name, point_id)
    path = await service.image_file(stored)
    if size is None:
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)
    return Response(
        await service.thumbnail(path, size),
        media_type="image/jpeg",
        headers={"Cache-Control": "max-age=3600"},
    )


@routes.post("/embed", response_model=EmbedResponse, summary="Embed an image")
async def embed(
    service: Service,
    image: Annotated[UploadFile, File(description="the image")],
    patch_tokens: Annotated[bool, Query(description="also return the patch tokens")] = False,
) -> EmbedResponse:
    """The vector the indexer would store for this image (and its patch tokens on request)."""
    clock = StageClock()
    if not patch_tokens:
        vector = await _embed(service, image, clock)
        return EmbedResponse(
            model=service.embedder.model_id,
            dim=service.embedder.dim,
            vector=vector.tolist(),
            patch_tokens=None,
            timings_ms=Timings(**clock.as_dict()),
        )
    query = await service.decode(await _read(image), image.filename or "upload", clock)
    result = await service.embed_with_patches(query, clock)
    return EmbedResponse(
        model=service.embedder.model_id,
        dim=service.embedder.dim,
        vector=result.cls[0].tolist(),
        patch_tokens=result.patch_tokens[0].tolist(),
        timings_ms=Timings(**clock.as_dict()),
    )


@routes.post("/classify", response_model=ClassifyResponse, summary="Labels of an image")
async def classify(
    service: Service,
    image: Annotated[UploadFile, File(description="the image")],
    label_method: LabelMethod = None,
    probe: ProbeName = None,
    top_k: Annotated[int, Query(ge=1, le=1000, description="neighbours that vote (knn)")] = 10,
    labels: Annotated[int, Query(ge=1, le=100, description="labels to return")] = 5,
    collection: Collection = None,
) -> ClassifyResponse:
    """Predicted labels only: the collection's probe, or a kNN vote when it has none."""
    clock = StageClock()
    name = _collection(service, collection)
    vector = await _embed(service, image, clock)
    hits: list[SearchHit] = []
    if label_method != "probe":
        hits = await service.search(name, SearchQuery(vector=vector, top_k=top_k), clock)
    predicted = await service.labels(
        name, vector, hits, with_labels=True, method=label_method, probe_name=probe, top_k=labels
    )
    return ClassifyResponse(
        model=service.embedder.model_id,
        collection=name,
        timings_ms=Timings(**clock.as_dict()),
        labels=_labels(predicted) or [],
    )


@routes.get("/probes", response_model=ProbesResponse, summary="Trained probes")
async def probes(service: Service, collection: Collection = None) -> ProbesResponse:
    """The linear probes trained on the collection (`dinoseek probe train`)."""
    name = _collection(service, collection)
    stored = await service.list_probes(name)
    return ProbesResponse(
        collection=name,
        default=choose_probe(stored),
        probes=[
            ProbeSummary(
                name=p.name,
                classes=list(p.info.get("classes", [])),
                accuracy=p.info.get("accuracy"),
                trained_at=p.info.get("trained_at"),
                train_size=p.info.get("train_size"),
                label_field=p.info.get("label_field"),
                model_id=p.info.get("model_id"),
                min_confidence=p.info.get("min_confidence"),
            )
            for p in stored
        ],
    )


@routes.get("/collections", response_model=CollectionsResponse, summary="Collections")
async def collections(service: Service) -> CollectionsResponse:
    """Every collection: its size and the model it was built with."""
    infos = await service.collections()
    return CollectionsResponse(
        store=service.store.describe(),
        collections=[
            CollectionSummary(
                name=info.name,
                points=info.points,
                indexed_vectors=info.indexed_vectors,
                model=info.space.model_id if info.space else None,
                dim=info.space.dim if info.space else None,
            )
            for info in infos
        ],
    )


@routes.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(service: Service) -> Response:
    """Request latency by route and status, time per stage, batch sizes, queue depth."""
    service.metrics.queue_depth.set(service.batcher.queue_depth)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@open_routes.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """The process is alive (no check of the model or the store)."""
    return HealthResponse()


@open_routes.get(
    "/ready",
    response_model=ReadyResponse,
    summary="Readiness",
    responses={503: {"model": ErrorBody, "description": "not ready"}},
)
async def ready(request: Request) -> ReadyResponse:
    """Model loaded and warmed up, store reachable, collection compatible."""
    service: SearchService | None = getattr(request.app.state, "service", None)
    if service is None or not service.warmed_up:
        raise ApiError(503, "not_ready", "the model is still loading", retry_after_s=RETRY_AFTER_S)
    try:
        state = await service._in_thread(service.ready_state)
    except StoreError as exc:
        raise ApiError(503, "store_unavailable", exc.message, retry_after_s=RETRY_AFTER_S) from None
    return ReadyResponse(**state)
