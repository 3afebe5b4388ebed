"""Real SIGKILLs (``tests.kill_points``) at seeded points of every phase of ``dinoseek index``
and of ``dinoseek snapshot restore``. After each kill, a rerun must converge to what a clean
run left (ids, payloads, vectors), and one more run must change nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dinoseek.store import EdgeStore
from tests.helpers import write_tree
from tests.kill_points import harness_env, kill_points, read_events
from tests.test_snapshot import contents, fill, leftovers, make_records

# Each kill point costs three processes: the timeouts are hang detectors sized for a 2-core
# machine running other suites beside this one, not expectations of speed.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).parent.parent
PER_KIND = 6  # seeded kill points per kind of event (all of a kind that has fewer)

State = dict[str, tuple[dict[str, Any], list[float]]]


def dinoseek(
    env: dict[str, str], *args: str | Path, kill_at: int = 0
) -> subprocess.CompletedProcess[str]:
    """``dinoseek ARGS`` in a process of its own (the stand-in model), optionally killed."""
    run_env = {**env, "DINOSEEK_KILL_AT": str(kill_at)} if kill_at else env
    return subprocess.run(
        [sys.executable, "-m", "tests.fake_cli", *map(str, args)],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def state_of(data: Path, collection: str = "images") -> State:
    """id -> (payload, vector); ``indexed_at`` (the time a point was written) left out."""
    with EdgeStore(data) as store:
        found = contents(store, collection)
    return {
        point: ({k: v for k, v in payload.items() if k != "indexed_at"}, vector)
        for point, (payload, vector) in found.items()
    }


def clean_run(env: dict[str, str], tmp: Path, before: Path, *args: str) -> tuple[list[str], Path]:
    """Run once on a copy of ``before`` recording the events; (events, the data it left)."""
    data = tmp / "clean"
    shutil.copytree(before, data)
    log = tmp / "events.log"
    done = dinoseek({**env, "DINOSEEK_KILL_LOG": str(log)}, *args, "--data-dir", data)
    assert done.returncode == 0, done.stderr
    return read_events(log), data


# -- snapshot restore -----------------------------------------------------------------------


def test_snapshot_restore_killed_anywhere_leaves_old_or_new_and_a_rerun_converges(
    tmp_path: Path,
) -> None:
    env = harness_env(tmp_path / "site", REPO)
    before = tmp_path / "before"
    with EdgeStore(before) as store:
        fill(store, count=30)  # the collection the restore replaces
    with EdgeStore(tmp_path / "other") as store:
        fill(store, count=45)
        store.upsert("images", make_records(45, seed=7))
        archive = tmp_path / "images.dinoseek-snapshot.tar"
        store.snapshots.create("images", archive)
    old = state_of(before)
    args = ("snapshot", "restore", str(archive), "--replace")
    events, clean = clean_run(env, tmp_path, before, *args)
    new = state_of(clean)
    assert new != old
    points = kill_points(events, per_kind=PER_KIND, seed=0)
    assert {"os.rename", "shutil.rmtree"} <= set(points)
    outcomes: set[str] = set()
    for position in sorted(p for kind in points.values() for p in kind):
        data = tmp_path / f"killed-{position}"
        shutil.copytree(before, data)
        done = dinoseek(env, *args, "--data-dir", data, kill_at=position)
        assert done.returncode == -signal.SIGKILL, (position, done.stderr)
        left = state_of(data)
        assert left in (old, new), f"killed before event {position}: neither old nor new"
        outcomes.add("old" if left == old else "new")
        rerun = dinoseek(env, *args, "--data-dir", data)
        assert rerun.returncode == 0, (position, rerun.stderr)
        assert state_of(data) == new, position
        assert leftovers(data) == []
        again = dinoseek(env, *args, "--data-dir", data)
        assert again.returncode == 0
        assert state_of(data) == new
    assert outcomes == {"old", "new"}  # kills landed both before and after the swap


# -- index ----------------------------------------------------------------------------------


def index_args(photos: Path, labels: Path) -> tuple[str, ...]:
    return ("index", str(photos), "--model", "fake/dinov2", "--batch-size", "1", "--workers",
            "0", "--labels-csv", str(labels), "--json")  # fmt: skip


def write_labels(path: Path, photos: Path, flip: set[str]) -> None:
    rows = ["path,label"]
    for image in sorted(photos.rglob("*.jpg")):
        label = image.parent.name
        rows.append(f"{image},{'relabelled' if image.name in flip else label}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def index_scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A folder indexed once (the state before), then changed so that the next run has every
    phase: new files to embed, files gone to prune, labels to change, duplicates to record;
    and the clean run of that next run (its events and what it left)."""
    tmp = tmp_path_factory.mktemp("index-kills")
    env = harness_env(tmp / "site", REPO)
    photos = tmp / "photos"
    paths = write_tree(photos, per_class=12, classes=("cats", "dogs"))
    labels = tmp / "labels.csv"
    write_labels(labels, photos, set())
    before = tmp / "before"
    first = dinoseek(env, *index_args(photos, labels), "--data-dir", before)
    assert first.returncode == 0, first.stderr
    for gone in paths[:5]:
        gone.unlink()
    for i, source in enumerate(paths[5:9]):
        shutil.copyfile(source, source.with_name(f"copy_{i}.jpg"))
    write_tree(photos / "new", per_class=11, classes=("birds",))
    write_labels(labels, photos, {p.name for p in paths[9:17]})
    events, clean = clean_run(env, tmp, before, *index_args(photos, labels))
    return {"env": env, "photos": photos, "labels": labels, "before": before,
            "events": events, "expected": state_of(clean), "tmp": tmp}  # fmt: skip


def test_the_index_scenario_has_every_phase(index_scenario: dict[str, Any]) -> None:
    kinds = set(index_scenario["events"])
    assert {"store.upsert", "store.set_payload", "store.delete", "store.optimize"} <= kinds
    assert index_scenario["events"].count("store.upsert") >= PER_KIND
    assert index_scenario["events"].count("store.set_payload") >= PER_KIND


@pytest.mark.parametrize(
    "kind",
    ["store.upsert", "store.set_payload", "store.delete", "store.optimize", "os.replace"],
)
def test_index_killed_in_each_phase_converges_and_then_changes_nothing(
    kind: str, index_scenario: dict[str, Any]
) -> None:
    scenario = index_scenario
    env, tmp, expected = scenario["env"], scenario["tmp"], scenario["expected"]
    args = index_args(scenario["photos"], scenario["labels"])
    positions = kill_points(scenario["events"], per_kind=PER_KIND, seed=1).get(kind, [])
    assert positions, f"no {kind} in the run"
    for position in positions:
        data = tmp / f"{kind}-{position}"
        shutil.copytree(scenario["before"], data)
        done = dinoseek(env, *args, "--data-dir", data, kill_at=position)
        assert done.returncode == -signal.SIGKILL, (position, done.stderr)
        rerun = dinoseek(env, *args, "--data-dir", data)
        assert rerun.returncode == 0, (position, rerun.stderr)
        assert state_of(data) == expected, f"killed before event {position} ({kind})"
        again = dinoseek(env, *args, "--data-dir", data)
        summary = json.loads(again.stdout)
        changes = {k: summary[k] for k in ("embedded", "removed", "relabelled", "failed")}
        assert changes == {"embedded": 0, "removed": 0, "relabelled": 0, "failed": 0}, position
        assert state_of(data) == expected
