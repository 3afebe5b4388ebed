"""Search by region against whole-image search (the CLS vector), and what regions cost.

One run, the same model, images and queries for both:

- quality: N synthetic 500x375 images; queries are crops of 5-20% of an image's area.
  ``crop``: the answer is the image it was cut from. ``pasted``: the same crops pasted at a
  random place into N other images; the answer is the image that now holds it. ``box``: each
  source image queried by the box of its crop (the query's own patch tokens in the box)
  against the pasted images. Top-1 and top-5 of the CLS vector alone (the baseline: what
  whole-image search finds) and of region search, through dinoseek's own index and search
  path; and how many crops lie wholly in the part of their image the model sees.
- layouts: the same queries scored exactly in numpy for other layouts of windows (vectors and
  bytes per image), to show why dinoseek stores 2x2 + 3x3 + 4x4.
- index: ``index_folders`` of the same N images without and with regions (images/s).
- store: query p50 at ``--store-images`` images (synthetic unit vectors of ``--store-dim``)
  with dinoseek's region multivector (int8, no graph: a scan of every image's windows)
  against CLS-only search of the same images; and the alternative layout (one point per
  window, HNSW, grouped by image) at ``--alt-images``.
- correspondence: the latency of ``match_images`` (one forward pass of two images, mutual
  nearest neighbours of their patch tokens).

    python bench/regions.py --model random:tiny --images 200 --store-images 100000

Speed does not depend on the weights; quality does: a random-weight model is no DINOv2,
see bench/RESULTS.md for what a trained one is expected to do.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    DEFAULT_CACHE,
    command_line,
    describe_machine,
    fmt_float,
    fmt_ratio,
    fmt_text,
    format_table,
    machine_info,
    open_embedder,
    resolve_model,
    write_results,
)
from PIL import Image
from regions_store import bench_store, store_rows

from dinoseek.correspondence import match_images
from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.images import prepare_image
from dinoseek.input_geometry import InputGeometry
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek.region_search import search_image_regions
from dinoseek.regions import Box, RegionSpec, normalised, pooling_rows
from dinoseek.search import Searcher
from dinoseek.search_types import LabelRequest, NeighbourQuery
from dinoseek.store import VectorStore
from dinoseek.synthetic import CLASS_NAMES, draw_image
from indexer.pipeline import IndexOptions, index_folders

MAX_PIXELS = 40_000_000
LAYOUTS: dict[str, tuple[int, ...]] = {
    "2x2+3x3+4x4 (dinoseek)": (2, 3, 4),
    "2x2": (2,),
    "2x2+3x3": (2, 3),
    "1x1+2x2+3x3+4x4": (1, 2, 3, 4),
    "2x2+...+5x5": (2, 3, 4, 5),
}


@dataclass(frozen=True)
class Crop:
    """A query: the crop's JPEG, the index of its source and of its host, and its box in the
    source and in the host (fractions of each)."""

    data: bytes
    source: int
    host: int
    in_source: Box
    in_host: Box


def make_data(folder: Path, count: int, seed: int) -> list[Crop]:
    """``count`` sources and ``count`` hosts as JPEGs under ``folder``; crop i of source i is
    pasted into host (i + 1) % count."""
    rng = random.Random(seed)
    (folder / "sources").mkdir(parents=True)
    (folder / "hosts").mkdir(parents=True)
    sources = [draw_image(rng, CLASS_NAMES[i % 8]) for i in range(count)]
    hosts = [draw_image(rng, CLASS_NAMES[(i + 3) % 8]) for i in range(count)]
    crops = []
    for i, source in enumerate(sources):
        area, aspect = rng.uniform(0.05, 0.20), rng.uniform(0.75, 1.33)
        width = min(source.width, int(source.width * (area * aspect) ** 0.5))
        height = min(source.height, int(source.height * (area / aspect) ** 0.5))
        x, y = rng.randrange(source.width - width + 1), rng.randrange(source.height - height + 1)
        piece = source.crop((x, y, x + width, y + height))
        host_index = (i + 1) % count
        host = hosts[host_index]
        hx, hy = rng.randrange(host.width - width + 1), rng.randrange(host.height - height + 1)
        host.paste(piece, (hx, hy))
        crops.append(
            Crop(
                _jpeg(piece),
                i,
                host_index,
                _box(x, y, width, height, source),
                _box(hx, hy, width, height, host),
            )
        )
    for i, (source, host) in enumerate(zip(sources, hosts, strict=True)):
        source.save(folder / "sources" / f"source_{i:05d}.jpg", "JPEG", quality=90)
        host.save(folder / "hosts" / f"host_{i:05d}.jpg", "JPEG", quality=90)
    return crops


def _jpeg(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _box(x: int, y: int, width: int, height: int, image: Image.Image) -> Box:
    return Box(x / image.width, y / image.height, width / image.width, height / image.height)


def visible(box: Box, size: tuple[int, int]) -> bool:
    """Whether ``box`` lies wholly in the part of an image of ``size`` the model sees."""
    seen = InputGeometry.of(DINOV2_PREPROCESSING, *size).visible()
    inside = box.intersect(seen)
    return inside is not None and inside.w * inside.h >= 0.999 * box.w * box.h


# -- quality through dinoseek's path ---------------------------------------------------------


def index(
    embedder: ImageEmbedder, store: VectorStore, folder: Path, name: str, regions: bool
) -> dict[str, Any]:
    """Index ``folder`` into collection ``name`` (decoding on this process's thread)."""
    options = IndexOptions(
        roots=(folder,),
        collection=name,
        failures_report=folder.parent / f"{name}.failures.jsonl",
        workers=0,
        progress="off",
        regions=regions,
    )
    summary = index_folders(embedder, store, options)
    return {"images": summary.embedded, "images_per_s": summary.images_per_s}


def rank_of(paths: Sequence[str | None], wanted: str) -> int | None:
    return paths.index(wanted) + 1 if wanted in paths else None


def quality(
    embedder: ImageEmbedder, store: VectorStore, folder: Path, crops: list[Crop]
) -> list[dict[str, Any]]:
    """Top-1 and top-5 of CLS and region search for the crop, pasted and box queries."""
    searcher = Searcher(store, embedder, max_image_pixels=MAX_PIXELS)
    top5, labels = NeighbourQuery(top_k=5), LabelRequest(with_labels=False)
    sources = sorted((folder / "sources").glob("*.jpg"))
    hosts = sorted((folder / "hosts").glob("*.jpg"))
    rows = []
    cases: list[tuple[str, str, list[Path], Callable[[Crop], int]]] = [
        ("crop", "sources-regions", sources, lambda c: c.source),
        ("pasted", "hosts-regions", hosts, lambda c: c.host),
    ]
    for case, collection, files, answer in cases:
        cls_ranks, region_ranks, times, cls_times = [], [], [], []
        for crop in crops:
            wanted = str(files[answer(crop)])
            started = time.perf_counter()
            (whole,) = searcher.search_images(collection, [(crop.data, "crop.jpg")], top5, labels)
            cls_times.append(time.perf_counter() - started)
            assert not isinstance(whole, Exception)
            cls_ranks.append(rank_of([n.path for n in whole.neighbours], wanted))
            started = time.perf_counter()
            found = search_image_regions(
                searcher, collection, (crop.data, "crop.jpg"), None, top5, labels
            )
            times.append(time.perf_counter() - started)
            region_ranks.append(rank_of([n.path for n in found.neighbours], wanted))
        sizes = [Image.open(files[answer(c)]).size for c in crops]
        boxes = [c.in_source if case == "crop" else c.in_host for c in crops]
        seen = [visible(b, s) for b, s in zip(boxes, sizes, strict=True)]
        rows += _rows(case, cls_ranks, region_ranks, seen, times, cls_times)
    # The box of each crop in its source, against the hosts: the query's own tokens in it.
    cls_ranks, region_ranks, times, seen, cls_times = [], [], [], [], []
    for crop in crops:
        data = sources[crop.source].read_bytes()
        wanted = str(hosts[crop.host])
        started = time.perf_counter()
        (whole,) = searcher.search_images("hosts-regions", [(data, "q.jpg")], top5, labels)
        cls_times.append(time.perf_counter() - started)
        assert not isinstance(whole, Exception)
        cls_ranks.append(rank_of([n.path for n in whole.neighbours], wanted))
        started = time.perf_counter()
        try:
            found = search_image_regions(
                searcher, "hosts-regions", (data, "q.jpg"), crop.in_source, top5, labels
            )
            region_ranks.append(rank_of([n.path for n in found.neighbours], wanted))
        except Exception:  # noqa: BLE001 - a box the model does not see: a miss, counted
            region_ranks.append(None)
        times.append(time.perf_counter() - started)
        seen.append(visible(crop.in_source, Image.open(sources[crop.source]).size))
    rows += _rows("box", cls_ranks, region_ranks, seen, times, cls_times)
    return rows


def _rows(
    case: str,
    cls_ranks: list[int | None],
    region_ranks: list[int | None],
    seen: list[bool],
    times: list[float],
    cls_times: list[float],
) -> list[dict[str, Any]]:
    def top(ranks: list[int | None], k: int, where: list[bool] | None = None) -> float:
        chosen = [r for r, s in zip(ranks, where or [True] * len(ranks), strict=True) if s]
        return sum(1 for r in chosen if r is not None and r <= k) / max(1, len(chosen))

    seen_share = sum(seen) / len(seen)
    baseline = {
        "case": case,
        "path": "baseline: CLS vector (whole-image search)",
        "queries": len(cls_ranks),
        "seen": seen_share,
        "top1": top(cls_ranks, 1),
        "top5": top(cls_ranks, 5),
        "top1_seen": top(cls_ranks, 1, seen),
        "query_p50_ms": 1000 * float(np.median(cls_times)),
    }
    ours = {
        "case": case,
        "path": "dinoseek: region search",
        "queries": len(region_ranks),
        "seen": seen_share,
        "top1": top(region_ranks, 1),
        "top5": top(region_ranks, 5),
        "top1_seen": top(region_ranks, 1, seen),
        "query_p50_ms": 1000 * float(np.median(times)),
    }
    ours["x_top1"] = ours["top1"] / baseline["top1"] if baseline["top1"] else None
    ours["x_top5"] = ours["top5"] / baseline["top5"] if baseline["top5"] else None
    return [baseline, ours]


# -- layouts, exactly in numpy ---------------------------------------------------------------


def tokens_of(embedder: ImageEmbedder, datas: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """CLS vectors and raw patch tokens of encoded images."""
    cls, tokens = [], []
    for start in range(0, len(datas), 16):
        pixels = np.stack(
            [
                prepare_image(d, embedder.preprocessing, max_pixels=MAX_PIXELS).pixels
                for d in datas[start : start + 16]
            ]
        )
        embedded = embedder.embed_with_patches(pixels)
        cls.append(embedded.cls)
        tokens.append(embedded.patch_tokens)
    return np.concatenate(cls), np.concatenate(tokens)


def layouts(embedder: ImageEmbedder, folder: Path, crops: list[Crop]) -> list[dict[str, Any]]:
    """Top-1 and top-5 of each layout of windows, for the crop and pasted queries."""
    grid = embedder.patch_grid
    files = {
        "crop": sorted((folder / "sources").glob("*.jpg")),
        "pasted": sorted((folder / "hosts").glob("*.jpg")),
    }
    _, query_tokens = tokens_of(embedder, [c.data for c in crops])
    whole = pooling_rows([Box.whole()], grid)[0]
    queries = normalised(query_tokens.transpose(0, 2, 1) @ whole)
    rows = []
    for case, paths in files.items():
        _, stored = tokens_of(embedder, [p.read_bytes() for p in paths])
        answers = np.array([c.source if case == "crop" else c.host for c in crops])
        for name, grids in LAYOUTS.items():
            spec = RegionSpec(grid, grids=grids)
            windows = normalised(np.einsum("rp,npd->nrd", spec.pooling_matrix(), stored))
            scores = np.einsum("qd,nrd->qnr", queries, windows).max(axis=2)
            order = np.argsort(-scores, axis=1)
            rows.append(
                {
                    "case": case,
                    "layout": name,
                    "vectors": spec.count,
                    "bytes": spec.count * embedder.dim * 5,  # float32 stored + int8 copy
                    "top1": float(np.mean(order[:, 0] == answers)),
                    "top5": float(
                        np.mean([a in o[:5] for o, a in zip(order, answers, strict=True)])
                    ),
                }
            )
    return rows


# -- correspondence --------------------------------------------------------------------------


def correspondence(embedder: ImageEmbedder, folder: Path, pairs: int) -> dict[str, Any]:
    """p50 of ``match_images`` (decoded images, one forward pass of two, mutual neighbours)."""
    sources = sorted((folder / "sources").glob("*.jpg"))
    hosts = sorted((folder / "hosts").glob("*.jpg"))
    prepared = [
        (
            prepare_image(a.read_bytes(), embedder.preprocessing, max_pixels=MAX_PIXELS),
            prepare_image(b.read_bytes(), embedder.preprocessing, max_pixels=MAX_PIXELS),
        )
        for a, b in list(zip(sources, hosts, strict=True))[:pairs]
    ]
    match_images(embedder, *prepared[0], max_pairs=20)  # warm
    times = []
    for a, b in prepared:
        started = time.perf_counter()
        match_images(embedder, a, b, max_pairs=20)
        times.append(1000 * (time.perf_counter() - started))
    return {"pairs": len(times), "match_p50_ms": float(np.median(times))}


def main() -> None:
    """Run every part and print its table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--store-images", type=int, default=100_000, help="0: skip the store part")
    parser.add_argument("--store-dim", type=int, default=768)
    parser.add_argument("--alt-images", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a test")
    args = parser.parse_args()
    if args.quick:
        args.images, args.store_images, args.store_dim, args.alt_images, args.queries = (
            24, 2000, 64, 300, 20,
        )  # fmt: skip
    info = machine_info("cpu")
    print(describe_machine(info))
    model = resolve_model(args.model, args.cache.resolve())
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-regions-"))
    document: dict[str, Any] = {"command": command_line(), "machine": info, "model": args.model}
    try:
        crops = make_data(workdir / "images", args.images, args.seed)
        with (
            open_embedder(model, "cpu", "float32") as embedder,
            bench_store(workdir / "data") as runtime,
        ):
            store = runtime.store
            index_rows = []
            for regions in (False, True):
                suffix = "regions" if regions else "plain"
                for folder in ("sources", "hosts"):
                    done = index(
                        embedder, store, workdir / "images" / folder, f"{folder}-{suffix}", regions
                    )
                    if folder == "sources":
                        index_rows.append(
                            {
                                "path": f"dinoseek index{' --regions' if regions else ''}",
                                **done,
                            }
                        )
            index_rows[1]["x_rate"] = index_rows[1]["images_per_s"] / index_rows[0]["images_per_s"]
            quality_rows = quality(embedder, store, workdir / "images", crops)
            layout_rows = layouts(embedder, workdir / "images", crops)
            match_row = correspondence(embedder, workdir / "images", min(20, args.images))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nquality: {args.images} images, {args.model}, crops of 5-20% of the area")
    print(
        format_table(
            quality_rows,
            [
                ("case", "case", fmt_text),
                ("path", "path", fmt_text),
                ("queries", "queries", fmt_float(0)),
                ("seen", "crops wholly seen", fmt_float(2)),
                ("top1", "top-1", fmt_float(3)),
                ("top5", "top-5", fmt_float(3)),
                ("top1_seen", "top-1 (wholly seen)", fmt_float(3)),
                ("query_p50_ms", "query p50 ms", fmt_float(1)),
                ("x_top1", "x top-1", fmt_ratio),
                ("x_top5", "x top-5", fmt_ratio),
            ],
        )
    )
    print("\nlayouts of windows (exact MaxSim in numpy, the same queries)")
    print(
        format_table(
            layout_rows,
            [
                ("case", "case", fmt_text),
                ("layout", "layout", fmt_text),
                ("vectors", "vectors/image", fmt_float(0)),
                ("bytes", "bytes/image (float32 + int8)", fmt_float(0)),
                ("top1", "top-1", fmt_float(3)),
                ("top5", "top-5", fmt_float(3)),
            ],
        )
    )
    print(f"\nindexing {args.images} images (decoded on the indexer's thread)")
    print(
        format_table(
            index_rows,
            [
                ("path", "path", fmt_text),
                ("images", "images", fmt_float(0)),
                ("images_per_s", "img/s", fmt_float(1)),
                ("x_rate", "x rate", fmt_ratio),
            ],
        )
    )
    print(
        f"\ncorrespondence: match_images p50 {match_row['match_p50_ms']:.1f} ms "
        f"over {match_row['pairs']} pairs"
    )
    store_table = []
    if args.store_images:
        store_table = store_rows(args.store_images, args.store_dim, args.alt_images, args.queries)
        print(f"\nthe store: {args.store_dim}-d synthetic vectors, top 10, {args.queries} queries")
        print_store(store_table)
    document.update(
        quality=quality_rows,
        layouts=layout_rows,
        index=index_rows,
        match=match_row,
        store=store_table,
    )
    write_results(args.out, "regions", document)


def print_store(rows: list[dict[str, Any]]) -> None:
    """The store's table."""
    print(
        format_table(
            rows,
            [
                ("layout", "layout", fmt_text),
                ("images", "images", fmt_float(0)),
                ("vectors", "vectors", fmt_float(0)),
                ("upsert_s", "upsert s", fmt_float(1)),
                ("optimize_s", "optimize s", fmt_float(1)),
                ("query_p50_ms", "query p50 ms", fmt_float(2)),
                ("query_p99_ms", "query p99 ms", fmt_float(2)),
                ("x_query", "x query (vs CLS)", fmt_ratio),
            ],
        )
    )


if __name__ == "__main__":
    main()
