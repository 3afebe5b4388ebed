"""``dinoseek adapt`` as a process: killed with SIGKILL after a checkpoint, then run again
with ``--resume``, it ends where an uninterrupted run ends (same steps, same parameters)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinoseek.synthetic import write_image_folder
from tests.kill_points import harness_env, kill_env

# Three processes of 20, 10 and 15 steps: about a minute on a quiet 2-core machine, and the
# timeout leaves room for one that runs several test suites at once.
pytestmark = [pytest.mark.slow, pytest.mark.model, pytest.mark.timeout(900)]
REPO = Path(__file__).parent.parent
STEPS = 20
KILLED_AT = 5  # the last checkpoint before the kill (every 5 steps)
SETTINGS = (
    "--steps", str(STEPS), "--batch-size", "4", "--global-size", "28", "--local-size", "14",
    "--local-crops", "2", "--prototypes", "32", "--head-hidden", "32", "--head-bottleneck",
    "16", "--train", "all", "--lr", "1e-3", "--device", "cpu", "--workers", "1",
    "--checkpoint-every", "5", "--ibot", "1.0", "--quiet",
)  # fmt: skip


def adapt_command(photos: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dinoseek_cli", "adapt", str(photos), "--model", str(model),
            "--out", str(out), *SETTINGS, *extra]  # fmt: skip


def checkpoint_step(out: Path) -> int:
    path = out / "checkpoint" / "checkpoint.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


def test_sigkill_then_resume_reaches_the_uninterrupted_parameters(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, count=24, size=(96, 80))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    subprocess.run(adapt_command(photos, tiny_model_dir, whole), cwd=REPO, check=True)

    # A checkpoint is written to a temporary file, then renamed into place: killed just
    # before the second rename (step 10's), so the kill lands at the same step on any
    # machine, fast or busy.
    harness = {**harness_env(tmp_path / "site", REPO), **kill_env("os.replace", 2)}
    process = subprocess.Popen(adapt_command(photos, tiny_model_dir, parts), cwd=REPO,
                               env=harness, start_new_session=True)  # fmt: skip
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a data-loading worker it may have left
    killed_at = checkpoint_step(parts)
    assert killed_at == KILLED_AT
    assert not (parts / "model.safetensors").exists()

    resumed = subprocess.run(
        adapt_command(photos, tiny_model_dir, parts, "--resume", "--json"),
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == killed_at
    assert summary["steps"] == STEPS
    expected, got = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.allclose(value, got[name], atol=1e-5), name
    log = [json.loads(line) for line in (parts / "adapt-log.jsonl").read_text().splitlines()]
    whole_log = [json.loads(line) for line in (whole / "adapt-log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, STEPS + 1))
    assert [row["loss"] for row in log] == pytest.approx([row["loss"] for row in whole_log])
