"""The indexer as a process: SIGKILL at any moment, SIGINT, a dying decode worker, and a
store held by another process."""

from __future__ import annotations

import os
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
from indexer.cli import main
from tests.helpers import write_bad_files, write_tree

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


def start_index(photos: Path, data: Path, model: Path, *extra: str) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "indexer",
        "index",
        str(photos),
        "--model",
        str(model),
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
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_line(process: subprocess.Popen[str], text: str, timeout_s: float = 60) -> str:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if text in line:
            return line
        if not line and process.poll() is not None:
            raise AssertionError(f"process ended before printing {text!r}")
    raise AssertionError(f"no {text!r} within {timeout_s} s")


def wait_for_progress(process: subprocess.Popen[str], at_least: int) -> None:
    """Until a progress line (``indexing: N/M ...``, every 0.2 s) shows N >= at_least."""
    while True:
        line = wait_for_line(process, "indexing: ")
        done = int(line.split("indexing: ")[1].split("/")[0].replace(",", ""))
        if done >= at_least:
            return


def snapshot(data: Path) -> dict[str, tuple[tuple[str, ...], object]]:
    """Point id -> (paths, label): the state that must converge."""
    with EdgeStore(data) as store:
        return {
            p.id: (tuple(p.payload["paths"]), p.payload["label"]) for p in store.scroll("images")
        }


def test_sigkill_at_any_moment_then_rerun_converges(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_image_folder(photos, count=150, classes=("a", "b"))  # 500x375 JPEGs
    write_bad_files(photos / "broken")
    (photos / "a" / "dup.jpg").write_bytes(paths[3].read_bytes())

    clean = start_index(photos, tmp_path / "clean", tiny_model_dir)
    assert clean.wait(timeout=120) == 0
    expected = snapshot(tmp_path / "clean")

    killed = tmp_path / "killed"
    # Killed early (while workers start), then twice in the middle of embedding and writing.
    for progress in (0, 10, 40):
        process = start_index(photos, killed, tiny_model_dir)
        if progress:
            wait_for_progress(process, progress)
        else:
            wait_for_line(process, "loaded")
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = start_index(photos, killed, tiny_model_dir, "--json")
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0
    assert '"unchanged": 0,' not in out, "nothing was written before the kills"
    assert '"embedded": 0,' not in out, "the kills came after the end of the work"
    state = snapshot(killed)
    assert state == expected
    all_paths = [path for paths, _ in state.values() for path in paths]
    assert len(all_paths) == len(set(all_paths)), "a file is listed by two points"


def test_sigint_stops_cleanly_and_the_rerun_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, count=400, classes=("a", "b"))
    process = start_index(photos, tmp_path / "data", tiny_model_dir)
    wait_for_progress(process, 20)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "stopped early" in out
    with EdgeStore(tmp_path / "data") as store:
        partial = store.count("images")
    assert 0 < partial < 400
    rerun = start_index(photos, tmp_path / "data", tiny_model_dir)
    out, _ = rerun.communicate(timeout=120)
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


def test_a_killed_decode_worker_loses_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, count=200, classes=("a", "b"))
    process = start_index(photos, tmp_path / "data", tiny_model_dir, "--workers", "2", "--json")
    wait_for_progress(process, 10)
    workers = decode_workers(process.pid)
    assert workers, "no decode worker found"
    os.kill(workers[0], signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "a decode worker died" in err
    assert '"failed": 0' in out
    with EdgeStore(tmp_path / "data") as store:
        assert store.count("images") == 200


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dinoseek.embedder import Embedder
    from dinoseek.store import EdgeStore
    embedder = Embedder.from_pretrained(sys.argv[2], device="cpu")
    store = EdgeStore(Path(sys.argv[1]), owner={"command": "dinoseek serve",
                                               "url": "http://127.0.0.1:8000"})
    store.ensure_collection("images", embedder.space)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_index_refuses_a_store_held_by_a_server(tmp_path: Path, tiny_model_dir: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data"), str(tiny_model_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        photos = tmp_path / "photos"
        write_tree(photos, per_class=1)
        started = time.perf_counter()
        result = CliRunner().invoke(
            main,
            [
                "index",
                str(photos),
                "--model",
                str(tiny_model_dir),
                "--data-dir",
                str(tmp_path / "data"),
                "--workers",
                "0",
            ],
        )
        assert time.perf_counter() - started < 10
        assert result.exit_code == 3
        assert "http://127.0.0.1:8000" in result.stderr
        assert "DINOSEEK_QDRANT_URL" in result.stderr
        assert f"pid {holder.pid}" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_decode_workers_do_not_outlive_a_killed_indexer(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, count=200, classes=("a", "b"))
    process = start_index(photos, tmp_path / "data", tiny_model_dir, "--workers", "2")
    wait_for_progress(process, 10)
    workers = decode_workers(process.pid)
    assert workers
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "orphaned decode workers"
