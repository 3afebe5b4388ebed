"""``bench/regions.py`` runs end to end and compares region search with CLS-only search (a
smoke run of the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.model
def test_regions_quick_runs_both_paths(tmp_path: Path, bench_cache: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "regions.py"), "--quick", "--cache", str(bench_cache),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| baseline: CLS vector (whole-image search)" in done.stdout
    assert "| dinoseek: region search" in done.stdout
    document = json.loads((tmp_path / "regions.json").read_text())
    cases = {(row["case"], row["path"].split(":")[0]) for row in document["quality"]}
    assert cases == {(c, p) for c in ("crop", "pasted", "box") for p in ("baseline", "dinoseek")}
    assert all(row["queries"] == 24 for row in document["quality"])
    assert [row["vectors"] for row in document["layouts"]][:2] == [29, 4]
    assert document["index"][1]["path"] == "dinoseek index --regions"
    plain, regions, alternative = document["store"]
    assert regions["vectors"] == 29 * plain["vectors"]
    assert alternative["vectors"] == 29 * alternative["images"]
    assert document["match"]["match_p50_ms"] > 0
