"""Running the benchmarks in bench/ from tests (tiny random model, seconds of data).

These are smoke tests of the scripts, not measurements: speed is judged by running the
benchmarks themselves (bench/RESULTS.md), never by timing tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, cache: Path, out: Path, *options: str) -> str:
    """Run ``bench/SCRIPT --quick`` and return its stdout; fail with its output otherwise."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--device", "cpu", "--cache",
         str(cache), "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout
