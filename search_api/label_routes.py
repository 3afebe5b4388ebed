"""Routes that label points and train probes from the labels, and the probe's view of the
collection (its labels of stored points, the points it is least sure about). Writes are
declared with ``openapi_extra=WRITE`` (``search_api.writes``): they always need the key."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from dinoseek.labelling import MAX_CANDIDATES
from dinoseek.probe import probe_summary
from dinoseek.search_types import ListedPoint
from dinoseek.settings import COLLECTION_NAME_PATTERN, validate_collection_name
from dinoseek.store import POINT_ID_PATTERN
from search_api.errors import ApiError
from search_api.label_schemas import (
    LabelledResponse,
    LabelPointsRequest,
    LabelRequest,
    PointPrediction,
    PredictionsResponse,
    ProbeStatus,
    TrainingStarted,
    TrainRequest,
    UncertainPoint,
    UncertainResponse,
)
from search_api.labelling_service import LabellingService
from search_api.route_params import ERROR_RESPONSES, Collection, Service
from search_api.schemas import ErrorBody, ErrorDetail, PointResponse, ProbeSummary
from search_api.service import SearchService
from search_api.training import TrainingRequest
from search_api.writes import WRITE

MAX_PREDICTION_IDS = 200

label_routes = APIRouter(responses=ERROR_RESPONSES, tags=["labels"])

WRITE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {"model": ErrorBody, "description": "writes need the key (see the description)"}
}


def get_labelling(request: Request) -> LabellingService:
    """The app's labelling service (built by the lifespan)."""
    labelling: LabellingService = request.app.state.labelling
    return labelling


Labelling = Annotated[LabellingService, Depends(get_labelling)]
ProbeNameInPath = Annotated[
    str,
    Path(
        description="the probe's name",
        json_schema_extra={"pattern": COLLECTION_NAME_PATTERN.pattern},
    ),
]


