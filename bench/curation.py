"""``dinoseek dedup`` and ``dinoseek curate`` at scale, against exact all-pairs, on clustered
vectors with planted near-duplicates (``bench/curation_data.py``), in one run.

Rows (the vectors are read from the same embedded store by every dinoseek row):

- exact all-pairs: ``plan_dedup(method="exact")`` on the first ``--exact-points`` points (all
  of them when fewer), in this process, the comparison alone timed; its time at the full size
  is extrapolated with the square of the points;
- hnsw: a k-nearest-neighbour query per point on the store's HNSW index, batched (the other
  route), on ``--hnsw-points`` points after the index is built; extrapolated by its rate;
- dinoseek dedup: the command in a process of its own, end to end (start, read, compare,
  write), with its peak memory (the process's maximum resident set);
- dinoseek dedup, rerun: the command again after ``--added`` new points (a tenth of them
  copies of earlier points);
- curate (with ``--curate-references R``): ``dinoseek curate --per-image 4`` with R reference
  vectors (points of the same clusters, 1% of them near-duplicates of pool points) in a
  collection of their own, and exact retrieval extrapolated from 200 of them.

Recall: of the planted pairs at or above the threshold (their two points in one group), and
of the exact pairs of a sample (``--sample-points`` random points compared with every point,
exactly); for curate, of each sampled reference's exact 4 nearest eligible points.

    python bench/curation.py --points 100000 --dim 768 --hnsw-points 2000
    python bench/curation.py --points 1000000 --exact-points 100000 --curate-references 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch  # noqa: F401 - imported here, before any timing

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    PEAK_RSS_LAUNCHER,
    CpuMeter,
    child_env,
    command_line,
    describe_machine,
    fmt_float,
    fmt_ratio,
    fmt_text,
    format_table,
    load_average,
    machine_info,
    resolve_device,
    write_results,
)
from curation_data import Generator, fill, pairs_at, point_id, runtime_store, sample_pairs

from dinoseek.collection_vectors import CollectionVectors
from dinoseek.dedup import UnionFind, plan_dedup
from dinoseek.payload_table import PayloadTable
from dinoseek.similarity import best_matches, top_matches
from dinoseek.store import SearchQuery, VectorStore

THRESHOLD = 0.95
PER_IMAGE = 4
CURATE_SAMPLE = 200
HNSW_BATCH = 256


def run_command(args: list[str], timeout_s: float) -> dict[str, Any]:
    """``dinoseek ARGS --json`` in a process of its own: its document, wall time, peak
    memory (its maximum resident set, GiB, measured by ``PEAK_RSS_LAUNCHER``) and the other
    processes' CPU meanwhile."""
    meter = CpuMeter()
    load = _load()
    started = time.perf_counter()
    command = [sys.executable, "-c", PEAK_RSS_LAUNCHER, sys.executable, "-m", "dinoseek_cli"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [*command, *args, "--json"], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            env=child_env(), start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the command
            code = process.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"dinoseek {' '.join(args)} failed:\n{stderr[-3000:]}")
    return {
        "document": json.loads(stdout),
        "wall_s": wall,
        "peak_gib": int(stderr.strip().splitlines()[-1]) / 2**20,  # KiB on Linux
        "other_cpu": meter.other_cores(),
        "load": load,
    }


def _load() -> float | None:
    found = load_average()
    return None if found is None else found[0]


def linked(count: int, groups: list[dict[str, Any]]) -> UnionFind:
    """The groups of a ``dedup --json`` document as components of the rows."""
    links = UnionFind(count)
    for group in groups:
        keep = _row(group["keep_id"])
        for other in group["duplicate_ids"]:
            links.union(keep, _row(other))
    return links


def groups_of(count: int, pairs: np.ndarray) -> list[list[int]]:
    """The groups (two points or more) that ``pairs`` link."""
    links = UnionFind(count)
    for a, b in pairs.tolist():
        links.union(a, b)
    return [m for m in links.components(sorted(set(pairs.reshape(-1).tolist()))).values()]


