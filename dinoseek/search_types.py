"""What a search asks and what it answers, one shape everywhere: the CLI, the HTTP API, the
page and the client that goes through a running server speak these types.

- ``Filters``: exact matches, named the same in the CLI (``--filter root=/photos``), the HTTP
  API (``?root=/photos``) and the client;
- ``NeighbourQuery``: how many neighbours, from where, above which score;
- ``LabelRequest``: whether and how to predict labels (the policy is ``dinoseek.search``'s);
- ``Neighbour``, ``SearchResult`` and the listings: the results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from dinoseek.dedup import DUPLICATE, GROUP, ROLE
from dinoseek.errors import ConfigError
from dinoseek.labels import LabelMethod, PredictedLabel
from dinoseek.regions import Box
from dinoseek.store import SearchHit, SearchQuery, StoredPoint

# Filter names users write -> the payload field they match. ``path`` and ``root`` match any
# of a point's files, since one content can live in several.
FILTER_FIELDS: dict[str, str] = {
    "label": "label",
    "root": "roots",
    "path": "paths",
    "format": "format",
    "sha256": "sha256",
}


# Hits fetched to collapse duplicates under filters (the store's own top-k limit).
MAX_COLLAPSE_FETCH = 1000
# The nearest points of the whole collection that a kNN vote of labels is taken over.
VOTE_NEIGHBOURS = 10


@dataclass(frozen=True)
class Filters:
    """Exact-match filters on the indexed images; None means "any"."""

    label: str | None = None
    root: str | None = None
    path: str | None = None
    format: str | None = None
    sha256: str | None = None

    @classmethod
    def parse(cls, expressions: Iterable[str]) -> Filters:
        """``["label=cats", "root=/photos"]`` (``ConfigError`` naming the bad one)."""
        values: dict[str, str] = {}
        for expression in expressions:
            name, sep, wanted = expression.partition("=")
            name = name.strip()
            if not sep or name not in FILTER_FIELDS:
                raise ConfigError(
                    f"invalid filter {expression!r}: use NAME=VALUE with NAME one of "
                    f"{', '.join(FILTER_FIELDS)}"
                )
            values[name] = wanted
        return cls(**values)

    def as_params(self) -> dict[str, str]:
        """The filters that are set, by their user-facing names."""
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}

    def conditions(self) -> dict[str, str]:
        """The filters that are set, by the payload field they match."""
        return {FILTER_FIELDS[name]: value for name, value in self.as_params().items()}


@dataclass(frozen=True)
class NeighbourQuery:
    """What neighbours to return."""

    top_k: int = 10
    offset: int = 0
    score_threshold: float | None = None
    filters: Filters = field(default_factory=Filters)
    collapse_duplicates: bool = False

    @property
    def collapses_hits(self) -> bool:
        """Collapsing under filters happens on the hits: a group's kept point may not match
        the filters, and then the group's best matching member stands for it."""
        return self.collapse_duplicates and bool(self.filters.conditions())

    def for_vector(self, vector: np.ndarray, *, exclude: Sequence[str] = ()) -> SearchQuery:
        """The store query for ``vector``."""
        if self.collapses_hits:  # more hits, collapsed and paged by ``shape``
            return SearchQuery(
                vector=vector,
                top_k=min(MAX_COLLAPSE_FETCH, (self.offset + self.top_k) * 3),
                score_threshold=self.score_threshold,
                filters=self.filters.conditions(),
                exclude_ids=tuple(exclude),
            )
        return SearchQuery(
            vector=vector,
            top_k=self.top_k,
            offset=self.offset,
            score_threshold=self.score_threshold,
            filters=self.filters.conditions(),
            exclude_ids=tuple(exclude),
            # One hit per group of near-duplicates: its kept point (``dinoseek dedup``).
            exclude={ROLE: DUPLICATE} if self.collapse_duplicates else {},
        )

    @property
    def shows_best_hit(self) -> bool:
        """Whether the first hit is the collection's most similar point (nothing skipped,
        filtered out or collapsed)."""
        return (
            not (self.offset or self.filters.conditions() or self.collapse_duplicates)
            and self.score_threshold is None
        )

    def shape(self, hits: Sequence[SearchHit]) -> list[Neighbour]:
        """The neighbours of the store's hits (one per group when ``collapses_hits``)."""
        neighbours = [Neighbour.from_hit(hit) for hit in hits]
        if not self.collapses_hits:
            return neighbours
        seen: set[str] = set()
        collapsed = []
        for neighbour in neighbours:
            group = str(neighbour.payload.get(GROUP) or neighbour.id)
            if group not in seen:
                seen.add(group)
                collapsed.append(neighbour)
        return collapsed[self.offset : self.offset + self.top_k]


