"""Pydantic models of the routes that browse by clusters, label and train
(``search_api.cluster_routes``, ``search_api.label_routes``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dinoseek.labelling import LABEL_PATTERN, MAX_LABEL_LENGTH
from dinoseek.labels import PredictedLabel
from dinoseek.search_types import ListedPoint
from dinoseek.store import POINT_ID_PATTERN
from search_api.schemas import ErrorDetail, ProbeSummary

MAX_LABEL_IDS = 1000

LabelText = (
    Annotated[
        str,
        Field(
            description=f"the label: 1 to {MAX_LABEL_LENGTH} characters, no control "
            "characters, no spaces at either end",
            max_length=MAX_LABEL_LENGTH,
            pattern=LABEL_PATTERN.pattern,
            examples=["cats"],
        ),
    ]
    | None
)  # null removes the label
PointIdText = Annotated[
    str, Field(pattern=POINT_ID_PATTERN.pattern, json_schema_extra={"format": "uuid"})
]


class LabelRequest(BaseModel):
    """One label for one point."""

    model_config = ConfigDict(extra="forbid")

    label: LabelText


class LabelPointsRequest(BaseModel):
    """One label for many points."""

    model_config = ConfigDict(extra="forbid")

    ids: list[PointIdText] = Field(min_length=1, max_length=MAX_LABEL_IDS)
    label: LabelText


class LabelClusterRequest(BaseModel):
    """One label for every point of a cluster of one version of the clusters."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="the clusters' version, from GET /clusters", max_length=64)
    label: LabelText


class LabelledResponse(BaseModel):
    """What a label write did: the label now on ``labelled`` points (marked
    ``label_source: api`` in their payloads: an index run keeps it)."""

    collection: str
    label: str | None
    labelled: int


class ClusterSummary(BaseModel):
    """A cluster: its id (valid until the next ``version``), its number of points, the ids of
    a few points that show it, and its child clusters (none for the finest)."""

    id: int
    size: int
    representatives: list[str]
    children: list[int]
    parent: int | None


class ClustersResponse(BaseModel):
    """The top-level clusters: every point of the collection (when ``computed_at``) is in
    exactly one. ``recomputing``: a new version is on its way (the collection changed)."""

    collection: str
    version: str
    computed_at: str
    points: int = Field(description="the points clustered")
    sample: int = Field(description="the points the centroids were fitted on")
    levels: list[int] = Field(description="clusters asked for per level, finest first")
    recomputing: bool
    clusters: list[ClusterSummary]


class ClusterResponse(BaseModel):
    """A cluster, its child clusters, and a page of its points (most central first, leaf by
    leaf); ``next`` is the ``offset`` of the next page."""

    collection: str
    version: str
    cluster: ClusterSummary
    children: list[ClusterSummary]
    members: list[ListedPoint]
    offset: int
    next: int | None


class ClustersPending(BaseModel):
    """The first clusters of a collection are being computed: ask again shortly."""

    collection: str
    status: Literal["computing"] = "computing"
    message: str


class PointPrediction(BaseModel):
    """A probe's labels of a stored point."""

    id: str
    labels: list[PredictedLabel]


class PredictionsResponse(BaseModel):
    """The probe's labels of the points asked for that exist (none without a probe)."""

    collection: str
    probe: str | None
    predictions: list[PointPrediction]


class UncertainPoint(BaseModel):
    """An unlabelled point and how unsure the probe is: ``margin`` is its top probability
    minus the second (0: a toss-up)."""

    point: ListedPoint
    margin: float
    predicted: list[PredictedLabel]


class UncertainResponse(BaseModel):
    """The points to label next, least certain first, chosen among ``candidates`` unlabelled
    points (a random sample of them when there are more than that)."""

    collection: str
    probe: str
    candidates: int
    points: list[UncertainPoint]


class TrainRequest(BaseModel):
    """How to train (``dinoseek probe train``'s options); the labels are the payloads'
    ``label``."""

    model_config = ConfigDict(extra="forbid")

    holdout: float = Field(
        default=0.2, ge=0.05, le=0.5, description="fraction of each class kept out, to measure"
    )
    min_per_class: int = Field(
        default=5, ge=2, le=100_000, description="classes with fewer labelled points are left out"
    )
    min_confidence: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="predictions below this probability become 'unknown'",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class TrainingStarted(BaseModel):
    """A training started in the background: follow it with ``GET /probes/{name}``."""

    probe: str
    collection: str
    status: Literal["training"] = "training"


class ProbeStatus(BaseModel):
    """A probe: whether it is training, ready or failed (``error`` says why), and the probe
    served under this name, with the report of its training (held-out accuracy overall and
    per class, the confusion matrix), while there is one."""

    collection: str
    name: str
    status: Literal["training", "ready", "failed"]
    started_at: str | None = Field(None, description="of the last training in this service")
    finished_at: str | None = None
    error: ErrorDetail | None = None
    probe: ProbeSummary | None = None
    report: dict[str, Any] | None = None
