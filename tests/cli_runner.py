"""The real ``dinoseek`` command in-process (click's runner) with the stand-in models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER


def invoke(*args: str | Path) -> Result:
    """``dinoseek ARGS``; any model id loads as a stand-in."""
    return CliRunner().invoke(main, [str(a) for a in args], obj=FAKE_LOADER)


def run_json(*args: str | Path) -> dict[str, Any]:
    """``dinoseek ARGS --json``, which must succeed: its document."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document
