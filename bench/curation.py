"""``dinoseek dedup`` against the plain script a user would write, on synthetic vectors with
planted near-duplicates.

The vectors are clustered (points of a cluster are alike, but below the threshold) and a
known set of near-duplicates is planted (a copy of a point with small noise: above it).
Both paths read the vectors from the same embedded store:

- dinoseek: `dinoseek.dedup` as the command runs it (read the vectors a page at a time,
  blocked products, connected components, write the marks);
- baseline: one store query per point for its neighbours above the threshold (what a user
  scripts with a vector database), then connected components. It is slow, so it runs on the
  first ``--baseline-points`` points; its rate per point is what the ratio compares.

Recall is measured against the planted pairs and against an exact all-pairs reference
(numpy, on ``--reference-points`` points).

    python bench/curation.py --points 100000 --dim 768 --baseline-points 5000
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
    resolve_device,
    write_results,
)

from dinoseek.collection_vectors import read_vectors
from dinoseek.dedup import PAYLOAD_FIELDS, UnionFind, apply_plan, plan_dedup
from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, SearchQuery, VectorStore

BATCH = 1024
THRESHOLD = 0.95


def clustered_vectors(
    count: int, dim: int, planted: int, seed: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``count`` unit vectors in clusters, the last ``planted`` of them near-copies of
    earlier ones; returns the vectors and the planted (source, copy) pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, count // 50), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    originals = count - planted
    rows = centres[rng.integers(0, len(centres), originals)]
    rows = rows + rng.standard_normal((originals, dim)).astype(np.float32) * (0.9 / np.sqrt(dim))
    sources = rng.choice(originals, planted, replace=False)
    copies = rows[sources] + rng.standard_normal((planted, dim)).astype(np.float32) * (
        0.15 / np.sqrt(dim)
    )
    data = np.concatenate([rows, copies]).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    pairs = [(int(s), originals + k) for k, s in enumerate(sources)]
    return data, pairs


def fill_store(directory: Path, data: np.ndarray) -> tuple[VectorStore, list[str]]:
    """The vectors in dinoseek's embedded store, opened by the runtime as the command does."""
    settings = Settings(data_dir=directory, collection="bench")
    store = Runtime.open(settings, collection="none", model=False).store
    space = EmbeddingSpace("bench/random", data.shape[1], {}, tuple(float(v) for v in data[0]))
    store.ensure_collection("bench", space)
    store.acquire("bench")
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(data))]
    for start in range(0, len(data), BATCH):
        stop = min(start + BATCH, len(data))
        store.upsert(
            "bench",
            [
                PointRecord(ids[i], data[i], {"path": f"/bench/{i:07d}.jpg"})
                for i in range(start, stop)
            ],
        )
    store.optimize("bench")
    return store, ids


def groups_of(edges: list[tuple[int, int]], count: int) -> UnionFind:
    links = UnionFind(count)
    for a, b in edges:
        links.union(a, b)
    return links


def run_dinoseek(store: VectorStore, device: str) -> tuple[dict[str, Any], UnionFind, list[str]]:
    """The command's steps, timed."""
    started = time.perf_counter()
    data = read_vectors(store, "bench", PAYLOAD_FIELDS)
    read_s = time.perf_counter() - started
    plan = plan_dedup(data, THRESHOLD, device=device)
    compare_s = time.perf_counter() - started - read_s
    written = apply_plan(store, "bench", data, plan, THRESHOLD)
    total_s = time.perf_counter() - started
    links = UnionFind(len(data.ids))
    for group in plan.groups:
        for other in group.others:
            links.union(group.keep, other)
    row = {
        "path": f"dinoseek dedup ({device})",
        "points": len(data.ids),
        "read_s": read_s,
        "compare_s": compare_s,
        "write_s": total_s - read_s - compare_s,
        "total_s": total_s,
        "points_per_s": len(data.ids) / total_s,
        "groups": len(plan.groups),
        "written": written,
    }
    return row, links, data.ids


