"""Qdrant Edge shards: open or create one for an embedding space, count a loose one."""

from __future__ import annotations

import shutil
from pathlib import Path

import qdrant_edge as qe

from dinoseek.errors import StoreError, StoreLockedError
from dinoseek.space import EmbeddingSpace
from dinoseek.store.records import PAYLOAD_INDEXES, PayloadIndex, VectorIndex

SHARD_DIR = "shard"


def open_or_create_shard(
    path: Path, space: EmbeddingSpace, index: VectorIndex | None = None
) -> qe.EdgeShard:
    """Open the shard at ``path``, or create it (with its payload indexes) for ``space``,
    indexed as ``index`` says (an existing shard keeps its own configuration)."""
    config = qe.EdgeConfig(vectors=vector_params(space, index or VectorIndex()))
    try:
        if (path / "edge_config.json").exists():
            return qe.EdgeShard.load(str(path))
        # A shard directory without its config is a create() that died half-way: nothing
        # in it was ever acknowledged, so it is safe to start over.
        shutil.rmtree(path, ignore_errors=True)
        shard = qe.EdgeShard.create(str(path), config)
        for index_of_field in PAYLOAD_INDEXES:
            shard.update(
                qe.UpdateOperation.create_field_index(
                    index_of_field.field, keyword_index(index_of_field)
                )
            )
        shard.flush()
        return shard
    except Exception as exc:  # noqa: BLE001 - Qdrant Edge raises plain Exception
        if "WouldBlock" in str(exc):
            raise StoreLockedError(
                f"the shard at {path} is open in another process (Qdrant Edge: {exc})"
            ) from None
        raise StoreError(f"cannot open the shard at {path}: {exc}") from None


def keyword_index(index: PayloadIndex) -> qe.PayloadSchemaType | qe.KeywordIndexParams:
    """Qdrant Edge's parameters of ``index`` (the plain keyword type for an in-memory index
    with links, as collections made before had)."""
    if index.in_memory and index.value_links:
        return qe.PayloadSchemaType.Keyword
    memory = qe.Memory.Pinned if index.in_memory else qe.Memory.Cold
    return qe.KeywordIndexParams(memory=memory, enable_hnsw=index.value_links)


def vector_params(space: EmbeddingSpace, index: VectorIndex) -> qe.EdgeVectorParams:
    """Cosine vectors of ``space``'s size, with ``index``'s HNSW and quantization."""
    hnsw = None
    if not index.is_default:
        hnsw = qe.HnswIndexConfig(
            m=index.hnsw_m, ef_construct=index.hnsw_ef_construct, full_scan_threshold=10_000
        )
    quantization = None
    if index.quantization == "int8":
        quantization = qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=0.99, always_ram=True
        )
    return qe.EdgeVectorParams(
        size=space.dim,
        distance=qe.Distance.Cosine,
        hnsw_config=hnsw,
        quantization_config=quantization,
    )


def count_points(path: Path) -> int:
    """Open a shard that nobody holds, count its points, close it (``StoreError`` if it does
    not open)."""
    try:
        shard = qe.EdgeShard.load(str(path))
    except Exception as exc:  # noqa: BLE001 - Qdrant Edge raises plain Exception
        raise StoreError(f"the shard at {path} does not open ({exc})") from None
    try:
        return int(shard.count(qe.CountRequest(exact=True)))
    finally:
        shard.close()
