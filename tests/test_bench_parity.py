"""``bench/parity.py`` runs end to end and compares dinoseek with its baseline (a smoke run of
the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_helpers import BENCH, run_bench

pytestmark = pytest.mark.slow


def test_parity_quick_passes(bench_cache: Path, tmp_path: Path) -> None:
    stdout = run_bench("parity.py", bench_cache, tmp_path)
    assert "| random:tiny | cpu float32" in stdout
    assert "parity: every configuration is within its threshold" in stdout
    document = json.loads((tmp_path / "parity.json").read_text())
    assert document["passed"] is True
    (row,) = document["rows"]
    assert row["min_cos"] >= 0.9999
    assert len(row["per_image"]) >= 10  # sizes, alpha, palette, grey, 16-bit, EXIF


def test_parity_fails_below_threshold(bench_cache: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / "parity.py"), "--quick", "--cache", str(bench_cache),
         "--threshold", "1.5"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "FAIL: random:tiny cpu float32" in done.stderr
