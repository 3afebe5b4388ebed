"""Pydantic models of the HTTP API: what each endpoint returns, with OpenAPI examples.

Results and labels are the core's own types (``dinoseek.search_types.Neighbour``,
``dinoseek.labels.PredictedLabel``): the CLI, the API and the client that goes through a
running server (``search_api.client``) all speak them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dinoseek.correspondence import PatchPair
from dinoseek.labels import PredictedLabel
from dinoseek.regions import Box
from dinoseek.search_types import DuplicateGroupView, ListedPoint, NearDuplicate, Neighbour

EXAMPLE_ID = "6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"
EXAMPLE_PAYLOAD: dict[str, Any] = {
    "path": "/photos/cats/tabby.jpg",
    "paths": ["/photos/cats/tabby.jpg"],
    "root": "/photos",
    "label": "cats",
    "width": 500,
    "height": 375,
    "format": "JPEG",
    "sha256": "9f2c...",
}


# Present only when the query is already there.
NEAR_DUPLICATE: Any = Field(
    None,
    exclude_if=lambda value: value is None,
    description="present when the collection's most similar point is at or above the "
    "duplicate threshold (that of the collection's last `dinoseek dedup`, else "
    "DINOSEEK_DUPLICATE_THRESHOLD): the image is already there",
)


class ErrorDetail(BaseModel):
    """``code`` is machine-readable; ``message`` says what went wrong and what to do."""

    code: str = Field(examples=["corrupt_image"])
    message: str = Field(examples=["upload.jpg: image data is corrupt"])


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class Timings(BaseModel):
    """Milliseconds spent in each stage of the request."""

    decode: float | None = None
    embed: float | None = None
    search: float | None = None
    total: float


class SearchResponse(BaseModel):
    """Neighbours of one query image, and its predicted labels when asked (or when the
    collection has a probe)."""

    model: str = Field(examples=["facebook/dinov2-base"])
    collection: str = Field(examples=["images"])
    timings_ms: Timings
    results: list[Neighbour]
    labels: list[PredictedLabel] | None = None
    near_duplicate: NearDuplicate | None = NEAR_DUPLICATE


class MatchedRegions(BaseModel):
    """The pair of region windows (2x2, 3x3 and 4x4 grids) that match best as a whole: a box of
    each original image (None where the window lies in the padding of a tiny image)."""

    a: Box | None
    b: Box | None
    score: float


class MatchResponse(BaseModel):
    """Why two images match: their corresponding patches (mutual nearest neighbours of their
    patch tokens), strongest first, positions as fractions of each original image; ``a`` is
    the upload in ``POST /points/{b}/match``."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "collection": "images",
                "a": EXAMPLE_ID,
                "b": "0c0f5a52-8f3e-5e1b-a7d2-6f54d7b4c0e9",
                "pairs": [
                    {"a": {"x": 0.12, "y": 0.40}, "b": {"x": 0.55, "y": 0.31}, "score": 0.83}
                ],
                "regions": {
                    "a": {"x": 0.0, "y": 0.33, "w": 0.44, "h": 0.33},
                    "b": {"x": 0.42, "y": 0.17, "w": 0.33, "h": 0.44},
                    "score": 0.91,
                },
                "timings_ms": {"decode": 4.1, "embed": 38.0, "total": 45.2},
            }
        }
    )

    collection: str
    a: str | None
    b: str
    pairs: list[PatchPair]
    regions: MatchedRegions
    timings_ms: Timings


class ClassifyResponse(BaseModel):
    """Predicted labels only."""

    model: str
    collection: str
    timings_ms: Timings
    labels: list[PredictedLabel]


class ProbeSummary(BaseModel):
    """A trained probe of the collection."""

    name: str
    classes: list[str]
    accuracy: float | None
    trained_at: str | None
    train_size: int | None
    label_field: str | None
    model_id: str | None
    min_confidence: float | None


