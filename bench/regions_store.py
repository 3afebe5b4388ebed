"""The store part of ``bench/regions.py``: region search at scale on synthetic vectors.

dinoseek's layout (one point per image, its region vectors a multivector searched by MaxSim,
int8, no HNSW graph: a scan of every image's windows) against CLS-only search of the same
images, and the alternative layout (one point per window in plain Qdrant Edge, HNSW, int8,
grouped by image after the query).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dinoseek.regions import RegionSpec, normalised
from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, SearchQuery


def bench_store(directory: Path) -> Runtime:
    """dinoseek's store in ``directory``, opened by the runtime as every command opens it."""
    return Runtime.open(Settings(data_dir=directory), collection="none", model=False)


def store_rows(images: int, dim: int, alt_images: int, queries: int) -> list[dict[str, Any]]:
    """Query p50 with regions (multivector, int8, no graph) against CLS only, at ``images``;
    the one-point-per-window layout (HNSW) at ``alt_images``."""
    rng = np.random.default_rng(0)
    windows = RegionSpec((16, 16)).count
    centres = normalised(rng.standard_normal((256, dim)).astype(np.float32))
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-regions-"))
    rows = []
    try:
        space = EmbeddingSpace("bench/random", dim, {}, tuple(float(v) for v in centres[0]))
        with bench_store(workdir / "data") as runtime:
            store = runtime.store
            store.ensure_collection("plain", space)
            store.ensure_collection("regions", space)
            store.ensure_regions("regions", RegionSpec((16, 16)))
            for name in ("plain", "regions"):
                started = time.perf_counter()
                batch_rng = np.random.default_rng(1)
                for start in range(0, images, 512):
                    count = min(512, images - start)
                    around = centres[batch_rng.integers(0, 256, count)]
                    cls = normalised(around + 0.5 * batch_rng.standard_normal((count, dim)))
                    regions = None
                    if name == "regions":
                        noise = batch_rng.standard_normal((count, windows, dim)).astype(np.float32)
                        regions = normalised(around[:, None, :] + 0.7 * noise)
                    store.upsert(
                        name,
                        [
                            PointRecord(
                                str(uuid.uuid4()),
                                cls[i],
                                {"label": f"c{i % 10}"},
                                None if regions is None else regions[i],
                            )
                            for i in range(count)
                        ],
                    )
                upsert_s = time.perf_counter() - started
                started = time.perf_counter()
                store.optimize(name)
                optimize_s = time.perf_counter() - started
                probes = normalised(
                    centres[rng.integers(0, 256, queries)]
                    + 0.7 * rng.standard_normal((queries, dim))
                )
                times = []
                for probe in probes:
                    began = time.perf_counter()
                    store.search(name, [SearchQuery(probe, top_k=10, regions=name == "regions")])
                    times.append(1000 * (time.perf_counter() - began))
                rows.append(
                    {
                        "layout": "CLS only (whole-image search)"
                        if name == "plain"
                        else "regions: a multivector per image, int8, no graph (dinoseek)",
                        "images": images,
                        "vectors": images * (windows if name == "regions" else 1),
                        "upsert_s": upsert_s,
                        "optimize_s": optimize_s,
                        "query_p50_ms": float(np.median(times[1:])),
                        "query_p99_ms": float(np.percentile(times[1:], 99)),
                    }
                )
        rows.append(alternative(workdir / "alt", alt_images, dim, queries, centres, windows))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows[1]["x_query"] = rows[0]["query_p50_ms"] / rows[1]["query_p50_ms"]
    return rows


def alternative(
    path: Path, images: int, dim: int, queries: int, centres: np.ndarray, windows: int
) -> dict[str, Any]:
    """One point per window in plain Qdrant Edge (HNSW, int8), the image's id in the payload;
    a query fetches 10 x windows hits and keeps the best per image."""
    import qdrant_edge as qe

    rng = np.random.default_rng(2)
    quantization = qe.ScalarQuantizationConfig(
        type=qe.ScalarType.Int8, quantile=0.99, always_ram=True
    )
    shard = qe.EdgeShard.create(
        str(path),
        qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(
                size=dim, distance=qe.Distance.Cosine, quantization_config=quantization
            )
        ),
    )
    shard.update(qe.UpdateOperation.create_field_index("image", qe.PayloadSchemaType.Keyword))
    started = time.perf_counter()
    for start in range(0, images, 64):
        count = min(64, images - start)
        around = centres[rng.integers(0, 256, count)]
        noise = rng.standard_normal((count, windows, dim)).astype(np.float32)
        regions = normalised(around[:, None, :] + 0.7 * noise)
        points = [
            qe.Point(str(uuid.uuid4()), regions[i, w].tolist(), {"image": str(start + i)})
            for i in range(count)
            for w in range(windows)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    shard.optimize()
    optimize_s = time.perf_counter() - started
    params = qe.SearchParams(
        hnsw_ef=256, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0)
    )
    times = []
    for _ in range(queries):
        probe = normalised(centres[rng.integers(0, 256)] + 0.7 * rng.standard_normal(dim))
        began = time.perf_counter()
        hits = shard.query(
            qe.QueryRequest(
                limit=10 * windows,
                query=qe.Query.Nearest(probe.tolist()),
                params=params,
                with_payload=True,
            )
        )
        list(dict.fromkeys(h.payload["image"] for h in hits))[:10]
        times.append(1000 * (time.perf_counter() - began))
    shard.close()
    return {
        "layout": "alternative: a point per window, HNSW, int8",
        "images": images,
        "vectors": images * windows,
        "upsert_s": upsert_s,
        "optimize_s": optimize_s,
        "query_p50_ms": float(np.median(times[1:])),
        "query_p99_ms": float(np.percentile(times[1:], 99)),
    }
