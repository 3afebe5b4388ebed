"""``dinoseek index --engine ray`` as a process of its own (``tests.fake_cli``, the stand-in
model made slower so that a run lasts a few seconds), each run starting its own local Ray
instance (``--ray-address local``): the driver killed with SIGKILL then run again converges
to the local engine's collection; Ctrl-C stops cleanly and the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import write_tree
from tests.kill_points import Pause, harness_env, kill_env
from tests.ray_support import ray_env
from tests.test_kill_points import state_of
from tests.test_ray_engine import assert_same_collection, index

pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.ray]
REPO = Path(__file__).parent.parent


def start_ray_index(
    photos: Path, data: Path, pids: Path, *extra: str, harness: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``dinoseek index PHOTOS --engine ray`` in a process, 0.1 s slower per batch of 2
    (``harness``: the variables of ``tests.kill_points``, applied to the driver only)."""
    command = [
        sys.executable, "-m", "tests.fake_cli", "index", str(photos), "--model", "fake/dinov2",
        "--data-dir", str(data), "--batch-size", "2", "--labels-from-folders",
        "--log-every", "0.2", "--engine", "ray", "--ray-address", "local", *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        **ray_env(),
        "PYTHONUNBUFFERED": "1",
        "DINOSEEK_TEST_EMBED_DELAY_S": "0.1",
        "DINOSEEK_TEST_PIDS": str(pids),
        **(harness or {}),
    }
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_driver_killed_then_run_again_converges(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=40)
    index(photos, tmp_path / "local")
    data, pids = tmp_path / "ray", tmp_path / "pids"

    # Killed just before its 10th write of 40 (one write is one batch of 2), so with work
    # written and work left whatever the machine's speed.
    harness = {**harness_env(tmp_path / "site", REPO), **kill_env("store.upsert", 10)}
    driver = start_ray_index(photos, data, pids, harness=harness)
    driver.communicate(timeout=600)
    assert driver.returncode == -signal.SIGKILL
    actors = [int(p.name) for p in pids.iterdir() if int(p.name) != driver.pid]
    assert actors, "no actor had started"
    deadline = time.monotonic() + 120  # a hang detector: Ray reaps them within seconds
    while any(alive(pid) for pid in actors) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(pid) for pid in actors), "the actors outlived their driver"

    rerun = start_ray_index(photos, data, pids, "--json")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    summary = json.loads(out)
    assert summary["unchanged"] >= 2 * 9, "the killed run's writes were not kept"
    assert summary["embedded"] == 80 - 2 * 9, "the rerun redid kept work"
    assert_same_collection(state_of(data), state_of(tmp_path / "local"))
    again = start_ray_index(photos, data, pids, "--json")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert json.loads(out)["embedded"] == 0


def test_ctrl_c_stops_the_cluster_work_and_the_rerun_resumes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=40)
    data, pids = tmp_path / "ray", tmp_path / "pids"
    pause = Pause(tmp_path / "pause", "store.upsert", 5)
    harness = {**harness_env(tmp_path / "site", REPO), **pause.env()}
    driver = start_ray_index(photos, data, pids, harness=harness)
    pause.wait(driver)
    driver.send_signal(signal.SIGINT)
    pause.release()
    out, err = driver.communicate(timeout=120)  # a hang detector: it stops within seconds
    assert driver.returncode == 130, err
    assert "stopped early" in out
    partial = int(out.split("holds ")[1].split(" ")[0])
    assert 2 * 4 <= partial < 80
    rerun = start_ray_index(photos, data, pids)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert f"unchanged   {partial:>8,}" in out
    assert "holds 80 images" in out
