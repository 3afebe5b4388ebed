"""A labels file: ``path,label`` rows, as `dinoseek index --labels-csv`, `eval` and `adapt`
read it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from dinoseek.errors import ConfigError


def read_labels_csv(path: Path) -> dict[str, str]:
    """Read ``path,label`` rows (a header row is optional). Paths may be absolute or relative
    to their root; absolute ones are normalised."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"labels file {path} is not a UTF-8 CSV file: {exc}") from None
    mapping: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(
                f"{path}, line {number}: expected 'path,label', got {','.join(row)!r}"
            )
        key = row[0].strip()
        if os.path.isabs(key):
            key = os.path.abspath(key)
        mapping[key] = row[1].strip()
    return mapping
