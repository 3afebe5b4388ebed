"""Benchmark: ``dinoseek index --engine ray`` against the local engine, in one run.

The baseline here is dinoseek's own local engine (what the Ray engine must not fall behind on
one machine); both index the same folder into a fresh embedded store, each in a process of its
own (``python -m indexer``), the Ray engine starting a Ray instance for the run
(``--ray-address local``).

Each engine runs twice, on the first N images and then on 2N, so that the start-up (the
interpreter, the model, and for Ray the instance, its workers and the actor's model) is
measured apart from the throughput: **marginal img/s** = N / (wall(2N) - wall(N)), the rate a
long run settles to, and **start-up s** = wall(N) - N / marginal rate. The ratio of the
marginal rates is the engine's overhead on this machine.

Run ``python bench/ray_engine.py --help`` for the options; ``--quick`` is a seconds-long smoke
run (the tiny model).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

COLUMNS: list[common.Column] = [
    ("engine", "engine", common.fmt_text),
    ("model", "model", common.fmt_text),
    ("batch", "batch", common.fmt_text),
    ("wall_n", "wall N s", common.fmt_float(1)),
    ("wall_2n", "wall 2N s", common.fmt_float(1)),
    ("marginal_rate", "marginal img/s", common.fmt_float(2)),
    ("startup_s", "start-up s", common.fmt_float(1)),
    ("x_local", "vs local", common.fmt_ratio),
    ("other_cores", "other CPU", common.fmt_float(2)),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options."""
    parser = argparse.ArgumentParser(
        prog="python bench/ray_engine.py",
        description="dinoseek index --engine ray against the local engine, in one run.",
    )
    parser.add_argument("--images", type=int, help="N: runs on N then 2N images [200 on cpu]")
    parser.add_argument("--model", help="random:SIZE, a model directory or a hub id [random:small]")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, help="write ray_engine.json here")
    parser.add_argument(
        "--cache", type=Path, default=common.DEFAULT_CACHE, help="generated models and images"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measured run")
    parser.add_argument("--quick", action="store_true", help="smoke run: random:tiny, N=8")
    args = parser.parse_args(argv)
    if args.quick:
        args.images = args.images or 8
        args.model = args.model or "random:tiny"
        args.batch_size = min(args.batch_size, 4)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both engines on N and 2N images; print the table and the ratio."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    info = common.machine_info(args.device)
    print(common.describe_machine(info))
    device = common.resolve_device(args.device, info)
    count = args.images or (2000 if device == "cuda" else 200)
    spec = args.model or ("random:base" if device == "cuda" else "random:small")
    cache: Path = args.cache.resolve()
    _, files = common.prepare_data(None, 2 * count, cache)
    model = common.resolve_model(spec, cache)
    env = common.child_env({"HF_HUB_OFFLINE": "1"} if os.path.isdir(model) else None)
    print(f"data: N={count} and 2N of {len(files)} synthetic images; device {device}")
    print(f"command: {common.command_line()}\n")

    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="dinoseek-bench-ray-"))
    try:
        folders = {n: subset(files, n, work / f"images-{n}") for n in (count, 2 * count)}
        for engine in ("local", "ray"):
            walls = {}
            for n, folder in folders.items():
                walls[n], other = run_index(args, engine, model, folder, device, work, env, n)
            rows.append(row(engine, spec, args.batch_size, count, walls, other))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local, ray = rows
    ray["x_local"] = _ratio(ray["marginal_rate"], local["marginal_rate"])
    print()
    print(common.format_table(rows, COLUMNS))
    print(NOTES)
    if ray["x_local"] is not None:
        print(f"--engine ray: {ray['x_local']:.2f}x the local engine's marginal rate")
    else:
        print("--engine ray: no marginal rate (2N ran no longer than N: use more images)")
    path = common.write_results(
        args.out,
        "ray_engine",
        {
            "benchmark": "ray_engine",
            "command": common.command_line(),
            "machine": info,
            "device": device,
            "images": {"n": count, "2n": 2 * count},
            "rows": rows,
        },
    )
    if path is not None:
        print(f"results written to {path}")
    return 0


NOTES = """
marginal img/s: N / (wall 2N - wall N): the rate with every start-up cost cancelled out.
start-up s: wall N - N / marginal rate (interpreter, model; for Ray its instance, workers and
the actor's own model load). other CPU: cores' worth of CPU used by other processes during
the last run: near 0 on a quiet machine; distrust a row where it is not."""


def subset(files: list[Path], count: int, folder: Path) -> Path:
    """The first ``count`` images, hard-linked (or copied) into ``folder``."""
    folder.mkdir(parents=True)
    for number, source in enumerate(files[:count]):
        target = folder / f"{number:07d}{source.suffix}"  # parts reuse names
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return folder


def run_index(
    args: argparse.Namespace,
    engine: str,
    model: str,
    folder: Path,
    device: str,
    work: Path,
    env: dict[str, str],
    count: int,
) -> tuple[float, float | None]:
    """One ``dinoseek index`` into a fresh data directory: (wall seconds, other cores)."""
    data_dir = work / f"data-{time.monotonic_ns()}"
    command = [
        sys.executable, "-m", "indexer", str(folder), "--model", model,
        "--data-dir", str(data_dir), "--json", "--quiet", "--batch-size", str(args.batch_size),
        "--device", device, "--engine", engine,
    ]  # fmt: skip
    if engine == "ray":
        command += ["--ray-address", "local"]
    print(f"[{engine}] {count} images ...", flush=True)
    try:
        done = common.run_process(command, timeout_s=args.timeout, env=env)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = common.check_process(done, f"dinoseek index --engine {engine}").last_json()
    if summary.get("embedded") != count:
        raise RuntimeError(f"{engine}: embedded {summary.get('embedded')} of {count} images")
    return done.wall_s, done.other_cores


def row(
    engine: str,
    spec: str,
    batch: int,
    count: int,
    walls: dict[int, float],
    other: float | None,
) -> dict[str, Any]:
    """A table row from the two runs' wall times."""
    extra = walls[2 * count] - walls[count]
    rate = count / extra if extra > 0 else None
    return {
        "engine": engine,
        "model": spec,
        "batch": batch,
        "wall_n": round(walls[count], 2),
        "wall_2n": round(walls[2 * count], 2),
        "marginal_rate": round(rate, 2) if rate else None,
        "startup_s": round(walls[count] - count / rate, 2) if rate else None,
        "other_cores": other,
    }


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 3)


if __name__ == "__main__":
    sys.exit(main())
