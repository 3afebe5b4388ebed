"""Benchmark: linear-probe training time and holdout accuracy on clustered random vectors.

Run as ``python bench/probe_train.py [--dim 1024] [--noise 8] [--seed 0]``. Each class is a
random unit centroid; its vectors are the centroid plus Gaussian noise of norm about
``--noise``, L2-normalised like DINOv2 CLS vectors. The time is ``train_probe`` end to end
(splits, weight-decay search, refit, calibration, report) in this process, after a small
warm-up run that pays torch's one-time imports (``torch.optim`` loads ``torch._dynamo``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone

import numpy as np
import torch

from dinoseek.probe import ProbeReport
from dinoseek.probe.training import train_probe

SIZES = ((10, 50), (100, 1000))  # (classes, examples per class)


def clustered_vectors(
    classes: int, per_class: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, list[str | None]]:
    """``classes * per_class`` unit vectors around random unit centroids, with labels."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((classes, dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    targets = np.repeat(np.arange(classes), per_class)
    points = centroids[targets] + noise * rng.standard_normal((len(targets), dim)) / np.sqrt(dim)
    vectors = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return vectors, [f"class-{k:03d}" for k in targets]


def machine() -> str:
    """The machine and software the numbers come from."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.platform()}; {platform.processor() or platform.machine()}; "
        f"{cores} usable CPU cores (of {os.cpu_count()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, python "
        f"{platform.python_version()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        f"{_load_average()}"
    )


def _load_average() -> str:
    """The 1-minute load average where the platform has one: other work skews the times."""
    if not hasattr(os, "getloadavg"):
        return ""
    return f"; load average {os.getloadavg()[0]:.2f} at start"


def run(classes: int, per_class: int, dim: int, noise: float, seed: int) -> ProbeReport:
    """Train one probe and return its report (whose ``train_seconds`` is the wall time)."""
    vectors, labels = clustered_vectors(classes, per_class, dim, noise, seed)
    return train_probe(vectors, labels, name="bench", model_id="random", seed=seed).report


def main() -> None:
    """Print the machine and a table of training time and holdout accuracy per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--noise", type=float, default=8.0, help="noise norm per vector")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    started = time.perf_counter()
    run(3, 10, 16, args.noise, args.seed)
    print(f"warm-up (first training in the process): {time.perf_counter() - started:.2f} s")
    header = (
        f"{'classes':>7} {'examples':>8} {'vectors':>8} {'dim':>5} {'train s':>8} "
        f"{'holdout acc':>11} {'weight decay':>12} {'T':>6} {'NLL before':>10} {'NLL after':>9}"
    )
    print(header)
    print("-" * len(header))
    for classes, per_class in SIZES:
        report = run(classes, per_class, args.dim, args.noise, args.seed)
        print(
            f"{classes:>7} {per_class:>8} {classes * per_class:>8} {args.dim:>5} "
            f"{report.train_seconds:>8.2f} {report.accuracy:>11.1%} "
            f"{report.weight_decay:>12g} {report.temperature:>6.3f} "
            f"{report.holdout_nll_before:>10.4f} {report.holdout_nll_after:>9.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
