"""``bench/adapt.py`` runs both paths end to end and prints the ratio (a smoke run of the
script with the tiny model, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
def test_adapt_bench_runs_both_paths(tmp_path: Path, tiny_model_dir: Path) -> None:
    images = tmp_path / "images"
    from dinoseek.synthetic import write_image_folder

    write_image_folder(images, count=8, size=(120, 90))
    done = subprocess.run(
        [sys.executable, str(BENCH / "adapt.py"), "--models", str(tiny_model_dir), "--steps",
         "1", "--batch-size", "4", "--local-crops", "2", "--device", "cpu", "--images",
         str(images), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| baseline: decode in the loop" in done.stdout
    baseline, ours = json.loads((tmp_path / "out" / "adapt.json").read_text())["rows"]
    assert baseline["images_per_s"] > 0
    assert ours["x_images_per_s"] == pytest.approx(ours["images_per_s"] / baseline["images_per_s"])
    assert ours["peak_memory_gib"] > 0
