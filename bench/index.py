"""Benchmark: ``dinoseek index`` against the plain one-image-at-a-time script, in one run.

On the same folder of images, each in a fresh process so that none disturbs another:

- **baseline** (``bench/baseline_index.py``), the script the DINOv2 model card leads a user to
  write: for each file ``Image.open(path).convert("RGB")``, ``AutoImageProcessor`` (from the
  same model directory) with ``return_tensors="pt"``, an fp32 ``AutoModel`` forward of that one
  image under ``torch.no_grad()`` on the chosen device, ``last_hidden_state[:, 0]``,
  L2-normalised, and an upsert of that one point into a fresh Qdrant Edge shard
  (``qdrant_edge`` used directly, one ``update`` call per image, as a loop written by hand
  does). torch keeps its default thread count: that is what a user gets.
- **dinoseek**: ``python -m indexer DIR --model M --data-dir FRESH --json --quiet
  --batch-size B --device D [--workers W]`` (the ``dinoseek index`` command) as a subprocess,
  timed end to end from spawn to exit (interpreter start, imports, model load, scan, decode,
  embed, upsert, index build). Its own ``images_per_s`` (the pipeline, without start-up) is
  reported too.
- **model only**: ``Embedder.embed_pixels`` on a preprocessed uint8 batch of the same size,
  repeated (no decode, no store): the model's own batched throughput, the ceiling of the
  indexer. On CPU it runs with torch's default threads (all cores) and again with the threads
  dinoseek gives torch next to its decode workers (``share_cpu_with_workers``).

The table shows images/s, the ratio to the baseline (end to end, and without start-up) and
the share of the model-only throughput the indexer reaches. ``--out DIR`` writes the same as
JSON with the machine description. ``--quick`` is a seconds-long smoke run (tiny model).

Run ``python bench/index.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

WORKER = "_worker"

COLUMNS: list[common.Column] = [
    ("path", "path", common.fmt_text),
    ("model", "model", common.fmt_text),
    ("batch", "batch", common.fmt_text),
    ("threads", "torch threads", common.fmt_text),
    ("images", "images", common.fmt_text),
    ("wall_s", "wall s", common.fmt_float(1)),
    ("wall_rate", "img/s e2e", common.fmt_float(1)),
    ("steady_rate", "img/s steady", common.fmt_float(1)),
    ("x_wall", "vs baseline e2e", common.fmt_ratio),
    ("x_steady", "vs baseline steady", common.fmt_ratio),
    ("of_model", "of model-only", common.fmt_percent),
    ("gpu_mib", "peak GPU MiB", common.fmt_float(0)),
    ("other_cores", "other CPU", common.fmt_float(2)),
]


# -- workers: each runs in a fresh process -----------------------------------------------------


def model_worker(
    model: str, data: Path, device: str, dtype: str, batch: int, images: int, threads: int
) -> dict[str, Any]:
    """The embedder's own batched throughput on preprocessed pixels (no decode, no store)."""
    import numpy as np
    import torch

    from dinoseek.images import load_image

    if threads > 0:
        torch.set_num_threads(threads)
    with common.open_embedder(model, device, dtype) as embedder:
        files = common.list_images(data)[:batch]
        to_pixels = embedder.preprocessing.to_pixels
        prepared = [to_pixels(load_image(p, max_pixels=10**9).image) for p in files]
        pixels = np.stack([prepared[i % len(prepared)] for i in range(batch)])
        for _ in range(2):  # warm-up: the first passes pay one-time costs
            embedder.embed_pixels(pixels)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        repeats = max(3, math.ceil(images / batch))
        started = time.perf_counter()
        for _ in range(repeats):
            embedder.embed_pixels(pixels)  # returns numpy: the device is synchronised
        elapsed = time.perf_counter() - started
        return {
            "images": repeats * batch,
            "seconds": round(elapsed, 3),
            "rate": round(repeats * batch / elapsed, 2),
            "threads": torch.get_num_threads(),
            "dtype": embedder.describe()["dtype"],
            "gpu_alloc_mib": _peak_alloc_mib(torch, device),
        }