@dataclass(frozen=True)
class LabelRequest:
    """Whether and how to predict labels.

    ``with_labels`` None means "when the collection has a probe"; ``method`` None means "the
    probe when there is one, else the kNN vote of the neighbours"; ``probe`` names one
    (default: ``default``, else the newest). A kNN vote is taken over the ``vote_neighbours``
    nearest points of the whole collection, never over the neighbours a query shows: its
    filters, threshold, offset and top-k choose what to show, not what the image is.
    """

    with_labels: bool | None = None
    method: LabelMethod | None = None
    probe: str | None = None
    top_k: int = 5
    vote_neighbours: int = VOTE_NEIGHBOURS


@dataclass(frozen=True)
class Neighbour:
    """One result: the point, its similarity, and where it came from; for a region search,
    ``region`` is where in it the match lies (fractions of the original image)."""

    id: str
    score: float
    path: str | None
    label: str | None
    payload: dict[str, Any]
    region: Box | None = None

    @classmethod
    def from_hit(cls, hit: SearchHit) -> Neighbour:
        """Shape a store hit (the score rounded to 6 digits)."""
        path, label = hit.payload.get("path"), hit.payload.get("label")
        return cls(
            id=hit.id,
            score=round(hit.score, 6),
            path=None if path is None else str(path),
            label=None if label in (None, "") else str(label),
            payload=hit.payload,
        )


@dataclass(frozen=True)
class ListedPoint:
    """A stored point as a listing shows it: its id, path and label."""

    id: str
    path: str | None
    label: str | None
    payload: dict[str, Any]

    @classmethod
    def from_stored(cls, point: StoredPoint) -> ListedPoint:
        """Shape a stored point."""
        path, label = point.payload.get("path"), point.payload.get("label")
        return cls(
            id=point.id,
            path=None if path is None else str(path),
            label=None if label in (None, "") else str(label),
            payload=point.payload,
        )


@dataclass(frozen=True)
class BrowsePage:
    """A page of points in id order; ``next`` starts the following page (None at the end)."""

    points: list[ListedPoint]
    next: str | None


@dataclass(frozen=True)
class DuplicateGroupView:
    """A group of near-duplicates marked by ``dinoseek dedup``: the kept point, the others
    (each with its ``duplicate_score`` in its payload), and why that point is the one kept
    (None for marks written before dedup recorded it)."""

    keep: ListedPoint
    duplicates: list[ListedPoint]
    reason: str | None


@dataclass(frozen=True)
class DuplicatesPage:
    """A page of groups in the id order of their kept points, and where the next starts."""

    groups: list[DuplicateGroupView]
    next: str | None


@dataclass(frozen=True)
class NearDuplicate:
    """The collection's most similar point to a query, when it is at or above ``threshold``:
    the query is already there. ``threshold`` is the one the collection's last ``dinoseek
    dedup`` compared that point at, else the setting ``duplicate_threshold``."""

    id: str
    path: str | None
    score: float
    threshold: float


@dataclass(frozen=True)
class SearchResult:
    """The neighbours of one query, its predicted labels (None when not asked for), and the
    point it near-duplicates (None when none is at the threshold)."""

    neighbours: list[Neighbour]
    labels: list[PredictedLabel] | None
    near_duplicate: NearDuplicate | None = None
