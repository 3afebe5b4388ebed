"""``bench/ray_engine.py`` runs both engines end to end and prints their ratio (a smoke run of
the script, not a measurement: see bench/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_helpers import run_bench

pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.mark.slow
@pytest.mark.ray
def test_ray_engine_quick_compares_with_the_local_engine(bench_cache: Path, tmp_path: Path) -> None:
    stdout = run_bench("ray_engine.py", bench_cache, tmp_path)
    assert "| engine" in stdout
    assert "--engine ray: " in stdout
    document = json.loads((tmp_path / "ray_engine.json").read_text())
    rows = {row["engine"]: row for row in document["rows"]}
    assert set(rows) == {"local", "ray"}
    for row in rows.values():
        assert row["wall_2n"] > 0
        assert row["wall_n"] > 0
    assert document["images"] == {"n": 8, "2n": 16}
