"""qdrant-client's request models, built from the store's own types: payload filters, the
collection's index and quantization settings, search parameters, and writes cut to stay
under the server's request-size limit."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence

from qdrant_client import models

from dinoseek.store.records import (
    QUANTIZATION_OVERSAMPLING,
    FilterValue,
    PointRecord,
    Unset,
    VectorIndex,
)

# The key of the collection metadata that holds the embedding space (and regions).
METADATA_KEY = "dinoseek"
# Qdrant refuses requests over 32 MiB by default; stay far below it.
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def chunks_by_size(points: Sequence[PointRecord]) -> Iterator[Sequence[PointRecord]]:
    """``points`` in runs whose requests stay under ``MAX_REQUEST_BYTES``."""
    start, size = 0, 0
    for index, point in enumerate(points):
        # JSON floats take about 12 bytes each; payloads are measured as JSON.
        values = int(point.vector.size) + (0 if point.regions is None else int(point.regions.size))
        estimate = 12 * values + len(json.dumps(point.payload)) + 64
        if index > start and size + estimate > MAX_REQUEST_BYTES:
            yield points[start:index]
            start, size = index, 0
        size += estimate
    if start < len(points):
        yield points[start:]


def server_filter(
    filters: Mapping[str, FilterValue],
    exclude_ids: Sequence[str],
    exclude: Mapping[str, FilterValue] | None = None,
) -> models.Filter | None:
    """Points matching every filter, none of ``exclude`` and none of ``exclude_ids``."""
    must: list[models.Condition] = [_condition(key, value) for key, value in filters.items()]
    must_not: list[models.Condition] = (
        [models.HasIdCondition(has_id=list(exclude_ids))] if exclude_ids else []
    )
    must_not += [_condition(key, value) for key, value in (exclude or {}).items()]
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _condition(key: str, value: FilterValue) -> models.Condition:
    """An exact match, or for ``UNSET`` a field that is missing, null or empty."""
    if isinstance(value, Unset):
        return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def hnsw_config(index: VectorIndex) -> models.HnswConfigDiff | None:
    """The HNSW settings of ``index`` (None: Qdrant's defaults)."""
    if index.is_default:
        return None
    return models.HnswConfigDiff(m=index.hnsw_m, ef_construct=index.hnsw_ef_construct)


def quantization_config(index: VectorIndex) -> models.ScalarQuantization | None:
    """int8 scalar quantization when ``index`` asks for it."""
    if index.quantization != "int8":
        return None
    return models.ScalarQuantization(
        scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=0.99, always_ram=True
        )
    )


def search_params(index: VectorIndex) -> models.SearchParams:
    """``hnsw_ef`` candidates per query; a quantized collection's candidates are rescored with
    the original vectors (ignored by a collection without quantization)."""
    return models.SearchParams(
        hnsw_ef=index.hnsw_ef,
        quantization=models.QuantizationSearchParams(
            rescore=True, oversampling=QUANTIZATION_OVERSAMPLING
        ),
    )
