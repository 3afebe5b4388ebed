"""Benchmark: the embedded store and the indexer at scale (a million points on one machine).

Two parts, each against its baseline in the same run:

- **vectors** (no model): ``--points`` synthetic clustered 768-d unit vectors (``--clusters``
  clusters, labelled by cluster; the queries are other points of the same clusters) into
  dinoseek's embedded store as the indexer writes them (batches of 1,024, each point with the
  payload the indexer writes, so every payload index is built), then the HNSW build
  (``optimize``). Measured: upsert rate, time to a fully indexed collection, query p50 and p99
  unfiltered and filtered by label (single queries, top 10), recall@10 of both against exact
  search (numpy), the process's peak RSS and the disk used. The baseline is the plain script
  a user would write on Qdrant Edge itself: one shard, its default configuration, no payload
  index, the same batches with a label and a path per point.
- **catalog**: ``--files`` real small JPEG files, their points written into a collection the
  way ``dinoseek index`` records them (the real payload of each file: path, size, mtime), then
  ``dinoseek index`` run over the unchanged folder in a process of its own: its wall time and
  peak RSS (what a no-change rerun costs), and the catalog's memory per entry (``Catalog.load``
  measured with tracemalloc), extrapolated to a million entries.

    python bench/scale.py --points 1000000 --files 200000 --out bench/out

``--quick`` is a seconds-long smoke run. Each part can be skipped (``--points 0``,
``--files 0``); ``--no-baseline`` skips the plain Qdrant Edge run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common

from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, SearchQuery, VectorStore, point_id_for_sha256

BATCH = 1024
COLLECTION = "scale"
# The shape of the synthetic clusters (see clustered_vectors): directions of spread per
# cluster, the spread along them and the noise in every direction, relative to the centre.
SPREAD_DIMS = 16
SPREAD = 0.25
NOISE = 0.1


# -- data -------------------------------------------------------------------------------------


def clustered_vectors(
    count: int, dim: int, clusters: int, seed: int, queries: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors, cluster of each, ``queries`` more unit vectors drawn from the same
    clusters), shaped as image embeddings are: each cluster a centre and a spread along a few
    directions of its own (its images vary in a few ways: pose, light, background), plus a
    little noise in every direction. Isotropic noise alone would make every point of a cluster
    about as far from every other, where no index can tell the 10 nearest and recall means
    nothing; queries from clusters of their own would be as far from every point."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    spreads = rng.standard_normal((clusters, SPREAD_DIMS, dim)).astype(np.float32)
    total = count + queries
    labels = rng.integers(0, clusters, size=total)
    data = np.empty((total, dim), dtype=np.float32)
    for start in range(0, total, 65536):  # in chunks: a million rows of noise is 3 GB
        stop = min(start + 65536, total)
        chunk = labels[start:stop]
        weights = rng.standard_normal((stop - start, SPREAD_DIMS)).astype(np.float32)
        along = np.einsum("nk,nkd->nd", weights, spreads[chunk]) * SPREAD
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * NOISE
        data[start:stop] = centres[chunk] + along + noise
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data[:count], labels[:count], data[count:]


def indexer_payload(row: int, label: str) -> dict[str, Any]:
    """The payload ``dinoseek index`` writes for an image of one file (a stand-in file), so
    that every payload index the store keeps is built and measured."""
    from indexer.catalog import FileEntry, PointEntry, build_payload

    path = f"/photos/{label}/{row:07d}.jpg"
    entry = FileEntry(path, "/photos", path.removeprefix("/photos/"), 100_000, row, label)
    content = {
        "sha256": hashlib.sha256(row.to_bytes(8, "little")).hexdigest(), "size": 100_000,
        "width": 640, "height": 480, "format": "JPEG", "model_id": "bench/clustered",
        "indexed_at": "2026-12-02T00:00:00+00:00",
    }  # fmt: skip
    return build_payload(PointEntry(str(row), {path: entry}, content))


def exact_top10(data: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Row indices of the 10 nearest (cosine) of each query, optionally among ``mask``."""
    scores = queries @ data.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1)[:, :10]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def disk_mib(path: Path) -> float:
    """Bytes used under ``path`` (allocated blocks), in MiB."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


def percentiles(times_ms: list[float]) -> tuple[float, float]:
    """(p50, p99)."""
    values = np.asarray(times_ms)
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


# -- part 1: vectors ----------------------------------------------------------------------------


def dinoseek_store(directory: Path, quantization: str = "none") -> VectorStore:
    """dinoseek's embedded store, opened by the runtime as every command does."""
    settings = Settings(data_dir=directory, collection=COLLECTION, quantization=quantization)
    return Runtime.open(settings, collection="none", model=False).store


