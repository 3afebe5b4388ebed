"""``bench/query.py`` runs end to end and compares dinoseek with its baseline (a smoke run of
the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_helpers import run_bench


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
