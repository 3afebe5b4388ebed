"""The indexer as a process: SIGKILL at any moment, SIGINT, a dying decode worker, and a
store held by another process. The processes run the real command with the stand-in model
(``tests.fake_cli``): these tests are about the pipeline, not the model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dinoseek.store import EdgeStore
from dinoseek.synthetic import write_image_folder
from dinoseek_cli.main import main
from indexer.report import load_failures
from tests.fakes import FAKE_LOADER
from tests.helpers import write_bad_files, write_tree
from tests.kill_points import Pause, harness_env, kill_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


MODEL = "fake/dinov2"
POOL_SIZE = 400


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 photo-like 320x240 JPEGs in folders a/ and b/, generated once for the module."""
    folder = tmp_path_factory.mktemp("pool")
    write_image_folder(folder, count=POOL_SIZE, classes=("a", "b"), size=(320, 240))
    return folder


def photos_from(pool: Path, target: Path, count: int) -> list[Path]:
    """The first ``count`` images of the pool, copied into ``target`` (same layout)."""
    paths = []
    for source in sorted(pool.rglob("*.jpg"), key=lambda p: p.name)[:count]:
        path = target / source.relative_to(pool)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        paths.append(path)
    return paths


def start_index(
    photos: Path, data: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "tests.fake_cli",
        "index",
        str(photos),
        "--model",
        MODEL,
        "--data-dir",
        str(data),
        "--batch-size",
        "2",
        "--labels-from-folders",
        "--log-every",
        "0.2",
        *extra,
    ]
    return subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def start_paused(
    photos: Path,
    data: Path,
    tmp_path: Path,
    write: int,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], Pause]:
    """``start_index`` held just before its ``write``-th store write, until ``pause.release()``:
    what the test does meanwhile lands with the rest of the run still to do."""
    pause = Pause(tmp_path / "pause", "store.upsert", write)
    harness = harness_env(tmp_path / "site", REPO)
    process = start_index(photos, data, *extra, env={**harness, **pause.env(), **(env or {})})
    pause.wait(process)
    return process, pause


def snapshot(data: Path) -> dict[str, tuple[tuple[str, ...], object]]:
    """Point id -> (paths, label): the state that must converge."""
    with EdgeStore(data) as store:
        store.acquire("images")
        return {
            p.id: (tuple(p.payload["paths"]), p.payload["label"]) for p in store.scroll("images")
        }


def test_sigkill_at_any_moment_then_rerun_converges(tmp_path: Path, pool: Path) -> None:
    photos = tmp_path / "photos"
    paths = photos_from(pool, photos, 150)
    write_bad_files(photos / "broken")
    (photos / "a" / "dup.jpg").write_bytes(paths[3].read_bytes())

    clean = start_index(photos, tmp_path / "clean")
    assert clean.wait(timeout=240) == 0
    expected = snapshot(tmp_path / "clean")

    killed = tmp_path / "killed"
    harness = harness_env(tmp_path / "site", REPO)
    # One write is one batch of 2 (75 in all). Killed before its first write (the model
    # loaded, the workers decoding), then twice while embedding and writing, each time with
    # most of the work left: the kills land there however fast the machine is.
    for write in (1, 10, 20):
        process = start_index(photos, killed, env={**harness, **kill_env("store.upsert", write)})
        process.communicate(timeout=600)
        assert process.returncode == -signal.SIGKILL
    final = start_index(photos, killed, "--json")
    out, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    summary = json.loads(out)
    written_before = 2 * (0 + 9 + 19)  # the batches each killed run wrote before its kill
    assert summary["unchanged"] >= written_before, "the killed runs' writes were not kept"
    assert summary["embedded"] == 150 - written_before, "the rerun redid kept work"
    state = snapshot(killed)
    assert state == expected
    all_paths = [path for paths, _ in state.values() for path in paths]
    assert len(all_paths) == len(set(all_paths)), "a file is listed by two points"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_cleanly_and_the_rerun_resumes(
    stop_signal: signal.Signals, tmp_path: Path, pool: Path
) -> None:
    photos = tmp_path / "photos"
    photos_from(pool, photos, 400)
    process, pause = start_paused(photos, tmp_path / "data", tmp_path, 10)
    process.send_signal(stop_signal)
    pause.release()
    out, err = process.communicate(timeout=600)
    assert process.returncode == 130, err
    assert "stopped early" in out
    with EdgeStore(tmp_path / "data") as store:
        partial = store.collection_info("images").points
    assert 2 * 9 <= partial < 400
    rerun = start_index(photos, tmp_path / "data")
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0
    assert f"unchanged   {partial:>8,}" in out
    assert "holds 400 images" in out


def decode_workers(parent: int) -> list[int]:
    workers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent_pid = int(stat.rsplit(")", 1)[1].split()[1])
        if parent_pid == parent and b"spawn_main" in cmdline:
            workers.append(int(entry))
    return workers


