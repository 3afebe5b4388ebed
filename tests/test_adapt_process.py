"""``dinoseek adapt`` as a process: killed with SIGKILL after a checkpoint, then run again
with ``--resume``, it ends where an uninterrupted run ends (same steps, same parameters)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinoseek.synthetic import write_image_folder

pytestmark = [pytest.mark.slow, pytest.mark.model]
REPO = Path(__file__).parent.parent
STEPS = 120
SETTINGS = (
    "--steps", str(STEPS), "--batch-size", "8", "--global-size", "56", "--local-size", "28",
    "--local-crops", "2", "--prototypes", "64", "--head-hidden", "64", "--head-bottleneck",
    "32", "--train", "all", "--lr", "1e-3", "--device", "cpu", "--workers", "1",
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

    process = subprocess.Popen(adapt_command(photos, tiny_model_dir, parts), cwd=REPO,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while checkpoint_step(parts) < 10 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_step(parts)
    assert 10 <= killed_at < STEPS
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
