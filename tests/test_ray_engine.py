"""``dinoseek index --engine ray`` on a local Ray instance (``ray.init(num_cpus=2)``), in this
process: the same collection as the local engine, through changes, and an embedding actor
killed mid-run. The stand-in model (``tests.fakes``) runs in Ray's actors; these tests are
about the engine, not the model. Processes (the driver killed, Ctrl-C) are in
``test_ray_process.py``, two nodes in ``test_ray_cluster.py``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.cli_runner import invoke
from tests.helpers import write_bad_files, write_tree
from tests.ray_support import embedded_by, ray_env, release, slow_loader
from tests.test_kill_points import State, state_of

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.ray]
MODEL = "fake/dinov2"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for the module; its workers can import ``tests``."""
    saved = os.environ.get("PYTHONPATH")
    os.environ.update(ray_env())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def index(photos: Path, data: Path, *extra: str) -> dict[str, Any]:
    """``dinoseek index PHOTOS --json`` with the stand-in model; its summary."""
    result = invoke(
        "index", photos, "--model", MODEL, "--data-dir", data, "--labels-from-folders",
        "--batch-size", "4", "--json", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def assert_same_collection(ray_state: State, local_state: State) -> None:
    """Same ids and payloads (less ``indexed_at``), vectors within cosine 0.999."""
    assert sorted(ray_state) == sorted(local_state)
    for point, (payload, vector) in local_state.items():
        ray_payload, ray_vector = ray_state[point]
        assert ray_payload == payload, point
        a, b = np.asarray(vector), np.asarray(ray_vector)
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.999, point


COUNTS = ("scanned", "embedded", "unchanged", "duplicates", "relabelled", "removed", "points")


def counts(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in (*COUNTS, "failed_by_reason", "known_failures_skipped")}


def test_the_ray_engine_builds_what_the_local_engine_builds(
    local_ray: None, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=10)
    bad = write_bad_files(photos / "broken")
    shutil.copyfile(paths[3], photos / "dogs" / "copy_of_cat.jpg")  # one point, two files
    local, distributed = tmp_path / "local", tmp_path / "ray"

    first_local = index(photos, local)
    first_ray = index(photos, distributed, "--engine", "ray")
    assert counts(first_ray) == counts(first_local)
    assert first_ray["embedded"] == 20
    assert first_ray["duplicates"] == 1
    assert sum(first_ray["failed_by_reason"].values()) == len(bad)
    assert_same_collection(state_of(distributed), state_of(local))

    # Every kind of change: a file deleted, one rewritten, one moved to another class
    # (relabelled), a new duplicate of a file already stored, a new file.
    paths[0].unlink()
    shutil.copyfile(paths[15], paths[1])
    paths[2].rename(photos / "dogs" / "moved.jpg")
    shutil.copyfile(paths[5], photos / "cats" / "again.jpg")
    # Content stored when the run starts that loses its only file before a new file brings
    # it back: the actors skipped it as stored, so the driver must embed it after all.
    old_content = paths[6].read_bytes()
    shutil.copyfile(paths[16], paths[6])
    (photos / "cats" / "zz_old_6.jpg").write_bytes(old_content)
    write_tree(photos, per_class=1, classes=("birds",))
    second_local = index(photos, local)
    second_ray = index(photos, distributed, "--engine", "ray")
    assert counts(second_ray) == counts(second_local)
    assert second_ray["removed"] >= 1
    assert second_ray["embedded"] >= 1
    assert_same_collection(state_of(distributed), state_of(local))

    again = index(photos, distributed, "--engine", "ray")
    changed = {key: again[key] for key in ("embedded", "removed", "relabelled", "duplicates")}
    assert changed == {"embedded": 0, "removed": 0, "relabelled": 0, "duplicates": 0}
    assert again["known_failures_skipped"] == len(bad)


def test_a_killed_embedding_actor_is_replaced_and_nothing_is_lost(
    local_ray: None, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from dinoseek_cli.main import main

    photos = tmp_path / "photos"
    write_tree(photos, per_class=20)
    pids = tmp_path / "pids"
    # 10 batches of 4; each actor holds after its first batch until released: the first
    # actor is killed with one batch embedded and the rest of the run still to do.
    loader = slow_loader(pids, delay_s=0.1, hold=True)
    killed: list[int] = []

    def kill_the_first_actor() -> None:
        deadline = time.monotonic() + 240  # a hang detector
        while time.monotonic() < deadline:
            embedded = embedded_by(pids)
            embedded.pop(os.getpid(), None)
            actor = next((pid for pid, count in embedded.items() if count), None)
            if actor is not None:
                os.kill(actor, signal.SIGKILL)
                killed.append(actor)
                break
            time.sleep(0.05)
        release(pids)

    killer = threading.Thread(target=kill_the_first_actor, daemon=True)
    killer.start()
    args = [
        "index", str(photos), "--model", MODEL, "--data-dir", str(tmp_path / "ray"),
        "--labels-from-folders", "--batch-size", "4", "--engine", "ray", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, obj=loader)
    killer.join()
    assert result.exit_code == 0, result.output
    assert killed, "no actor started"
    embedded = embedded_by(pids)
    assert embedded.pop(os.getpid()) == 0, "the driver embedded images itself"
    assert embedded.pop(killed[0]) >= 1, "the actor was killed before it embedded anything"
    assert embedded, "the killed actor was not replaced"
    summary = json.loads(result.stdout)
    assert summary["embedded"] == 40
    assert summary["failed"] == 0
    index(photos, tmp_path / "local")
    assert_same_collection(state_of(tmp_path / "ray"), state_of(tmp_path / "local"))