def _row(point: str) -> int:
    return int(point.replace("-", ""), 16) - 1  # point_id's inverse


def recall(links: UnionFind, pairs: np.ndarray) -> float | None:
    """The share of ``pairs`` whose two points ended in one group (None without pairs)."""
    if not len(pairs):
        return None
    return sum(links.find(int(a)) == links.find(int(b)) for a, b in pairs) / len(pairs)


def exact_baseline(vectors: np.ndarray, count: int, total: int) -> dict[str, Any]:
    """All-pairs on the first ``count`` points, timed, extrapolated to ``total``."""
    data = CollectionVectors(
        [point_id(i) for i in range(count)],
        vectors[:count],
        PayloadTable.of({} for _ in range(count)),
    )
    meter, load = CpuMeter(), _load()
    started = time.perf_counter()
    plan = plan_dedup(data, THRESHOLD, method="exact")
    seconds = time.perf_counter() - started
    return {
        "path": "exact all-pairs (compare only)",
        "points": count,
        "queried": count,
        "seconds": seconds,
        "at_total_s": seconds * (total / count) ** 2,
        "groups": len(plan.groups),
        "comparisons": plan.comparisons,
        "other_cpu": meter.other_cores(),
        "load": load,
    }


def hnsw_route(
    store: VectorStore, vectors: np.ndarray, queried: int, planted: np.ndarray
) -> tuple[dict[str, Any], float]:
    """Build the HNSW index, then one thresholded kNN query per point for ``queried``
    points, ``HNSW_BATCH`` per store call; returns the row and the build time."""
    started = time.perf_counter()
    store.optimize("bench")
    build_s = time.perf_counter() - started
    meter, load = CpuMeter(), _load()
    started = time.perf_counter()
    found: set[tuple[int, int]] = set()
    for start in range(0, queried, HNSW_BATCH):
        rows = range(start, min(queried, start + HNSW_BATCH))
        queries = [SearchQuery(vectors[r], top_k=100, score_threshold=THRESHOLD) for r in rows]
        for row, hits in zip(rows, store.search("bench", queries), strict=True):
            found |= {(row, _row(hit.id)) for hit in hits}
    seconds = time.perf_counter() - started
    asked = [(int(a), int(b)) for a, b in planted if a < queried]
    hit_share = sum(pair in found for pair in asked) / len(asked) if asked else None
    row = {
        "path": f"hnsw: a kNN query per point, {HNSW_BATCH} per call",
        "points": len(vectors),
        "queried": queried,
        "seconds": seconds,
        "at_total_s": seconds * len(vectors) / queried,
        "recall_planted": hit_share,
        "other_cpu": meter.other_cores(),
        "load": load,
    }
    return row, build_s


def dedup_row(result: dict[str, Any], label: str) -> dict[str, Any]:
    """The row of a ``dedup --json`` run: the process's times, memory and counts."""
    document = result["document"]
    return {
        "path": label,
        "points": document["points"],
        "queried": document["compared"],
        "seconds": result["wall_s"],
        "at_total_s": result["wall_s"],
        "read_s": document["seconds_by_stage"]["read"],
        "compare_s": document["seconds_by_stage"]["compare"],
        "write_s": document["seconds_by_stage"]["write"],
        "peak_gib": result["peak_gib"],
        "groups": len(document["groups"]),
        "comparisons": document["comparisons"],
        "method": document["method"],
        "other_cpu": result["other_cpu"],
        "load": result["load"],
    }


