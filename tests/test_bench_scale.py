"""``bench/scale.py`` runs both parts end to end (a smoke run of the script at a few thousand
points, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
def test_scale_quick_measures_the_store_and_the_rerun(bench_cache: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "scale.py"), "--quick", "--cache", str(bench_cache),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((tmp_path / "scale.json").read_text())
    ours, int8, baseline = document["vectors"]
    assert ours["points"] == int8["points"] == baseline["points"] == 3000
    assert int8["path"] == "dinoseek store (int8)"
    for row in (ours, int8, baseline):
        assert row["recall_all"] > 0.9  # exact at this size: the comparison itself works
        assert row["recall_label"] > 0.9
        assert row["p50_label_ms"] > 0
    catalog = document["catalog"]
    assert catalog["half"]["unchanged"] == 150
    assert catalog["all"]["unchanged"] == catalog["catalog_entries"] == 300
    for size in ("half", "all"):
        assert catalog[size]["first_catalog_source"] == "store"  # populated by hand
        assert catalog[size]["catalog_source"] == "saved copy"  # saved by the first rerun
    assert catalog["catalog_bytes_per_entry"] > 0
    assert catalog["peak_rss_mib_at_1m"] > catalog["all"]["peak_rss_mib"] > 0
    assert "x the plain script's speed on filtered queries" in done.stdout
