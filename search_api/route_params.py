"""The parameters the HTTP routes share (FastAPI dependencies and annotated query, path and
upload types), the error responses they document, and the service they reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, File, Path, Query, Request, UploadFile

from dinoseek.labels import LabelMethod
from dinoseek.search_types import Filters, LabelRequest, NeighbourQuery
from dinoseek.settings import COLLECTION_NAME_PATTERN, validate_collection_name
from dinoseek.store import POINT_ID_PATTERN
from search_api.errors import ApiError
from search_api.schemas import ErrorBody
from search_api.service import SearchService

MAX_BATCH_IMAGES = 64

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "a malformed request body (a multipart upload that cannot be parsed)",
        401: "missing or wrong X-API-Key",
        404: "unknown collection or point",
        409: "the collection was built with another model (or has no region vectors)",
        413: "upload or image too large",
        415: "unsupported image format",
        422: "corrupt image, invalid parameters or region",
        503: "overloaded or store unreachable (see Retry-After)",
    }.items()
}


def get_service(request: Request) -> SearchService:
    """The app's service (built by the lifespan)."""
    service: SearchService = request.app.state.service
    return service


Service = Annotated[SearchService, Depends(get_service)]


# Query parameters shared by the search endpoints. The filter names are those of
# dinoseek.search_types.Filters, as on the command line (--filter root=/photos).
TopK = Annotated[int, Query(ge=1, le=1000, description="number of neighbours")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip the first N neighbours")]
Threshold = Annotated[float | None, Query(ge=-1.0, le=1.0, description="minimum cosine similarity")]
Label = Annotated[str | None, Query(description="only neighbours with this label")]
Root = Annotated[str | None, Query(description="only neighbours indexed under this folder")]
FilePath = Annotated[str | None, Query(description="only the neighbour with this file path")]
Format = Annotated[str | None, Query(description="only neighbours of this format (JPEG, PNG...)")]
Sha256 = Annotated[str | None, Query(description="only the neighbour with this content hash")]
CollapseDuplicates = Annotated[
    bool,
    Query(description="one hit per group of near-duplicates (`dinoseek dedup`): its kept image"),
]
# What makes bytes an image cannot be said in a schema; that they are not empty can.
ImageUpload = Annotated[
    UploadFile, File(description="the image", json_schema_extra={"minLength": 1})
]
QueryImages = Annotated[
    list[UploadFile],
    File(
        description=f"the query images (1 to {MAX_BATCH_IMAGES}; an empty or unusable one "
        "gets an error item)",
        json_schema_extra={"minItems": 1, "maxItems": MAX_BATCH_IMAGES},
    ),
]
# The rules below are enforced by the core (with its own error codes); the schema states them.
Collection = Annotated[
    str | None,
    Query(
        description="collection (default: the service's)",
        json_schema_extra={"pattern": COLLECTION_NAME_PATTERN.pattern},
    ),
]
WithLabels = Annotated[
    bool | None,
    Query(description="predict labels (default: yes when the collection has a probe)"),
]
LabelMethodParam = Annotated[
    LabelMethod | None,
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
    path: FilePath = None
    format: Format = None
    sha256: Sha256 = None
    collection: Collection = None
    collapse_duplicates: CollapseDuplicates = False

    def query(self) -> NeighbourQuery:
        """The core's query for these parameters."""
        filters = Filters(
            label=self.label, root=self.root, path=self.path, format=self.format, sha256=self.sha256
        )
        return NeighbourQuery(
            top_k=self.top_k,
            offset=self.offset,
            score_threshold=self.score_threshold,
            filters=filters,
            collapse_duplicates=self.collapse_duplicates,
        )


@dataclass
class Labelling:
    """How to predict labels (a FastAPI dependency)."""

    with_labels: WithLabels = None
    label_method: LabelMethodParam = None
    probe: ProbeName = None

    def request(self) -> LabelRequest:
        """The core's label request."""
        return LabelRequest(
            with_labels=self.with_labels, method=self.label_method, probe=self.probe
        )


def collection_of(service: SearchService, collection: str | None) -> str:
    """The collection a request names (the service's by default), checked."""
    try:
        return validate_collection_name(
            service.settings.collection if collection is None else collection
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


PointId = Annotated[
    str,
    Path(
        description="a point id (a UUID), as returned by search",
        json_schema_extra={"format": "uuid", "pattern": POINT_ID_PATTERN.pattern},
    ),
]