def run_baseline(
    store: VectorStore, data: np.ndarray, ids: list[str], count: int
) -> dict[str, Any]:
    """One query per point for its neighbours above the threshold, then components."""
    index_of = {point_id: i for i, point_id in enumerate(ids)}
    started = time.perf_counter()
    edges = []
    for i in range(count):
        (hits,) = store.search(
            "bench", [SearchQuery(data[i], top_k=100, score_threshold=THRESHOLD)]
        )
        edges += [(i, index_of[h.id]) for h in hits if index_of[h.id] != i]
    total_s = time.perf_counter() - started
    links = groups_of(edges, len(ids))
    grouped = {links.find(i) for i in range(count) if links.size[links.find(i)] > 1}
    return {
        "path": "baseline: a query per point",
        "points": count,
        "total_s": total_s,
        "points_per_s": count / total_s,
        "groups": len(grouped),
    }


def recall(links: UnionFind, pairs: list[tuple[int, int]]) -> float | None:
    """The share of ``pairs`` whose two points ended in one group (None without pairs)."""
    if not pairs:
        return None
    return sum(links.find(a) == links.find(b) for a, b in pairs) / len(pairs)


def exact_pairs(
    data: np.ndarray, count: int, planted: list[tuple[int, int]]
) -> tuple[list[tuple[int, int]], int]:
    """Every pair above the threshold (numpy, all pairs) among about ``count`` points: the
    planted pairs and the first points; returns the pairs and the number of points."""
    chosen = {i for pair in planted for i in pair}
    chosen |= set(range(max(0, count - len(chosen))))
    subset = np.array(sorted(chosen))
    sims = data[subset] @ data[subset].T
    rows, cols = np.nonzero(np.triu(sims >= THRESHOLD, k=1))
    pairs = list(zip(subset[rows].tolist(), subset[cols].tolist(), strict=True))
    return pairs, len(subset)


def main() -> None:
    """Build the data, run both paths, print the table and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--planted", type=int, default=1_000, help="near-duplicates planted")
    parser.add_argument("--baseline-points", type=int, default=5_000)
    parser.add_argument("--reference-points", type=int, default=20_000)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a test")
    args = parser.parse_args()
    if args.quick:
        args.points, args.dim, args.planted = 3000, 64, 100
        args.baseline_points, args.reference_points = 300, 3000
    info = machine_info(args.device)
    device = resolve_device(args.device, info)
    print(describe_machine(info))
    data, planted = clustered_vectors(args.points, args.dim, args.planted, seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-curation-"))
    try:
        store, ids = fill_store(workdir / "data", data)
        baseline = run_baseline(store, data, ids, min(args.baseline_points, args.points))
        ours, links, read_ids = run_dinoseek(store, device)
        store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # The store returns points in id order; ids were made from the row numbers, in order.
    assert read_ids == ids
    reference, checked = exact_pairs(data, min(args.reference_points, args.points), planted)
    ours["recall_planted"] = recall(links, planted)
    ours["recall_exact"] = recall(links, reference)
    ours["x_points_per_s"] = ours["points_per_s"] / baseline["points_per_s"]
    rows = [baseline, ours]
    columns = [
        ("path", "path", fmt_text),
        ("points", "points", fmt_float(0)),
        ("read_s", "read s", fmt_float(1)),
        ("compare_s", "compare s", fmt_float(1)),
        ("write_s", "write s", fmt_float(1)),
        ("total_s", "total s", fmt_float(1)),
        ("points_per_s", "points/s", fmt_float(0)),
        ("groups", "groups", fmt_float(0)),
        ("recall_planted", "recall (planted)", fmt_float(4)),
        ("recall_exact", "recall (exact pairs)", fmt_float(4)),
        ("x_points_per_s", "x points/s", fmt_ratio),
    ]
    print(
        f"{args.points:,} {args.dim}-d vectors, {len(planted):,} planted near-duplicates, "
        f"threshold {THRESHOLD}; exact reference: {len(reference):,} pairs among {checked:,} "
        "points (the planted pairs and the first points)"
    )
    print(format_table(rows, columns))
    write_results(args.out, "curation", {"command": command_line(), "machine": info, "rows": rows})


if __name__ == "__main__":
    main()