def curate_rows(
    directory: Path, vectors: np.ndarray, references: np.ndarray, duplicates: set[int], args: Any
) -> list[dict[str, Any]]:
    """``dinoseek curate`` with the references, and exact retrieval extrapolated."""
    with runtime_store(directory) as store:
        fill(store, "reference", references)
    result = run_command(
        ["curate", "--reference", "reference", "--per-image", str(PER_IMAGE), "-c", "bench",
         "--data-dir", str(directory), "--device", args.device, "--search", args.method],
        args.timeout,
    )  # fmt: skip
    document = result["document"]
    selected = {_row(entry["id"]) for entry in document["selection"]}
    taken = min(CURATE_SAMPLE, len(references))
    sample = np.random.default_rng(2).choice(len(references), taken, replace=False)
    meter, load = CpuMeter(), _load()
    started = time.perf_counter()
    best_matches(vectors, references[sample])  # what the near-duplicate step computes
    index, _ = top_matches(references[sample], vectors, PER_IMAGE + 16)
    seconds = time.perf_counter() - started
    wanted = []
    for rows in index:  # the exact nearest eligible points of each sampled reference
        _, near = best_matches(vectors[rows], references)
        eligible = [int(r) for r, s in zip(rows, near, strict=True) if s < THRESHOLD]
        wanted += [r for r in eligible if r not in duplicates][:PER_IMAGE]
    ours = {
        "path": "dinoseek curate --per-image 4",
        "points": len(vectors),
        "references": len(references),
        "seconds": result["wall_s"],
        "peak_gib": result["peak_gib"],
        "selected": document["selected"],
        "recall_nearest": sum(r in selected for r in wanted) / len(wanted),
        "search": document.get("search"),
        "other_cpu": result["other_cpu"],
        "load": result["load"],
    }
    baseline = {
        "path": f"exact retrieval (from {taken} references, compare only)",
        "points": len(vectors),
        "references": taken,
        "seconds": seconds,
        "at_total_s": seconds * len(references) / taken,
        "other_cpu": meter.other_cores(),
        "load": load,
    }
    return [baseline, ours]