class ProbesResponse(BaseModel):
    """The probes of a collection; ``default`` is the one used when none is named."""

    collection: str
    default: str | None
    probes: list[ProbeSummary]


class BatchItem(BaseModel):
    """The result for one image of a batch: its neighbours, or why it failed."""

    index: int
    filename: str | None
    results: list[Neighbour] | None = None
    labels: list[PredictedLabel] | None = None
    near_duplicate: NearDuplicate | None = NEAR_DUPLICATE
    error: ErrorDetail | None = None


class BatchSearchResponse(BaseModel):
    """One item per uploaded image, in upload order."""

    model: str
    collection: str
    timings_ms: Timings
    items: list[BatchItem]


class SimilarResponse(BaseModel):
    """Neighbours of a stored point (the point itself excluded)."""

    collection: str
    id: str
    timings_ms: Timings
    results: list[Neighbour]


class BrowseResponse(BaseModel):
    """A page of the collection's points; ``next`` is the ``start`` of the next page."""

    collection: str
    points: list[ListedPoint]
    next: str | None


class DuplicatesResponse(BaseModel):
    """A page of the groups of near-duplicates that `dinoseek dedup` marked; ``next`` is the
    ``start`` of the next page."""

    collection: str
    groups: list[DuplicateGroupView]
    next: str | None


class PointResponse(BaseModel):
    """A stored point's payload."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"id": EXAMPLE_ID, "payload": EXAMPLE_PAYLOAD}}
    )

    id: str
    collection: str
    payload: dict[str, Any]


class EmbedResponse(BaseModel):
    """The embedding of an uploaded image, as the indexer would store it."""

    model: str
    dim: int
    vector: list[float] = Field(description="L2-normalised CLS embedding")
    patch_tokens: list[list[float]] | None = Field(
        None, description="raw patch tokens (patches x dim), when asked for"
    )
    timings_ms: Timings


class CollectionSummary(BaseModel):
    """A collection, its size and the model it was built with. ``points`` is None for an
    embedded collection that another process holds (its counts cannot be read then)."""

    name: str
    points: int | None
    indexed_vectors: int | None
    model: str | None
    dim: int | None
    regions: bool = Field(
        False, description="it holds region vectors: search by region (regions=true) works on it"
    )


class CollectionsResponse(BaseModel):
    """Every collection of the store."""

    store: str
    collections: list[CollectionSummary]


class HealthResponse(BaseModel):
    """The process is alive."""

    status: str = "ok"


class WatchInfo(BaseModel):
    """What the folder watcher beside the service is doing (``dinoseek serve --watch``):
    ``phase`` is ``starting``, ``indexing``, ``pending`` (changes seen, waiting for them to
    settle), ``idle`` or ``stopped``; ``pending`` counts the changed paths not indexed yet;
    ``last_pass`` the counts of the last pass; ``last_error`` why the last pass failed."""

    folders: list[str]
    mode: Literal["events", "polling"]
    phase: Literal["starting", "indexing", "pending", "idle", "stopped"]
    pending: int
    passes: int
    last_pass_at: str | None = None
    last_pass: dict[str, int] | None = None
    last_error: str | None = None


class ModelInput(BaseModel):
    """How the model's input is cut from an image: resized so its shortest edge is
    ``resize_shortest_edge`` (or to ``resize_to``, height and width), then centre-cropped to
    ``crop`` (height and width). What the crop leaves out the model never sees (the page
    shades it on a query image)."""

    resize_shortest_edge: int | None = None
    resize_to: list[int] | None = None
    crop: list[int] | None = None


class ReadyResponse(BaseModel):
    """The service can answer queries. When the service has an API key, a request without it
    gets ``ready`` alone: the rest says where the data lives."""

    ready: bool
    model: str | None = None
    device: str | None = None
    store: str | None = None
    collection: str | None = None
    collection_exists: bool | None = None
    points: int | None = None
    watch: WatchInfo | None = None  # with ``dinoseek serve --watch`` only
    input: ModelInput | None = None