def test_a_killed_decode_worker_loses_nothing(tmp_path: Path, pool: Path) -> None:
    photos = tmp_path / "photos"
    photos_from(pool, photos, 200)
    process, pause = start_paused(photos, tmp_path / "data", tmp_path, 5, "--workers", "2",
                                  "--json")  # fmt: skip
    workers = decode_workers(process.pid)
    assert workers, "no decode worker found"
    os.kill(workers[0], signal.SIGKILL)
    pause.release()
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert '"failed": 0' in out
    with EdgeStore(tmp_path / "data") as store:
        assert store.collection_info("images").points == 200


def test_a_hung_decode_worker_neither_hangs_the_run_nor_loses_files(
    tmp_path: Path, pool: Path
) -> None:
    """Stopped while it holds files (the usual case: they are retried, with a warning) or
    between two (the other worker does the rest): either way the run ends, complete."""
    photos = tmp_path / "photos"
    photos_from(pool, photos, 120)
    process, pause = start_paused(photos, tmp_path / "data", tmp_path, 5, "--workers", "2",
                                  "--json", env={"DINOSEEK_DECODE_TIMEOUT_S": "2"})  # fmt: skip
    workers = decode_workers(process.pid)
    assert workers, "no decode worker found"
    os.kill(workers[0], signal.SIGSTOP)  # hung: alive, holding its files, answering nothing
    pause.release()
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert '"failed": 0' in out
    with EdgeStore(tmp_path / "data") as store:
        assert store.collection_info("images").points == 120
    assert not running(workers[0])


# A C decoder that segfaults on one file cannot be produced on demand here; this stands in
# for it: in every process of the run (the decode workers import it at start-up), decoding a
# file named poison*.jpg kills the process at once, as a segfault would.
CRASHING_DECODER = textwrap.dedent(
    """
    import os, signal
    import indexer.workers as workers

    real_prepare_file = workers.prepare_file

    def prepare_file(path, config):
        if os.path.basename(path).startswith("poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_prepare_file(path, config)

    workers.prepare_file = prepare_file
    """
)


def test_a_file_that_kills_its_decoder_twice_is_reported_as_decoder_crashed(
    tmp_path: Path, pool: Path
) -> None:
    photos = tmp_path / "photos"
    paths = photos_from(pool, photos, 40)
    poison = paths[5].with_name("poison.jpg")
    shutil.copyfile(paths[5], poison)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASHING_DECODER)
    pythonpath = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])
    process = start_index(photos, tmp_path / "data", "--workers", "2", "--json",
                          env={"PYTHONPATH": pythonpath})  # fmt: skip
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["failed"] == 1
    assert summary["failed_by_reason"] == {"decoder_crashed": 1}
    assert "a decode worker died or hung; retrying" in err
    report = load_failures(Path(summary["failures_report"]))
    assert list(report) == [str(poison)]
    assert "died twice" in report[str(poison)].message
    with EdgeStore(tmp_path / "data") as store:
        assert store.collection_info("images").points == 40


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dinoseek.store import EdgeStore
    from tests.fakes import fake_model
    embedder = fake_model(sys.argv[2])
    store = EdgeStore(Path(sys.argv[1]), owner={"command": "dinoseek serve",
                                               "url": "http://127.0.0.1:8000"})
    store.ensure_collection("images", embedder.space)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_index_refuses_a_store_held_by_a_server(tmp_path: Path, no_waiting: None) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data"), MODEL],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        photos = tmp_path / "photos"
        write_tree(photos, per_class=1)
        result = CliRunner().invoke(
            main,
            ["index", str(photos), "--model", MODEL, "--data-dir", str(tmp_path / "data")],
            obj=FAKE_LOADER,
        )
        assert result.exit_code == 3
        assert "http://127.0.0.1:8000" in result.stderr
        assert "DINOSEEK_QDRANT_URL" in result.stderr
        assert f"pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_decode_workers_do_not_outlive_a_killed_indexer(tmp_path: Path, pool: Path) -> None:
    photos = tmp_path / "photos"
    photos_from(pool, photos, 200)
    process, _ = start_paused(photos, tmp_path / "data", tmp_path, 5, "--workers", "2")
    workers = decode_workers(process.pid)
    assert workers
    process.send_signal(signal.SIGKILL)
    process.communicate()
    deadline = time.monotonic() + 60  # a hang detector: they notice the parent's death at once
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = {pid: Path(f"/proc/{pid}/stat").read_text() for pid in workers if running(pid)}
    assert not alive, f"orphaned decode workers: {alive}"


def running(pid: int) -> bool:
    """Whether ``pid`` is still a live decode worker (an exited one may linger as a zombie
    until its new parent reaps it, and its pid may be reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"spawn_main" in cmdline