def main() -> None:
    """Build the data, run every row, print the tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--planted", type=int, default=None, help="default: 1%% of the points")
    parser.add_argument("--added", type=int, default=None, help="default: 1%% of the points")
    parser.add_argument("--exact-points", type=int, default=100_000)
    parser.add_argument("--hnsw-points", type=int, default=0, help="0: no HNSW row")
    parser.add_argument("--sample-points", type=int, default=10_000)
    parser.add_argument("--curate-references", type=int, default=0, help="0: no curate rows")
    parser.add_argument("--method", default="auto", help="dedup's --method")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a test")
    args = parser.parse_args()
    if args.quick:
        args.points, args.dim, args.exact_points, args.sample_points = 3000, 64, 3000, 3000
        args.planted = 150
        args.curate_references = args.curate_references and 100
    count = args.points
    planted_count = args.planted if args.planted is not None else count // 100
    added_count = args.added if args.added is not None else max(1, count // 100)
    info = machine_info(args.device)
    args.device = resolve_device(args.device, info)
    print(describe_machine(info))
    generator = Generator(count, args.dim, seed=0)
    data = generator.build(count, planted_count)
    added = generator.build(added_count, added_count // 10, base=data.vectors)
    added_pairs = added.pairs + np.array([0, count])
    vectors = data.vectors
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-curation-"))
    rows: list[dict[str, Any]] = []
    try:
        store = runtime_store(workdir / "data")
        fill(store, "bench", vectors)
        rows.append(exact_baseline(vectors, min(args.exact_points, count), count))
        build_s = None
        if args.hnsw_points:
            hnsw, build_s = hnsw_route(store, vectors, min(args.hnsw_points, count), data.pairs)
            rows.append(hnsw)
        store.close()
        common = ["-c", "bench", "--data-dir", str(workdir / "data"), "--device", args.device]
        first = run_command(["dedup", "--method", args.method, *common], args.timeout)
        links = linked(count, first["document"]["groups"])
        ours = dedup_row(first, f"dinoseek dedup ({args.device})")
        planted = pairs_at(vectors, data.pairs, THRESHOLD)
        planted_groups = len(groups_of(count, planted))
        sampled, sample_rows = sample_pairs(vectors, min(count, args.sample_points), THRESHOLD, 1)
        ours.update(recall_planted=recall(links, planted), recall_exact=recall(links, sampled))
        rows.append(ours)
        with runtime_store(workdir / "data") as store:
            fill(store, "bench", added.vectors, first_row=count)
        again = run_command(["dedup", "--method", args.method, *common], args.timeout)
        everything = np.concatenate([vectors, added.vectors])
        links = linked(count + added_count, again["document"]["groups"])
        rerun = dedup_row(again, f"dinoseek dedup, rerun after +{added_count:,}")
        rerun["recall_planted"] = recall(links, pairs_at(everything, added_pairs, THRESHOLD))
        rows.append(rerun)
        curation: list[dict[str, Any]] = []
        if args.curate_references:
            refs = np.empty((args.curate_references, args.dim), dtype=np.float32)
            generator.originals(refs)
            twins = max(1, len(refs) // 100)  # near-duplicates of pool points: left out
            refs[:twins] = generator.copy_of(everything[: twins * 7 : 7])
            duplicates = {_row(i) for g in again["document"]["groups"] for i in g["duplicate_ids"]}
            curation = curate_rows(workdir / "data", everything, refs, duplicates, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    exact = rows[0]["at_total_s"]
    for row in rows[1:]:
        row["x_exact"] = exact / row["at_total_s"] if row.get("at_total_s") else None
    print(
        f"{count:,} {args.dim}-d vectors, {len(data.pairs):,} planted near-duplicate pairs "
        f"({len(planted):,} at or above {THRESHOLD}, in {planted_groups:,} groups), threshold "
        f"{THRESHOLD}; exact pairs of "
        f"{sample_rows:,} random points: {len(sampled):,}; HNSW build: "
        f"{'-' if build_s is None else f'{build_s:.1f} s'}; dinoseek's method: "
        f"{json.dumps(ours['method'])}"
    )
    print(format_table(rows, COLUMNS))
    if curation:
        print(f"curate: {args.curate_references:,} reference vectors over {len(everything):,}")
        print(format_table(curation, CURATE_COLUMNS))
    write_results(
        args.out,
        "curation",
        {
            "command": command_line(),
            "machine": info,
            "planted_groups": planted_groups,
            "rows": rows,
            "curate": curation,
        },
    )


COLUMNS = [
    ("path", "path", fmt_text),
    ("points", "points", fmt_float(0)),
    ("queried", "compared", fmt_float(0)),
    ("seconds", "s", fmt_float(1)),
    ("read_s", "read s", fmt_float(1)),
    ("compare_s", "compare s", fmt_float(1)),
    ("write_s", "write s", fmt_float(1)),
    ("at_total_s", "s at all points", fmt_float(1)),
    ("peak_gib", "peak GiB", fmt_float(2)),
    ("groups", "groups", fmt_float(0)),
    ("comparisons", "similarities", fmt_float(0)),
    ("recall_planted", "recall (planted)", fmt_float(4)),
    ("recall_exact", "recall (exact, sample)", fmt_float(4)),
    ("x_exact", "x exact", fmt_ratio),
    ("load", "load", fmt_float(2)),
    ("other_cpu", "other CPU", fmt_float(2)),
]
CURATE_COLUMNS = [
    ("path", "path", fmt_text),
    ("points", "pool", fmt_float(0)),
    ("references", "references", fmt_float(0)),
    ("seconds", "s", fmt_float(1)),
    ("at_total_s", "s at all references", fmt_float(1)),
    ("peak_gib", "peak GiB", fmt_float(2)),
    ("selected", "selected", fmt_float(0)),
    ("recall_nearest", "recall (4 nearest)", fmt_float(4)),
    ("load", "load", fmt_float(2)),
    ("other_cpu", "other CPU", fmt_float(2)),
]


if __name__ == "__main__":
    main()
