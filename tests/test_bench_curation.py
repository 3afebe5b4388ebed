"""``bench/curation.py`` runs end to end and compares dinoseek with its baseline (a smoke run
of the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
def test_curation_quick_finds_every_planted_pair(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "curation.py"), "--quick", "--device", "cpu", "--out",
         str(tmp_path)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| dinoseek dedup (cpu)" in done.stdout
    assert "| baseline: a query per point" in done.stdout
    baseline, ours = json.loads((tmp_path / "curation.json").read_text())["rows"]
    assert ours["recall_planted"] == 1.0
    assert ours["recall_exact"] == 1.0
    assert ours["groups"] == 100  # each planted copy with its source, nothing else
    assert ours["x_points_per_s"] > 0
    assert baseline["points"] == 300
