"""Region vectors in a Qdrant Edge shard: their multivector added to a shard that has only
the CLS vector, then configured.

Qdrant Edge creates a named vector with default settings (``create_dense_vector``), which
would build an HNSW graph over every image's windows with MaxSim as its distance: far too
slow to build (minutes for thousands of images). So the shard is reopened with the region
vector configured as dinoseek wants it: no HNSW (a region query scans the quantized
windows), and the same scalar quantization as the CLS vector. The CLS vector's own
configuration is read back from the shard's ``edge_config.json`` and passed unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from dinoseek.errors import StoreError
from dinoseek.regions import REGION_VECTOR
from dinoseek.store.edge_requests import vector_list

CONFIG_FILE = "edge_config.json"
# m = 0: no graph; a query compares every image's windows (with their quantized copies).
NO_GRAPH = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
_KNOWN_KEYS = {"size", "distance", "quantization_config", "hnsw_config", "multivector_config"}


def with_region_vector(shard: qe.EdgeShard, path: Path, dim: int) -> qe.EdgeShard:
    """Add the region multivector (``dim``-d windows) to the open ``shard`` at ``path`` (if
    it lacks it), close it, and return it reopened with the region vector configured."""
    vectors = _persisted_vectors(path)
    if REGION_VECTOR not in vectors:
        shard.update(
            qe.UpdateOperation.create_dense_vector(
                REGION_VECTOR,
                dim,
                qe.Distance.Cosine,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
            )
        )
    shard.flush()
    shard.close()
    cls_params = _cls_params(_persisted_vectors(path).get("", {}), path)
    config = qe.EdgeConfig(
        vectors={"": cls_params, REGION_VECTOR: region_params(dim, cls_params.quantization_config)}
    )
    try:
        return qe.EdgeShard.load(str(path), config)
    except Exception as exc:  # noqa: BLE001 - Qdrant Edge raises plain Exception
        raise StoreError(
            f"cannot configure the region vectors of the shard at {path}: {exc}"
        ) from None


def region_params(dim: int, quantization: Any) -> qe.EdgeVectorParams:
    """The region multivector: cosine, MaxSim over an image's windows, no graph."""
    return qe.EdgeVectorParams(
        size=dim,
        distance=qe.Distance.Cosine,
        multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        quantization_config=quantization,
        hnsw_config=NO_GRAPH,
    )


def _persisted_vectors(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path / CONFIG_FILE} is unreadable ({exc})") from None
    vectors = config.get("vectors")
    return vectors if isinstance(vectors, dict) else {}


def _cls_params(entry: dict[str, Any], path: Path) -> qe.EdgeVectorParams:
    """The CLS vector's parameters as the shard records them (those dinoseek creates)."""
    unknown = set(entry) - _KNOWN_KEYS
    if not entry or unknown or entry.get("distance") != "Cosine" or entry.get("multivector_config"):
        raise StoreError(
            f"the shard at {path} has a CLS vector dinoseek did not create ({entry}); "
            "index into a new collection to add regions"
        )
    quantization = None
    scalar = (entry.get("quantization_config") or {}).get("scalar")
    if scalar:
        quantization = qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8,
            quantile=scalar.get("quantile"),
            always_ram=scalar.get("always_ram"),
        )
    hnsw = None
    graph = entry.get("hnsw_config")
    if graph:
        hnsw = qe.HnswIndexConfig(
            m=int(graph["m"]),
            ef_construct=int(graph["ef_construct"]),
            full_scan_threshold=int(graph["full_scan_threshold"]),
        )
    return qe.EdgeVectorParams(
        size=int(entry["size"]),
        distance=qe.Distance.Cosine,
        quantization_config=quantization,
        hnsw_config=hnsw,
    )


def region_vectors_update(
    shard: qe.EdgeShard, regions: Mapping[str, Any]
) -> qe.UpdateOperation | None:
    """The operation that sets the region vectors of the points of ``regions`` still stored
    (None when none is)."""
    stored = {str(r.id) for r in shard.retrieve(list(regions), False, False)}
    vectors = [
        qe.PointVectors(point_id, {REGION_VECTOR: vector_list(value)})
        for point_id, value in regions.items()
        if point_id in stored
    ]
    return qe.UpdateOperation.update_vectors(vectors) if vectors else None


_WITHOUT_REGIONS = qe.Filter(must_not=[qe.HasVectorCondition(REGION_VECTOR)])


def ids_without_regions(shard: qe.EdgeShard) -> Iterator[str]:
    """Ids of the points without region vectors, a page at a time."""
    offset: Any = None
    while True:
        records, offset = shard.scroll(
            qe.ScrollRequest(offset=offset, limit=1024, filter=_WITHOUT_REGIONS)
        )
        yield from (str(record.id) for record in records)
        if offset is None:
            return