def _peak_alloc_mib(torch: Any, device: str) -> float | None:
    if device != "cuda":
        return None
    return round(float(torch.cuda.max_memory_allocated()) / 2**20, 1)


def worker_main(argv: list[str]) -> None:
    """Entry point of a worker process: print one JSON line."""
    import json

    parser = argparse.ArgumentParser(prog="bench/index.py _worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    result = model_worker(
        args.model, args.data, args.device, args.dtype, args.batch, args.images, args.threads
    )
    print(json.dumps(result))


# -- the parent: runs everything and compares ------------------------------------------------


def dinoseek_workers(device: str, cores: int, asked: int | None) -> int:
    """Decode processes ``dinoseek index`` uses (as ``runtime.default_decode_workers``)."""
    if asked is not None:
        return asked
    if device == "cuda":
        return min(16, cores)
    return 0 if cores <= 4 else cores // 4


def dinoseek_threads(device: str, cores: int, workers: int) -> int | None:
    """torch threads ``dinoseek index`` sets (mirrors ``share_cpu_with_workers``); None when
    it leaves torch's default (on cuda, or with OMP_NUM_THREADS set)."""
    if device != "cpu" or "OMP_NUM_THREADS" in os.environ or workers <= 0:
        return None
    return max(1, cores - workers)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options."""
    parser = argparse.ArgumentParser(
        prog="python bench/index.py",
        description="dinoseek index against the plain one-image-at-a-time script, in one run.",
    )
    parser.add_argument("--images", type=int, help="synthetic images [200 on cpu, 2000 on cuda]")
    parser.add_argument("--data", type=Path, help="a folder of images instead (all are used)")
    parser.add_argument(
        "--models",
        help="comma-separated: random:SIZE (tiny, small, base, large, giant), a local model "
        "directory or a hub id [random:small on cpu, random:base on cuda]",
    )
    parser.add_argument(
        "--batch-sizes", help="comma-separated dinoseek batch sizes [8,16 on cpu, 64,256 on cuda]"
    )
    parser.add_argument("--workers", type=int, help="dinoseek decode processes [its default]")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dinoseek's dtype (and model-only's) [auto: bfloat16 on cuda, float32 on cpu]; "
        "the baseline is always float32",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain script")
    parser.add_argument("--out", type=Path, help="write index.json (results + machine) here")
    parser.add_argument(
        "--cache", type=Path, default=common.DEFAULT_CACHE, help="generated models and images"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measured run")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: random:tiny, 16 images, batch 8"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images = args.images or 16
        args.models = args.models or "random:tiny"
        args.batch_sizes = args.batch_sizes or "8"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the machine, the table and the ratios."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == WORKER:
        worker_main(argv[1:])
        return 0
    args = parse_args(argv)
    info = common.machine_info(args.device)
    print(common.describe_machine(info))
    device = common.resolve_device(args.device, info)
    cuda = device == "cuda"
    images = args.images or (2000 if cuda else 200)
    models = common.split_list(args.models or ("random:base" if cuda else "random:small"))
    batch_sizes = common.split_ints(args.batch_sizes or ("64,256" if cuda else "8,16"))
    cache: Path = args.cache.resolve()
    folder, files = common.prepare_data(args.data, images, cache)
    cores = int(info["usable_cores"])
    workers = dinoseek_workers(device, cores, args.workers)
    ds_threads = dinoseek_threads(device, cores, workers)
    print(
        f"data: {len(files)} images in {folder}; device {device}; dinoseek: {workers} decode "
        f"process(es), torch threads {ds_threads or 'default'}; baseline: torch's default threads"
    )
    print(f"command: {common.command_line()}\n")

    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="dinoseek-bench-index-"))
    try:
        for spec in models:
            model = common.resolve_model(spec, cache)
            env = common.child_env({"HF_HUB_OFFLINE": "1"} if os.path.isdir(model) else None)
            base = None if args.no_baseline else run_baseline(args, spec, model, folder, device)
            if base is not None:
                rows.append(base)
            for batch in batch_sizes:
                model_rows = run_model_only(
                    args, spec, model, folder, device, batch, len(files), ds_threads
                )
                rows.extend(model_rows)
                ds = run_dinoseek(
                    args, spec, model, folder, device, batch, workers, ds_threads, work, env
                )
                ds["x_wall"] = _ratio(ds["wall_rate"], base["wall_rate"] if base else None)
                ds["x_steady"] = _ratio(ds["steady_rate"], base["steady_rate"] if base else None)
                ds["of_model"] = _ratio(ds["steady_rate"], model_rows[0]["steady_rate"])
                for row in model_rows:
                    reference = base["steady_rate"] if base else None
                    row["x_steady"] = _ratio(row["steady_rate"], reference)
                rows.append(ds)
                print(summary_line(ds, model_rows), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(common.format_table(rows, COLUMNS))
    print(NOTES.format(cuda_note=CUDA_NOTE if cuda else ""))
    path = common.write_results(
        args.out,
        "index",
        {
            "benchmark": "index",
            "command": common.command_line(),
            "machine": info,
            "device": device,
            "data": {"folder": str(folder), "images": len(files)},
            "dinoseek": {"workers": workers, "torch_threads": ds_threads},
            "rows": rows,
        },
    )
    if path is not None:
        print(f"results written to {path}")
    return 0


NOTES = """
e2e: images / wall time of the whole process (interpreter start, imports, model load included).
steady: without start-up: the baseline's loop; dinoseek's own images_per_s (scan to last upsert,
decode workers' start included); model-only: repeated batches after a warm-up.
of model-only: dinoseek steady / model-only (torch's default threads, same batch).
other CPU: cores' worth of CPU used by other processes (and the hypervisor) during the run:
near 0 on a quiet machine; distrust a row where it is not.{cuda_note}"""

CUDA_NOTE = """
peak GPU MiB: torch.cuda.max_memory_allocated for baseline and model-only (tensors only);
for dinoseek index (a subprocess) the device-wide peak from nvidia-smi above the starting point
(CUDA context included), or '-' without nvidia-smi."""


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 3)


def _worker_command(*options: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), WORKER, *options]


def run_baseline(
    args: argparse.Namespace, spec: str, model: str, folder: Path, device: str
) -> dict[str, Any]:
    """The plain script, end to end in its own process."""
    store = Path(tempfile.mkdtemp(prefix="dinoseek-bench-baseline-")) / "shard"
    env = common.child_env({"HF_HUB_OFFLINE": "1"} if os.path.isdir(model) else None)
    print(f"[{spec}] baseline: the plain script ...", flush=True)
    try:
        done = common.run_process(
            [
                sys.executable, str(common.BENCH_DIR / "baseline_index.py"), "--model", model,
                "--data", str(folder), "--device", device, "--store", str(store),
            ],
            timeout_s=args.timeout,
            env=env,
            poll_gpu=device == "cuda",
        )  # fmt: skip
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)
    result = common.check_process(done, "the baseline").last_json()
    if result["points"] != result["images"]:
        print(f"  warning: baseline stored {result['points']} of {result['images']} images")
    return {
        "path": "baseline: plain script",
        "model": spec,
        "batch": 1,
        "threads": f"{result['threads']} (default)",
        "images": result["images"],
        "wall_s": round(done.wall_s, 2),
        "wall_rate": round(result["images"] / done.wall_s, 2),
        "steady_s": result["loop_s"],
        "steady_rate": round(result["images"] / result["loop_s"], 2),
        "x_wall": 1.0,
        "x_steady": 1.0,
        "gpu_mib": result["gpu_alloc_mib"],
        "other_cores": done.other_cores,
        "details": {**result, "gpu_smi_peak_mib": done.gpu_peak_mib},
    }


def run_model_only(
    args: argparse.Namespace,
    spec: str,
    model: str,
    folder: Path,
    device: str,
    batch: int,
    images: int,
    ds_threads: int | None,
) -> list[dict[str, Any]]:
    """Model-only throughput with torch's default threads, then (not with --quick) with the
    threads dinoseek sets, if those differ."""
    env = common.child_env({"HF_HUB_OFFLINE": "1"} if os.path.isdir(model) else None)
    rows: list[dict[str, Any]] = []
    for threads, label in ((0, "default"), (ds_threads or 0, "as dinoseek sets them")):
        if rows and (args.quick or not threads or threads == rows[0]["details"]["threads"]):
            break
        print(f"[{spec}] model only, batch {batch}, threads {label} ...", flush=True)
        done = common.run_process(
            _worker_command(
                "--model", model, "--data", str(folder), "--device", device,
                "--dtype", args.dtype, "--batch", str(batch), "--images", str(images),
                "--threads", str(threads),
            ),
            timeout_s=args.timeout,
            env=env,
        )  # fmt: skip
        result = common.check_process(done, "the model-only run").last_json()
        rows.append(
            {
                "path": f"model only ({result['dtype']})",
                "model": spec,
                "batch": batch,
                "threads": f"{result['threads']} ({label})",
                "images": result["images"],
                "steady_s": result["seconds"],
                "steady_rate": result["rate"],
                "gpu_mib": result["gpu_alloc_mib"],
                "other_cores": done.other_cores,
                "details": result,
            }
        )
    return rows


def run_dinoseek(
    args: argparse.Namespace,
    spec: str,
    model: str,
    folder: Path,
    device: str,
    batch: int,
    workers: int,
    ds_threads: int | None,
    work: Path,
    env: dict[str, str],
) -> dict[str, Any]:
    """``dinoseek index`` into a fresh data directory, end to end."""
    data_dir = work / f"data-{time.monotonic_ns()}"
    command = [
        sys.executable, "-m", "indexer", str(folder), "--model", model,
        "--data-dir", str(data_dir), "--json", "--quiet", "--batch-size", str(batch),
        "--device", device,
    ]  # fmt: skip
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.dtype != "auto":
        command += ["--dtype", args.dtype]
    print(f"[{spec}] dinoseek index, batch {batch} ...", flush=True)
    try:
        done = common.run_process(
            command, timeout_s=args.timeout, env=env, poll_gpu=device == "cuda"
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = common.check_process(done, "dinoseek index").last_json()
    if summary.get("embedded") != summary.get("scanned") or summary.get("failed"):
        print(
            f"  warning: dinoseek embedded {summary.get('embedded')} of "
            f"{summary.get('scanned')} files, {summary.get('failed')} failed"
        )
    embedded = int(summary["embedded"])
    return {
        "path": "dinoseek index",
        "model": spec,
        "batch": batch,
        "threads": f"{ds_threads or 'default'} + "
        + (f"{workers} decode proc" if workers else "decode thread"),
        "images": embedded,
        "wall_s": round(done.wall_s, 2),
        "wall_rate": round(embedded / done.wall_s, 2),
        "steady_s": summary.get("embed_elapsed_s"),
        "steady_rate": summary.get("images_per_s"),
        "gpu_mib": done.gpu_peak_mib,
        "other_cores": done.other_cores,
        "details": {
            "summary": summary,
            "startup_s": round(done.wall_s - float(summary.get("elapsed_s", 0.0)), 2),
            "command": " ".join(command),
            "gpu_mib_source": "nvidia-smi (device-wide)" if done.gpu_peak_mib else None,
        },
    }


def summary_line(ds: dict[str, Any], model_rows: list[dict[str, Any]]) -> str:
    """One sentence per dinoseek run."""
    parts = [
        f"  dinoseek index: {ds['wall_rate']:.1f} img/s end to end "
        f"({ds['details']['startup_s']:.1f} s start-up), {ds['steady_rate']:.1f} img/s steady"
    ]
    if ds.get("x_wall") is not None:
        parts.append(
            f"{ds['x_wall']:.2f}x the plain script end to end, {ds['x_steady']:.2f}x steady"
        )
    model = model_rows[0]
    parts.append(
        f"{100 * (ds['of_model'] or 0):.0f}% of the model-only {model['steady_rate']:.1f} img/s "
        f"(torch threads {model['threads']})"
    )
    if len(model_rows) > 1:
        limited = model_rows[1]
        parts.append(
            f"the model alone with torch threads {limited['threads']}: "
            f"{limited['steady_rate']:.1f} img/s"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
