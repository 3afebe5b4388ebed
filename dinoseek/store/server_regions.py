"""Region vectors on a Qdrant server: the multivector added to a collection, configured
(no HNSW graph, quantized as the CLS vector), recorded in its metadata; points and queries
that carry them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from dinoseek.regions import REGION_VECTOR, RegionSpec
from dinoseek.store.records import PointRecord, SearchHit, StoredPoint
from dinoseek.store.server_calls import QdrantCalls

WITHOUT_REGIONS = models.Filter(must_not=[models.HasVectorCondition(has_vector=REGION_VECTOR)])


def add_region_vector(
    client: QdrantClient,
    call: QdrantCalls,
    name: str,
    dim: int,
    quantization: models.QuantizationConfig | None,
) -> None:
    """Create the region multivector (if missing), then configure it: no graph (MaxSim over
    every image's windows would make one far too slow to build), and ``quantization``."""
    vectors = call(client.get_collection, name).config.params.vectors
    if not isinstance(vectors, dict) or REGION_VECTOR not in vectors:
        config = models.DenseVectorConfig(
            size=dim,
            distance=models.Distance.COSINE,
            multivector_config=models.MultiVectorConfig(
                comparator=models.MultiVectorComparator.MAX_SIM
            ),
        )
        call(
            client.create_vector_name,
            name,
            REGION_VECTOR,
            models.DenseVectorNameConfig(dense=config),
            wait=True,
        )
    diff = models.VectorParamsDiff(
        hnsw_config=models.HnswConfigDiff(m=0), quantization_config=quantization
    )
    call(client.update_collection, name, vectors_config={REGION_VECTOR: diff})


def recorded_spec(metadata: Mapping[str, Any] | None) -> RegionSpec | None:
    """The layout recorded in dinoseek's metadata of a collection (None: no regions)."""
    recorded = (metadata or {}).get("regions")
    return RegionSpec.from_metadata(recorded) if isinstance(recorded, dict) else None


def point_struct(point: PointRecord, named: bool = False) -> models.PointStruct:
    """The point of a record, with its region vectors when it has them. ``named``: the CLS
    vector under its name (""), which a collection created with both vectors needs."""
    vector: Any = _as_list(point.vector)
    if point.regions is not None:
        vector = {"": vector, REGION_VECTOR: _as_list(point.regions)}
    elif named:
        vector = {"": vector}
    return models.PointStruct(id=point.id, vector=vector, payload=point.payload)


def region_vectors(point_id: str, value: Any) -> models.PointVectors:
    """An update of one point's region vectors."""
    return models.PointVectors(id=point_id, vector={REGION_VECTOR: _as_list(value)})


def query_vector(vector: np.ndarray, regions: bool) -> Any:
    """The query: a vector, or a multivector matched against the region vectors."""
    if regions:
        return _as_list(np.atleast_2d(np.asarray(vector, dtype=np.float32)))
    return _as_list(vector)


def regions_of(records: Sequence[models.Record]) -> dict[str, np.ndarray]:
    """The region vectors of the records that have them, by id."""
    found = {}
    for record in records:
        if isinstance(record.vector, dict) and REGION_VECTOR in record.vector:
            found[str(record.id)] = np.asarray(record.vector[REGION_VECTOR], dtype=np.float32)
    return found


def hit(point: models.ScoredPoint) -> SearchHit:
    """A hit, with its region vectors when the query asked for them."""
    regions = None
    if isinstance(point.vector, dict) and REGION_VECTOR in point.vector:
        regions = np.asarray(point.vector[REGION_VECTOR], dtype=np.float32)
    payload = dict(point.payload or {})
    return SearchHit(id=str(point.id), score=float(point.score), payload=payload, regions=regions)


def stored_point(point_id: Any, payload: Any, vector: Any) -> StoredPoint:
    """A record with its CLS vector (the unnamed one, when the point has region vectors)."""
    if isinstance(vector, dict):
        vector = vector.get("")
    array = None
    if isinstance(vector, list):
        array = np.asarray(vector, dtype=np.float32)
    return StoredPoint(id=str(point_id), payload=dict(payload or {}), vector=array)


def _as_list(vector: Any) -> Any:
    return np.asarray(vector, dtype=np.float32).tolist()
