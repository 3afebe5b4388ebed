"""The benchmarks in bench/ run end to end (tiny random model, seconds of data).

These are smoke tests of the scripts, not measurements: speed is judged by running the
benchmarks themselves (bench/RESULTS.md), never by timing tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated models and images, shared by the scripts run here."""
    return tmp_path_factory.mktemp("bench-cache")


def run_bench(script: str, cache: Path, out: Path, *options: str) -> str:
    """Run ``bench/SCRIPT --quick`` and return its stdout; fail with its output otherwise."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--device", "cpu", "--cache",
         str(cache), "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


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
        timeout=240,
        env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "FAIL: random:tiny cpu float32" in done.stderr


@pytest.mark.slow
def test_index_quick_compares_with_baseline(bench_cache: Path, tmp_path: Path) -> None:
    stdout = run_bench("index.py", bench_cache, tmp_path)
    for path in ("| baseline: plain script", "| model only (float32)", "| dinoseek index"):
        assert path in stdout
    assert "x the plain script end to end" in stdout
    document = json.loads((tmp_path / "index.json").read_text())
    rows = {row["path"]: row for row in document["rows"]}
    dinoseek = rows["dinoseek index"]
    assert dinoseek["images"] == 16
    assert rows["baseline: plain script"]["details"]["points"] == 16
    for key in ("x_wall", "x_steady", "of_model"):
        assert dinoseek[key] > 0, key
    assert document["machine"]["usable_cores"] >= 1


@pytest.mark.slow
def test_query_quick_compares_with_baseline(bench_cache: Path, tmp_path: Path) -> None:
    stdout = run_bench("query.py", bench_cache, tmp_path, "--requests", "12")
    assert "| dinoseek serve" in stdout
    assert "| baseline: plain server" in stdout
    document = json.loads((tmp_path / "query.json").read_text())
    rows = document["rows"]
    assert {(r["server"], r["concurrency"]) for r in rows} == {
        (server, level)
        for server in ("dinoseek serve", "baseline: plain server")
        for level in (1, 8)
    }
    for row in rows:
        assert row["ok"] == row["requests"] == 12, row
        assert row["errors"] == "0"
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert all(r["x_qps"] > 0 for r in rows)