def run_dinoseek(
    data: np.ndarray, labels: np.ndarray, queries: QuerySet, directory: Path, quantization: str
) -> dict[str, Any]:
    """dinoseek's store: batched upserts, the index build, single queries."""
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(data))]
    space = EmbeddingSpace("bench/clustered", data.shape[1], {}, tuple(float(v) for v in data[0]))
    meter = common.CpuMeter()
    before = rss_mib()
    with dinoseek_store(directory, quantization) as store:
        store.ensure_collection(COLLECTION, space)
        started = time.perf_counter()
        for start in range(0, len(data), BATCH):
            stop = min(start + BATCH, len(data))
            store.upsert(
                COLLECTION,
                [
                    PointRecord(ids[i], data[i], indexer_payload(i, f"c{labels[i]}"))
                    for i in range(start, stop)
                ],
            )
        upsert_s = time.perf_counter() - started
        started = time.perf_counter()
        store.optimize(COLLECTION)
        optimize_s = time.perf_counter() - started

        def search(query: np.ndarray, label: str | None) -> list[int]:
            filters = {"label": label} if label else {}
            [hits] = store.search(COLLECTION, [SearchQuery(query, top_k=10, filters=filters)])
            return [uuid.UUID(hit.id).int - 1 for hit in hits]

        measured = measure_queries(search, queries)
        measured["store_rss_mib"] = rss_mib() - before
    path = "dinoseek store" + (f" ({quantization})" if quantization != "none" else "")
    return table_row(path, len(data), (upsert_s, optimize_s), measured, directory, meter)


