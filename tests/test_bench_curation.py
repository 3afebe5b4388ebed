"""``bench/curation.py`` runs end to end and compares dinoseek with exact all-pairs (a smoke
run of the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["auto", "clusters"])
def test_curation_quick_finds_every_planted_pair(tmp_path: Path, method: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "curation.py"), "--quick", "--device", "cpu", "--method",
         method, "--curate-references", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| dinoseek dedup (cpu)" in done.stdout
    assert "| exact all-pairs (compare only)" in done.stdout
    results = json.loads((tmp_path / "curation.json").read_text())
    exact, ours, rerun = results["rows"]
    assert ours["method"]["name"] == ("exact" if method == "auto" else "clusters")
    assert ours["recall_planted"] == 1.0
    assert ours["recall_exact"] == 1.0
    # Each planted family and copy with its source, nothing else: as the exact path finds.
    assert ours["groups"] == exact["groups"] == results["planted_groups"] == 130
    assert ours["comparisons"] <= exact["comparisons"] == 3000 * 2999 // 2
    assert rerun["queried"] == 30  # only the new points are compared
    assert rerun["recall_planted"] == 1.0
    assert rerun["groups"] == 133  # three of the thirty new points are copies
    assert ours["peak_gib"] > 0
    _, curated = results["curate"]
    assert curated["recall_nearest"] == 1.0
    assert curated["search"]["name"] == ("exact" if method == "auto" else "clusters")
