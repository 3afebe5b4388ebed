"""``bench/watch_burst.py`` runs end to end (a smoke run of the script on 200 files, not a
measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
def test_watch_burst_quick_measures_a_burst(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "watch_burst.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads((tmp_path / "watch_burst.json").read_text())["rows"]
    assert row["files"] == 200
    assert row["passes"] >= 1
    assert row["searchable_s"] >= row["copy_s"] > 0
    assert row["peak_rss_mib"] > 0
    assert row["index_once_s"] > 0
