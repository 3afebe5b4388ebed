"""``dinoseek adapt``'s training loop against the plain script a user would write: training
images/s, the share of the time spent waiting for data, and peak memory.

Both paths run the same recipe (2 global crops, ``--local-crops`` local crops, DINO + KoLeo,
the same model and batch) through ``dinoseek.adapt.training.train``:

- dinoseek: decoding and augmentation in ``--workers`` DataLoader processes, a batch ahead;
- baseline: decoding and augmentation in the training process before each step (what a plain
  training script does with a loop over the files).

Peak memory is the process's peak RSS on a CPU (each model runs in a process of its own) and
``torch.cuda.max_memory_allocated`` on a GPU. Random weights are fine: speed does not depend
on them.

    python bench/adapt.py --models random:small,random:base --steps 6
    python bench/adapt.py --device cuda --models random:small,random:base --batch-size 64 \\
        --steps 30     # on a GPU host
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    DEFAULT_CACHE,
    command_line,
    describe_machine,
    fmt_float,
    fmt_percent,
    fmt_ratio,
    fmt_text,
    format_table,
    machine_info,
    resolve_model,
    split_list,
    synthetic_images,
    write_results,
)

WARMUP_STEPS = 2  # not timed: the first steps pay allocation and thread start-up


def run_one(
    model: str, images: Path, *, workers: int, device: str, steps: int, batch_size: int,
    local_crops: int,
) -> dict[str, Any]:  # fmt: skip
    """Train ``steps`` steps in this process; the steady-state rate and memory."""
    import time

    from dinoseek.adapt.augment import CropSpec
    from dinoseek.adapt.config import AdaptConfig, RunOptions
    from dinoseek.adapt.data import DecodeLimits
    from dinoseek.adapt.model import HeadSpec, Trainable
    from dinoseek.adapt.training import train
    from dinoseek.folder_vectors import image_files

    config = AdaptConfig(
        model=model, steps=steps + WARMUP_STEPS, batch_size=batch_size,
        crops=CropSpec(local_crops=local_crops), head=HeadSpec(), trainable=Trainable("all"),
    )  # fmt: skip
    times: list[float] = []
    waits: list[float] = []
    last = [time.perf_counter()]

    def on_step(metrics: Any) -> None:
        now = time.perf_counter()
        if metrics.step > WARMUP_STEPS:
            times.append(now - last[0])
            waits.append(metrics.data_wait)
        last[0] = now

    with tempfile.TemporaryDirectory(prefix="dinoseek-bench-adapt-") as scratch:
        trained = train(
            config, image_files(images), Path(scratch),
            limits=DecodeLimits(max_pixels=100_000_000, max_bytes=100_000_000),
            run=RunOptions(device=device, workers=workers, checkpoint_every=10**9),
            on_step=on_step,
        )  # fmt: skip
    seconds = sum(times)
    return {
        "images_per_s": steps * batch_size / seconds,
        "data_wait": sum(waits) / seconds,
        "peak_memory_gib": trained.peak_memory_bytes / 1024**3,
        "step_s": seconds / steps,
    }


def measure(args: argparse.Namespace, model: str, workers: int) -> dict[str, Any]:
    """``run_one`` in a fresh process (so peak RSS is this run's own)."""
    command = [
        sys.executable, __file__, "--one", model, "--images", str(args.images), "--workers",
        str(workers), "--device", args.device, "--steps", str(args.steps), "--batch-size",
        str(args.batch_size), "--local-crops", str(args.local_crops),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Both paths for each model; the table and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="random:small,random:base")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="[default: cores - 1]")
    parser.add_argument("--images", type=Path, default=None, help="[default: 200 synthetic]")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        result = run_one(args.one, args.images, workers=args.workers, device=args.device,
                         steps=args.steps, batch_size=args.batch_size,
                         local_crops=args.local_crops)  # fmt: skip
        print(json.dumps(result))
        return
    info = machine_info(args.device)
    print(describe_machine(info))
    if args.images is None:
        args.images = synthetic_images(200, args.cache)
    workers = args.workers
    if workers is None:
        workers = max(1, min(8, int(info["usable_cores"]) - 1))
    rows: list[dict[str, Any]] = []
    for spec in split_list(args.models):
        model = resolve_model(spec, args.cache)
        baseline = measure(args, model, 0)
        ours = measure(args, model, workers)
        baseline.update(model=spec, path="baseline: decode in the loop")
        ours.update(model=spec, path=f"dinoseek: {workers} decode process(es)")
        ours["x_images_per_s"] = ours["images_per_s"] / baseline["images_per_s"]
        rows += [baseline, ours]
    columns = [
        ("model", "model", fmt_text),
        ("path", "path", fmt_text),
        ("images_per_s", "img/s", fmt_float(2)),
        ("step_s", "s/step", fmt_float(2)),
        ("data_wait", "waiting for data", fmt_percent),
        ("peak_memory_gib", "peak memory GiB", fmt_float(2)),
        ("x_images_per_s", "x img/s", fmt_ratio),
    ]
    print(
        f"batch {args.batch_size}, 2 global crops of 224 px and {args.local_crops} local crops of "
        f"98 px, whole backbone trained, {args.steps} timed steps after {WARMUP_STEPS}"
    )
    print(format_table(rows, columns))
    write_results(args.out, "adapt", {"command": command_line(), "machine": info, "rows": rows})


if __name__ == "__main__":
    main()
