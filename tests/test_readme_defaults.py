"""The configuration table (docs/configuration.md, linked from the README) states the defaults
the code has (issue 17: "the default limits and batch sizes"). Each row's default is read from
that page and compared with ``Settings()`` with no variable set."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dinoseek.embedder_protocol import (
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    LARGE_GPU_BATCH_SIZE,
    LARGE_GPU_BYTES,
)
from dinoseek.settings import Settings

CONFIGURATION = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def configuration_rows() -> dict[str, str]:
    """Variable -> the default cell, from the table of the "Configuration" page."""
    section = CONFIGURATION.read_text().split("# Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`DINOSEEK_"):
            continue
        names = re.findall(r"`(DINOSEEK_[A-Z_]+)`", cells[1])
        defaults = [d.strip() for d in cells[2].split(",")] if len(names) > 1 else [cells[2]]
        rows.update(zip(names, defaults, strict=True))
    return rows


def parse(cell: str) -> Any:
    """``40,000,000`` -> 40000000, ``20 MiB`` -> bytes, `` `auto` `` -> "auto", unset -> None."""
    if cell == "unset":
        return None
    quoted = re.fullmatch(r"`([^`]*)`(?: \(.*\))?", cell)
    if quoted:
        return [] if quoted.group(1) == "[]" else quoted.group(1)
    sized = re.fullmatch(r"([\d,]+) (KiB|MiB|GiB)", cell)
    if sized:
        return int(sized.group(1).replace(",", "")) * UNITS[sized.group(2)]
    if re.fullmatch(r"[\d,]+(\.\d+)?", cell):
        return float(cell.replace(",", ""))
    return cell


ROWS = configuration_rows()


def test_the_table_lists_every_setting() -> None:
    documented = {name.removeprefix("DINOSEEK_").lower() for name in ROWS}
    assert documented == set(Settings.model_fields), "the Configuration table and Settings differ"


@pytest.mark.parametrize("variable", sorted(ROWS))
def test_each_documented_default_is_the_real_one(
    variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ROWS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file
    field = variable.removeprefix("DINOSEEK_").lower()
    actual = getattr(Settings(), field)
    stated = parse(ROWS[variable])
    if field == "batch_size":  # chosen by the device: see the embedder's default_batch_size
        assert actual is None
        assert stated == (
            f"{LARGE_GPU_BATCH_SIZE} on a GPU of {LARGE_GPU_BYTES // 1024**3} GiB+, "
            f"{GPU_BATCH_SIZE} on smaller, {CPU_BATCH_SIZE} on cpu"
        )
        return
    if field == "data_dir":
        assert str(actual) == stated.removeprefix("./")
        return
    assert actual == stated, f"{variable}: the docs say {ROWS[variable]!r}, the code {actual!r}"
