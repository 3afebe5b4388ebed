"""``bench/index.py`` runs end to end and compares dinoseek with its baseline (a smoke run of
the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_helpers import run_bench


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
