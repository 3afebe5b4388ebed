"""A no-change rerun: `dinoseek index` over a folder it has already indexed.

Change detection compares each file's path, size and mtime with the collection's payloads
and reads nothing it does not need to, so a rerun over an unchanged folder should take
seconds whatever its size. The baseline is re-embedding everything, which is what a script
without change detection does on every run; it is measured as dinoseek's own first run, so
the ratio is a lower bound (the plain script embeds far slower than the first run).

    python bench/rerun.py --files 10000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    child_env,
    command_line,
    describe_machine,
    fmt_float,
    fmt_ratio,
    fmt_text,
    format_table,
    machine_info,
    write_results,
)

from dinoseek.synthetic import CLASS_NAMES, draw_image, save_random_dinov2


def write_part(directory: str, start: int, count: int) -> None:
    """Small distinct JPEGs, 16 folders deep enough to look like a photo library."""
    rng = random.Random(start)
    for i in range(start, start + count):
        folder = Path(directory) / f"{i % 16:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        kind = CLASS_NAMES[i % len(CLASS_NAMES)]
        draw_image(rng, kind, (64, 48)).save(folder / f"{i:06d}.jpg", "JPEG", quality=85)


def write_files(directory: Path, count: int) -> None:
    """``count`` JPEGs, written by two processes."""
    half = count // 2
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_part, [str(directory)] * 2, [0, half], [half, count - half]))


def index(folder: Path, data: Path, model: Path) -> tuple[float, dict[str, Any]]:
    """Run `dinoseek index` as a user would; (wall seconds, its JSON summary)."""
    command = [
        sys.executable,
        "-m",
        "indexer",
        str(folder),
        "--model",
        str(model),
        "--data-dir",
        str(data),
        "--json",
        "--quiet",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=child_env())
    return time.perf_counter() - started, json.loads(done.stdout)


def main() -> None:
    """First run, then the no-change rerun; print both and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--quick", action="store_true", help="200 files, for a test")
    args = parser.parse_args()
    count = 200 if args.quick else args.files
    info = machine_info("cpu")
    print(describe_machine(info))
    workdir = Path(tempfile.mkdtemp(prefix="dinoseek-bench-rerun-"))
    try:
        model = save_random_dinov2(workdir / "model", size="tiny")
        write_files(workdir / "photos", count)
        first_s, first = index(workdir / "photos", workdir / "data", model)
        rerun_s, rerun = index(workdir / "photos", workdir / "data", model)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert rerun["embedded"] == 0, rerun
    assert rerun["unchanged"] == count, rerun
    rows = [
        {
            "run": "baseline: embed everything (dinoseek's first run)",
            "files": count,
            "wall_s": first_s,
            "pipeline_s": first["elapsed_s"],
            "embedded": first["embedded"],
        },
        {
            "run": "dinoseek: no-change rerun",
            "files": count,
            "wall_s": rerun_s,
            "pipeline_s": rerun["elapsed_s"],
            "embedded": rerun["embedded"],
            "x_wall": first_s / rerun_s,
        },
    ]
    columns = [
        ("run", "run", fmt_text),
        ("files", "files", fmt_float(0)),
        ("embedded", "embedded", fmt_float(0)),
        ("wall_s", "wall s (process)", fmt_float(1)),
        ("pipeline_s", "s (scan to summary)", fmt_float(2)),
        ("x_wall", "x baseline", fmt_ratio),
    ]
    print("tiny random DINOv2 on the CPU; wall time includes Python, torch and model start-up")
    print(format_table(rows, columns))
    write_results(args.out, "rerun", {"command": command_line(), "machine": info, "rows": rows})


if __name__ == "__main__":
    main()
