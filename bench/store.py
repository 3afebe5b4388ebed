"""The embedded store against qdrant-client's local mode, on the same random vectors.

dinoseek's embedded store is Qdrant Edge; the obvious alternative a user would reach for is
qdrant-client's in-process mode (``QdrantClient(path=...)``). Both get the same L2-normalised
random vectors with a small payload; the table gives upsert throughput, query latency (p50 of
single queries, after the index build for Edge) and the time to reopen the store.

    python bench/store.py --points 50000 --dim 768 --baseline-points 10000

The baseline is slow enough that it runs on fewer points by default; its rates are per point,
so the ratio stays meaningful (its query latency grows with the collection, so the ratio is
then a lower bound of the real one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    command_line,
    describe_machine,
    fmt_float,
    fmt_ratio,
    fmt_text,
    format_table,
    machine_info,
    write_results,
)

from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, SearchQuery, VectorStore

BATCH = 1024


def vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """Random unit vectors."""
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``."""
    return float(np.percentile(np.asarray(values), q))


def edge_store(directory: Path) -> VectorStore:
    """dinoseek's embedded store at ``directory``, opened by the runtime as every command does."""
    settings = Settings(data_dir=directory, collection="bench")
    return Runtime.open(settings, collection="none", model=False).store


def bench_edge(data: np.ndarray, queries: np.ndarray, directory: Path) -> dict[str, Any]:
    """dinoseek's EdgeStore: batched upserts, optimize(), single queries, reopen."""
    dim = data.shape[1]
    space = EmbeddingSpace("bench/random", dim, {}, tuple(float(v) for v in data[0]))
    with edge_store(directory) as store:
        store.ensure_collection("bench", space)
        started = time.perf_counter()
        for start in range(0, len(data), BATCH):
            store.upsert(
                "bench",
                [
                    PointRecord(str(uuid.uuid4()), data[i], {"label": f"c{i % 10}"})
                    for i in range(start, min(start + BATCH, len(data)))
                ],
            )
        upsert_s = time.perf_counter() - started
        before = _query_times(lambda q: store.search("bench", [SearchQuery(q, top_k=10)]), queries)
        started = time.perf_counter()
        store.optimize("bench")
        optimize_s = time.perf_counter() - started
        after = _query_times(lambda q: store.search("bench", [SearchQuery(q, top_k=10)]), queries)
    started = time.perf_counter()
    with edge_store(directory) as store:
        store.acquire("bench")
        count = store.count("bench")
    reopen_s = time.perf_counter() - started
    assert count == len(data)
    return {
        "path": "dinoseek (Qdrant Edge)",
        "points": len(data),
        "upsert_points_per_s": len(data) / upsert_s,
        "optimize_s": optimize_s,
        "query_p50_ms_before_index": percentile(before, 50),
        "query_p50_ms": percentile(after, 50),
        "query_p99_ms": percentile(after, 99),
        "reopen_s": reopen_s,
    }


def bench_local_client(data: np.ndarray, queries: np.ndarray, directory: Path) -> dict[str, Any]:
    """The alternative: qdrant-client in local (path) mode, the same batches."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(directory))
    client.create_collection(
        "bench",
        vectors_config=models.VectorParams(size=data.shape[1], distance=models.Distance.COSINE),
    )
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        client.upsert(
            "bench",
            [
                models.PointStruct(
                    id=str(uuid.uuid4()), vector=data[i].tolist(), payload={"label": f"c{i % 10}"}
                )
                for i in range(start, min(start + BATCH, len(data)))
            ],
        )
    upsert_s = time.perf_counter() - started
    times = _query_times(
        lambda q: client.query_points("bench", query=q.tolist(), limit=10), queries
    )
    client.close()
    started = time.perf_counter()
    reopened = QdrantClient(path=str(directory))
    count = reopened.count("bench").count
    reopen_s = time.perf_counter() - started
    reopened.close()
    assert count == len(data)
    return {
        "path": "baseline: qdrant-client local mode",
        "points": len(data),
        "upsert_points_per_s": len(data) / upsert_s,
        "optimize_s": None,
        "query_p50_ms_before_index": None,
        "query_p50_ms": percentile(times, 50),
        "query_p99_ms": percentile(times, 99),
        "reopen_s": reopen_s,
    }


def _query_times(run: Any, queries: np.ndarray) -> list[float]:
    run(queries[0])  # warm
    times = []
    for query in queries:
        started = time.perf_counter()
        run(query)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    """Run both, print the table and the ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--baseline-points", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a test")
    args = parser.parse_args()
    if args.quick:
        args.points, args.baseline_points, args.dim, args.queries = 2000, 500, 64, 20
    info = machine_info("cpu")
    print(describe_machine(info))
    data = vectors(args.points, args.dim, seed=0)
    queries = vectors(args.queries, args.dim, seed=1)
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-store-"))
    try:
        ours = bench_edge(data, queries, workdir / "edge")
        baseline = bench_local_client(data[: args.baseline_points], queries, workdir / "local")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours["x_upsert"] = ours["upsert_points_per_s"] / baseline["upsert_points_per_s"]
    ours["x_query"] = baseline["query_p50_ms"] / ours["query_p50_ms"]
    ours["x_reopen"] = baseline["reopen_s"] / ours["reopen_s"]
    rows = [baseline, ours]
    columns = [
        ("path", "path", fmt_text),
        ("points", "points", fmt_float(0)),
        ("upsert_points_per_s", "upsert pts/s", fmt_float(0)),
        ("optimize_s", "optimize s", fmt_float(1)),
        ("query_p50_ms", "query p50 ms", fmt_float(2)),
        ("query_p99_ms", "query p99 ms", fmt_float(2)),
        ("reopen_s", "reopen s", fmt_float(2)),
        ("x_upsert", "x upsert", fmt_ratio),
        ("x_query", "x query", fmt_ratio),
        ("x_reopen", "x reopen", fmt_ratio),
    ]
    print(f"{args.dim}-d vectors, batches of {BATCH}, top 10, {args.queries} single queries")
    print(format_table(rows, columns))
    write_results(args.out, "store", {"command": command_line(), "machine": info, "rows": rows})


if __name__ == "__main__":
    main()