def run_baseline(
    data: np.ndarray, labels: np.ndarray, queries: QuerySet, directory: Path
) -> dict[str, Any]:
    """The plain script on Qdrant Edge: default configuration, no payload index."""
    import qdrant_edge as qe

    meter = common.CpuMeter()
    before = rss_mib()
    shard = qe.EdgeShard.create(
        str(directory),
        qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=data.shape[1], distance=qe.Distance.Cosine)),
    )
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        stop = min(start + BATCH, len(data))
        points = [
            qe.Point(i + 1, data[i].tolist(), {"label": f"c{labels[i]}", "path": f"/x/{i}.jpg"})
            for i in range(start, stop)
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    upsert_s = time.perf_counter() - started
    started = time.perf_counter()
    while shard.optimize():
        pass
    optimize_s = time.perf_counter() - started

    def search(query: np.ndarray, label: str | None) -> list[int]:
        condition = None
        if label:
            match = qe.FieldCondition(key="label", match=qe.MatchValue(label))
            condition = qe.Filter(must=[match])
        request = qe.QueryRequest(
            limit=10, query=qe.Query.Nearest(query.tolist()), filter=condition, with_payload=True
        )
        return [int(point.id) - 1 for point in shard.query(request)]

    measured = measure_queries(search, queries)
    measured["store_rss_mib"] = rss_mib() - before
    shard.close()
    path = "baseline: plain Qdrant Edge"
    return table_row(path, len(data), (upsert_s, optimize_s), measured, directory, meter)


def table_row(
    path: str,
    points: int,
    times: tuple[float, float],
    measured: dict[str, Any],
    directory: Path,
    meter: common.CpuMeter,
) -> dict[str, Any]:
    """One row of the vectors table; ``times``: (upserts, the index build) in seconds."""
    upsert_s, optimize_s = times
    return {
        "path": path,
        "points": points,
        "upsert_per_s": points / upsert_s,
        "upsert_s": upsert_s,
        "optimize_s": optimize_s,
        "indexed_s": upsert_s + optimize_s,
        **measured,
        "disk_mib": disk_mib(directory),
        "other_cores": meter.other_cores(),
    }


@dataclass(frozen=True)
class QuerySet:
    """The queries, the label each filtered query asks for, and the true 10 nearest of each
    (exact search, computed once for every row of the table)."""

    vectors: np.ndarray
    labels: np.ndarray
    truth_all: list[set[int]]
    truth_label: list[set[int]]


def query_set(data: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> QuerySet:
    """Queries with their exact answers, unfiltered and filtered by label."""
    query_labels = labels[np.arange(len(queries)) % len(labels)]
    truth_all, truth_label = [], []
    for query, label in zip(queries, query_labels, strict=True):
        truth_all.append(set(exact_top10(data, query[None, :], None)[0].tolist()))
        truth_label.append(set(exact_top10(data, query[None, :], labels == label)[0].tolist()))
    return QuerySet(queries, query_labels, truth_all, truth_label)


def measure_queries(search: Any, queries: QuerySet) -> dict[str, Any]:
    """Latency percentiles and recall@10 (against exact search), unfiltered and by label."""
    search(queries.vectors[0], None)  # warm
    results: dict[str, Any] = {}
    for name, truths in (("all", queries.truth_all), ("label", queries.truth_label)):
        times, recall = [], []
        for query, label, truth in zip(queries.vectors, queries.labels, truths, strict=True):
            started = time.perf_counter()
            found = search(query, f"c{label}" if name == "label" else None)
            times.append((time.perf_counter() - started) * 1000)
            recall.append(len(truth & set(found)) / len(truth))
        p50, p99 = percentiles(times)
        results[f"p50_{name}_ms"] = p50
        results[f"p99_{name}_ms"] = p99
        results[f"recall_{name}"] = float(np.mean(recall))
    results["peak_rss_mib"] = peak_rss_mib()
    return results


# -- part 2: the catalog ----------------------------------------------------------------------


def write_small_files(folder: Path, count: int, first: int = 0) -> list[Path]:
    """``count`` distinct tiny JPEGs (8x8), numbered from ``first``, in folders of 1,000."""
    from PIL import Image

    paths = []
    rng = np.random.default_rng(first)
    for i in range(first, first + count):
        path = folder / f"d{i // 1000:04d}" / f"{i:07d}.jpg"
        if i % 1000 == 0 or i == first:
            path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def populate_catalog(
    folder: Path, paths: list[Path], model: str, data_dir: Path, collection: str
) -> tuple[int, float]:
    """Write each file's point as ``dinoseek index`` records it (random vectors: the rerun
    never reads them); (points, seconds)."""
    from indexer.catalog import FileEntry, PointEntry, build_payload

    settings = Settings(data_dir=data_dir, collection=collection, model=model, device="cpu")
    started = time.perf_counter()
    with Runtime.open(settings, collection="none") as runtime:
        embedder = runtime.require_embedder()
        runtime.store.ensure_collection(collection, embedder.space)
        rng = np.random.default_rng(1)
        for start in range(0, len(paths), BATCH):
            records = []
            for path in paths[start : start + BATCH]:
                stat = path.stat()
                sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
                entry = FileEntry(
                    str(path), str(folder), path.relative_to(folder).as_posix(),
                    stat.st_size, stat.st_mtime_ns, None,
                )  # fmt: skip
                content = {
                    "sha256": sha256, "size": stat.st_size, "width": 8, "height": 8,
                    "format": "JPEG", "model_id": embedder.model_id, "indexed_at": "2026-12-02",
                }  # fmt: skip
                point = PointEntry(point_id_for_sha256(sha256), {entry.path: entry}, content)
                vector = rng.standard_normal(embedder.space.dim).astype(np.float32)
                records.append(
                    PointRecord(point.id, vector / np.linalg.norm(vector), build_payload(point))
                )
            runtime.store.upsert(collection, records)
        runtime.store.optimize(collection)
    return len(paths), time.perf_counter() - started


def catalog_bytes_per_entry(data_dir: Path, collection: str) -> tuple[float, int]:
    """(bytes per catalog entry, entries): the saved copy read under tracemalloc."""
    from indexer.catalog_cache import catalog_cache_path, load_catalog

    with dinoseek_store(data_dir) as store:
        store.acquire(collection)
        token = store.state_token(collection)
    tracemalloc.start()
    catalog = load_catalog(catalog_cache_path(data_dir, collection), token)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if catalog is None:
        raise RuntimeError(f"no saved catalog of {collection} after a rerun")
    return size / max(1, len(catalog)), len(catalog)


def run_rerun(
    folder: Path, model: str, data_dir: Path, collection: str, timeout_s: float
) -> dict[str, Any]:
    """``dinoseek index`` over the unchanged folder, in a process of its own: wall time, its
    own peak RSS, its summary."""
    command = [
        sys.executable, "-c", common.PEAK_RSS_LAUNCHER, sys.executable, "-m", "indexer",
        str(folder), "--model", model, "--data-dir", str(data_dir), "-c", collection, "--json",
        "--quiet", "--device", "cpu",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=common.child_env(),
        check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"dinoseek index failed:\n{done.stderr[-3000:]}")
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    summary = common.ProcessResult(0, done.stdout, done.stderr, wall, None, None).last_json()
    return {"wall_s": wall, "peak_rss_mib": peak_kib / 1024, "summary": summary}


# -- main -------------------------------------------------------------------------------------

VECTOR_COLUMNS: list[common.Column] = [
    ("path", "path", common.fmt_text),
    ("points", "points", common.fmt_float(0)),
    ("upsert_per_s", "upsert pts/s", common.fmt_float(0)),
    ("indexed_s", "to indexed s", common.fmt_float(1)),
    ("p50_all_ms", "p50 ms", common.fmt_float(2)),
    ("p99_all_ms", "p99 ms", common.fmt_float(2)),
    ("p50_label_ms", "p50 label ms", common.fmt_float(2)),
    ("p99_label_ms", "p99 label ms", common.fmt_float(2)),
    ("recall_all", "recall@10", common.fmt_float(3)),
    ("recall_label", "recall@10 label", common.fmt_float(3)),
    ("store_rss_mib", "store RSS MiB", common.fmt_float(0)),
    ("disk_mib", "disk MiB", common.fmt_float(0)),
    ("other_cores", "other CPU", common.fmt_float(2)),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options."""
    parser = argparse.ArgumentParser(
        prog="python bench/scale.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--points", type=int, default=1_000_000, help="vectors (0: skip)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=100, help="clusters, one label each")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--files", type=int, default=200_000, help="real files (0: skip)")
    parser.add_argument("--model", default="random:tiny", help="the model of the rerun")
    parser.add_argument("--no-baseline", action="store_true", help="skip plain Qdrant Edge")
    parser.add_argument(
        "--quantizations",
        type=common.split_list,
        default=["none", "int8"],
        help="dinoseek's store with each of these (comma-separated) [none,int8]",
    )
    parser.add_argument("--out", type=Path, help="write scale.json here")
    parser.add_argument("--cache", type=Path, default=common.DEFAULT_CACHE)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds for the rerun")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3,000 points, 300 files")
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.dim, args.queries, args.files = 3000, 64, 20, 300
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; print the tables."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    info = common.machine_info("cpu")
    print(common.describe_machine(info))
    print(f"command: {common.command_line()}\n")
    document: dict[str, Any] = {"benchmark": "scale", "command": common.command_line()}
    document["machine"] = info
    work = Path(tempfile.mkdtemp(prefix="dinoseek-bench-scale-"))
    try:
        if args.points:
            document["vectors"] = vectors_part(args, work)
        if args.files:
            document["catalog"] = catalog_part(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = common.write_results(args.out, "scale", document)
    if path is not None:
        print(f"results written to {path}")
    return 0


def vectors_part(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Part 1: the table of dinoseek's store and the baseline."""
    print(f"vectors: {args.points:,} x {args.dim}, {args.clusters} clusters", flush=True)
    data, labels, query_vectors = clustered_vectors(
        args.points, args.dim, args.clusters, seed=0, queries=args.queries
    )
    queries = query_set(data, labels, query_vectors)
    rows = []
    for quantization in args.quantizations:
        row = run_dinoseek(data, labels, queries, work / f"dinoseek-{quantization}", quantization)
        print(f"  {row['path']}: {row['indexed_s']:.1f} s to indexed", flush=True)
        rows.append(row)
    if not args.no_baseline:
        rows.append(run_baseline(data, labels, queries, work / "baseline"))
    print()
    print(common.format_table(rows, VECTOR_COLUMNS))
    if not args.no_baseline:
        ours, base = rows[0], rows[-1]
        print(
            f"dinoseek store: {base['p50_label_ms'] / ours['p50_label_ms']:.2f}x the plain "
            f"script's speed on filtered queries, {base['p50_all_ms'] / ours['p50_all_ms']:.2f}x "
            "on unfiltered ones"
        )
    print(
        "store RSS: this process's resident memory after the queries less before the store "
        "opened (the generated vectors not counted). other CPU: cores' "
        "worth used by other processes during the row: distrust a row where it is not near 0\n"
    )
    return rows


def catalog_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part 2: no-change reruns over half the files and over all of them (two sizes: the
    growth per file, extrapolated to a million), and the catalog's memory."""
    print(f"catalog: {args.files:,} small files", flush=True)
    folder = work / "files"
    half = args.files // 2
    started = time.perf_counter()
    halves = (
        write_small_files(folder / "half", half),
        write_small_files(folder / "rest", args.files - half, first=half),
    )
    written_s = time.perf_counter() - started
    model = common.resolve_model(args.model, args.cache.resolve())
    data_dir = work / "catalog-data"
    sizes = {"half": (folder / "half", halves[0]), "all": (folder, halves[0] + halves[1])}
    result: dict[str, Any] = {"files": args.files, "write_files_s": written_s}
    for name, (root, paths) in sizes.items():
        _, populate_s = populate_catalog(root, paths, model, data_dir, name)
        first = run_rerun(root, model, data_dir, name, args.timeout)  # reads the store
        again = run_rerun(root, model, data_dir, name, args.timeout)  # reads the saved copy
        result[name] = {
            "files": len(paths),
            "populate_s": populate_s,
            "first_wall_s": first["wall_s"],
            "first_peak_rss_mib": first["peak_rss_mib"],
            "first_catalog_source": first["summary"].get("catalog_source"),
            "wall_s": again["wall_s"],
            "peak_rss_mib": again["peak_rss_mib"],
            "catalog_source": again["summary"].get("catalog_source"),
            "unchanged": again["summary"].get("unchanged"),
        }
        print(
            f"  {len(paths):,} files: first rerun {first['wall_s']:.1f} s, "
            f"{first['peak_rss_mib']:.0f} MiB ({first['summary'].get('catalog_source')}); "
            f"next {again['wall_s']:.1f} s, {again['peak_rss_mib']:.0f} MiB "
            f"({again['summary'].get('catalog_source')})",
            flush=True,
        )
    per_entry, entries = catalog_bytes_per_entry(data_dir, "all")
    result["catalog_entries"] = entries
    result["catalog_bytes_per_entry"] = per_entry
    result["catalog_mib_at_1m"] = per_entry * 1_000_000 / 2**20
    for key in ("first_wall_s", "first_peak_rss_mib", "wall_s", "peak_rss_mib"):
        result[f"{key}_at_1m"] = at_a_million(result["half"], result["all"], key)
    print(
        f"no-change rerun at 1M files (from the growth between {half:,} and {args.files:,}): "
        f"{result['wall_s_at_1m']:.0f} s, {result['peak_rss_mib_at_1m']:.0f} MiB; the first "
        f"after a change (reading the store): {result['first_wall_s_at_1m']:.0f} s, "
        f"{result['first_peak_rss_mib_at_1m']:.0f} MiB; catalog {per_entry:.0f} bytes per "
        f"entry ({result['catalog_mib_at_1m']:.0f} MiB at 1M)\n"
    )
    return result


def at_a_million(small: dict[str, Any], large: dict[str, Any], key: str) -> float:
    """``key`` at a million files, growing from ``large`` as it grew from ``small``."""
    per_file = (large[key] - small[key]) / max(1, large["files"] - small["files"])
    return float(large[key] + per_file * (1_000_000 - large["files"]))


if __name__ == "__main__":
    sys.exit(main())
