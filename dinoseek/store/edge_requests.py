"""What the embedded store sends Qdrant Edge and makes of its answers: points, filters,
queries (by the CLS vector or by region vectors), hits and records."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import qdrant_edge as qe

from dinoseek.regions import REGION_VECTOR
from dinoseek.store.records import (
    QUANTIZATION_OVERSAMPLING,
    FilterValue,
    PointRecord,
    SearchHit,
    SearchQuery,
    StoredPoint,
    Unset,
)

DEFAULT_VECTOR = ""  # the CLS vector: Qdrant's unnamed vector
# Only the CLS vector of a point, whether or not it has region vectors.
CLS_ONLY = [DEFAULT_VECTOR]


def vector_list(vector: np.ndarray) -> list[Any]:
    """A vector (or a multivector) as the lists Qdrant Edge takes."""
    return np.asarray(vector, dtype=np.float32).tolist()  # type: ignore[no-any-return]


def edge_point(record: PointRecord) -> qe.Point:
    """The point of a record: its CLS vector, and its region vectors when it has them."""
    if record.regions is None:
        return qe.Point(record.id, vector_list(record.vector), record.payload)
    vectors: dict[str, Any] = {
        DEFAULT_VECTOR: vector_list(record.vector),
        REGION_VECTOR: vector_list(record.regions),
    }
    return qe.Point(record.id, vectors, record.payload)


def edge_filter(
    filters: Mapping[str, FilterValue],
    exclude_ids: Sequence[str],
    exclude: Mapping[str, FilterValue] | None = None,
) -> qe.Filter | None:
    """Exact matches that must hold, ids and exact matches that must not."""
    must: list[Any] = [_condition(key, value) for key, value in filters.items()]
    must_not: list[Any] = [qe.HasIdCondition(set(exclude_ids))] if exclude_ids else []
    must_not += [_condition(key, value) for key, value in (exclude or {}).items()]
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _condition(key: str, value: FilterValue) -> Any:
    """An exact match, or for ``UNSET`` a field that is missing, null or empty."""
    if isinstance(value, Unset):
        return qe.IsEmptyCondition(key)
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def query_request(query: SearchQuery, hnsw_ef: int) -> qe.QueryRequest:
    """The request of one query: by the CLS vector, or by region vectors (MaxSim; the hits
    bring theirs)."""
    if query.regions:
        rows = np.atleast_2d(np.asarray(query.vector, dtype=np.float32))
        nearest = qe.Query.Nearest(vector_list(rows), using=REGION_VECTOR)
        with_vector: Any = [REGION_VECTOR]
    else:
        nearest = qe.Query.Nearest(vector_list(query.vector))
        with_vector = False
    return qe.QueryRequest(
        limit=query.top_k,
        offset=query.offset,
        query=nearest,
        filter=edge_filter(query.filters, query.exclude_ids, query.exclude),
        score_threshold=query.score_threshold,
        with_payload=True,
        with_vector=with_vector,
        params=search_params(hnsw_ef),
    )


@functools.cache
def search_params(hnsw_ef: int) -> qe.SearchParams:
    """``hnsw_ef`` candidates per query; a quantized collection's candidates are rescored with
    the original vectors (ignored by a collection without quantization)."""
    return qe.SearchParams(
        hnsw_ef=hnsw_ef,
        quantization=qe.QuantizationSearchParams(
            rescore=True, oversampling=QUANTIZATION_OVERSAMPLING
        ),
    )


def search_hit(point: qe.ScoredPoint) -> SearchHit:
    """A hit, with its region vectors when the query asked for them."""
    regions = None
    if isinstance(point.vector, dict) and REGION_VECTOR in point.vector:
        regions = np.asarray(point.vector[REGION_VECTOR], dtype=np.float32)
    return SearchHit(
        id=str(point.id),
        score=float(point.score),
        payload=dict(point.payload or {}),
        regions=regions,
    )


def stored_point(record: qe.Record, with_vectors: bool) -> StoredPoint:
    """A record, with its CLS vector when asked for (read with ``CLS_ONLY``)."""
    vector = None
    if with_vectors and record.vector is not None:
        vector = np.asarray(record.vector, dtype=np.float32)
    return StoredPoint(id=str(record.id), payload=dict(record.payload or {}), vector=vector)