def collection_name(service: SearchService, collection: str | None) -> str:
    """The collection a request names (the service's by default), checked."""
    try:
        return validate_collection_name(
            service.settings.collection if collection is None else collection
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def _probe_name(name: str) -> str:
    if not COLLECTION_NAME_PATTERN.match(name):
        raise ApiError(422, "invalid_request", f"invalid probe name {name!r}")
    return name


@label_routes.post(
    "/points/labels",
    response_model=LabelledResponse,
    summary="Label points",
    openapi_extra=WRITE,
    responses=WRITE_RESPONSES,
)
async def label_points(
    service: Service,
    labelling: Labelling,
    body: LabelPointsRequest,
    collection: Collection = None,
) -> LabelledResponse:
    """Give every point of `ids` the label (null: no label), marked `label_source: api` in
    their payloads: `dinoseek index` keeps such labels unless run with `--relabel`. Nothing
    is labelled if an id is not a point of the collection (404). Needs the key."""
    name = collection_name(service, collection)
    written = await labelling.set_labels(name, body.ids, body.label)
    return LabelledResponse(collection=name, label=body.label, labelled=written)


@label_routes.patch(
    "/points/{point_id:uuid}",  # only ids: PATCH /points/labels is a 405, not a bad id
    response_model=PointResponse,
    summary="Label a point",
    openapi_extra=WRITE,
    responses=WRITE_RESPONSES,
)
async def label_point(
    service: Service,
    labelling: Labelling,
    point_id: Annotated[uuid.UUID, Path(description="a point id, as returned by search")],
    body: LabelRequest,
    collection: Collection = None,
) -> PointResponse:
    """Set the point's label (null: no label), marked `label_source: api`; the payload now.
    Needs the key."""
    name = collection_name(service, collection)
    await labelling.set_labels(name, [str(point_id)], body.label)
    stored = await service.point(name, str(point_id))
    return PointResponse(id=stored.id, collection=name, payload=stored.payload)


@label_routes.get(
    "/predictions", response_model=PredictionsResponse, summary="A probe's labels of points"
)
async def predictions(
    service: Service,
    labelling: Labelling,
    ids: Annotated[
        list[str],
        Query(
            description=f"point ids (1 to {MAX_PREDICTION_IDS})",
            min_length=1,
            max_length=MAX_PREDICTION_IDS,
            json_schema_extra={
                "items": {"type": "string", "format": "uuid", "pattern": POINT_ID_PATTERN.pattern}
            },
        ),
    ],
    probe: Annotated[
        str | None, Query(description="which probe (default: 'default', else the newest)")
    ] = None,
    top_k: Annotated[int, Query(ge=1, le=20, description="labels per point")] = 1,
    collection: Collection = None,
) -> PredictionsResponse:
    """The probe's most probable labels of stored points, from their stored vectors (no image
    is read); ids of no point are left out. Without a probe, `probe` is null and there are
    no predictions."""
    name = collection_name(service, collection)
    chosen, found = await labelling.predictions(name, ids, probe, top_k)
    items = [PointPrediction(id=i, labels=labels) for i, labels in found.items()]
    return PredictionsResponse(collection=name, probe=chosen, predictions=items)


@label_routes.get(
    "/probes/{name}/uncertain",
    response_model=UncertainResponse,
    summary="Points to label next",
    description="The unlabelled points the probe is least sure about (the smallest margin "
    "between its two most probable labels), chosen among up to "
    f"{MAX_CANDIDATES:,} unlabelled points from a random place (all of them in a smaller "
    "collection).",
)
async def uncertain(
    service: Service,
    labelling: Labelling,
    name: ProbeNameInPath,
    limit: Annotated[int, Query(ge=1, le=200, description="points to return")] = 12,
    collection: Collection = None,
) -> UncertainResponse:
    """The points to label next (see the route's description)."""
    chosen_collection = collection_name(service, collection)
    page = await labelling.uncertain(chosen_collection, _probe_name(name), limit)
    return UncertainResponse(
        collection=chosen_collection,
        probe=name,
        candidates=page.candidates,
        points=[
            UncertainPoint(
                point=ListedPoint.from_stored(item.point),
                margin=item.margin,
                predicted=item.predicted,
            )
            for item in page.points
        ],
    )


@label_routes.post(
    "/probes/{name}/train",
    response_model=TrainingStarted,
    status_code=202,
    summary="Train a probe from the labels",
    openapi_extra=WRITE,
    responses={
        **WRITE_RESPONSES,
        409: {"model": ErrorBody, "description": "the probe is training already"},
        429: {"model": ErrorBody, "description": "other probes are training (see Retry-After)"},
    },
)
async def train(
    service: Service,
    labelling: Labelling,
    name: ProbeNameInPath,
    body: Annotated[TrainRequest | None, Body()] = None,
    collection: Collection = None,
) -> TrainingStarted:
    """Train probe `name` from the collection's labels now, in the background, as `dinoseek
    probe train` does (a stratified holdout measures and calibrates it). Follow it with `GET
    /probes/{name}`; once ready, searches and `/classify` use it. 409 while that probe trains
    already. Needs the key."""
    chosen_collection = collection_name(service, collection)
    options = body or TrainRequest()
    request = TrainingRequest(
        holdout=options.holdout,
        min_per_class=options.min_per_class,
        min_confidence=options.min_confidence,
        seed=options.seed,
    )
    job = await labelling.train(chosen_collection, _probe_name(name), request)
    return TrainingStarted(probe=job.name, collection=chosen_collection)


@label_routes.get("/probes/{name}", response_model=ProbeStatus, summary="A probe and its training")
async def probe_status(
    service: Service,
    labelling: Labelling,
    name: ProbeNameInPath,
    collection: Collection = None,
) -> ProbeStatus:
    """Whether the probe is training, ready or failed (and why), and the probe served under
    this name with the report of its training: held-out accuracy overall and per class, the
    confusion matrix, the examples it was trained and measured on."""
    chosen_collection = collection_name(service, collection)
    job, stored, _default = await labelling.probe_state(chosen_collection, _probe_name(name))
    if job is None and stored is None:
        raise ApiError(
            404,
            "probe_not_found",
            f"no probe {name!r} for collection {chosen_collection!r}; see GET /probes",
        )
    status = job.status if job is not None else "ready"
    error = None
    if job is not None and job.error_code is not None:
        error = ErrorDetail(code=job.error_code, message=job.error_message or "")
    report = stored.info.get("report") if stored is not None else None
    return ProbeStatus(
        collection=chosen_collection,
        name=name,
        status=status,
        started_at=job.started_at if job else None,
        finished_at=job.finished_at if job else None,
        error=error,
        probe=ProbeSummary(**probe_summary(stored)) if stored is not None else None,
        report=report if isinstance(report, dict) else None,
    )
