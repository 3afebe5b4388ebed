"""``dinoseek serve --watch DIR`` as a real process: files copied in are found by their own
images, deleted ones go, a file written slowly is embedded only once complete, a moved file
is relabelled from its folder, a kill -9 in a watch pass is repaired by the next start, and
polling works where events are not used. The processes run the real command with the
stand-in model (``tests.fake_cli``): these tests are about the watcher, not the model.

Every wait polls the API until the state is reached; its timeout is a hang detector, never
the verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dinoseek.store import EdgeStore
from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER
from tests.helpers import write_tree
from tests.kill_points import Pause, harness_env, kill_env
from tests.live_server import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent
MODEL = "fake/dinov2"
LABELLED_JSON = ("--labels-from-folders", "--json")
HANG_S = 240  # a hang detector: a busy 2-core machine is slow, not stuck


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """8 distinct JPEGs (cats/, dogs/) to copy into watched folders."""
    return write_tree(tmp_path_factory.mktemp("pool"), per_class=4)


@contextmanager
def watching(
    folder: Path,
    data: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    stop: bool = True,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``dinoseek serve --watch folder`` on a free port, once its first pass is done; stopped
    with SIGINT at the end (it must exit 0) unless it died or ``stop`` is False."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.fake_cli",
        "serve",
        "--watch",
        str(folder),
        "--model",
        MODEL,
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--labels-from-folders",
        *extra,
    ]
    environment = env or {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment = {**environment, "DINOSEEK_BATCH_SIZE": "2"}
    log = (data.parent / f"serve-{port}.log").open("w")
    server = subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=environment
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: (watch_state(url) or {}).get("passes", 0) >= 1, "first pass", server)
        yield url, server
    finally:
        if server.poll() is None and stop:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            assert server.returncode == 0, read_log(log.name)
        elif server.poll() is None:
            server.kill()
            server.wait()
        log.close()


def read_log(path: str) -> str:
    return Path(path).read_text(errors="replace")


def wait_until(
    condition: Callable[[], bool], what: str, server: subprocess.Popen[str] | None = None
) -> None:
    """Poll ``condition`` until it holds; fail if the server ends first or nothing happens
    for ``HANG_S`` (stuck, not slow)."""
    deadline = time.monotonic() + HANG_S
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        if server is not None and server.poll() is not None:
            raise AssertionError(f"the server ended (rc {server.returncode}) before: {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {HANG_S} s: {what}")
        time.sleep(0.2)


def ready(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/ready", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def watch_state(url: str) -> dict[str, Any] | None:
    watch = ready(url).get("watch")
    return dict(watch) if watch else None


def neighbours(url: str, image: bytes, k: int = 10) -> list[dict[str, Any]]:
    """The collection's answer to ``image`` (an empty list before the collection exists)."""
    response = httpx.post(
        f"{url}/search",
        params={"top_k": k},
        files={"image": ("query.jpg", image, "image/jpeg")},
        timeout=30,
    )
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return list(response.json()["results"])


def found(url: str, path: Path, image: bytes | None = None) -> dict[str, Any] | None:
    """The hit for ``path`` when its own image finds it first, else None."""
    hits = neighbours(url, image if image is not None else path.read_bytes(), k=1)
    if hits and hits[0]["path"] == str(path) and hits[0]["score"] > 0.999:
        return hits[0]
    return None


def listed(url: str, path: Path, image: bytes) -> bool:
    """Whether any point of the collection still lists ``path`` near its old image."""
    return any(hit["path"] == str(path) for hit in neighbours(url, image))


def copy_in(sources: list[Path], folder: Path) -> list[Path]:
    """Copy ``sources`` into ``folder``/CLASS/ (their own class folders)."""
    copied = []
    for source in sources:
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(target)
    return copied


def failures(data: Path) -> dict[str, str]:
    """The failures report: path -> code."""
    report = data / "reports" / "images.failures.jsonl"
    if not report.exists():
        return {}
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return {row["path"]: row["code"] for row in rows}


def test_copied_files_are_found_and_deleted_ones_go(tmp_path: Path, pool: list[Path]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    with watching(folder, tmp_path / "data") as (url, server):
        copied = copy_in(pool[:4], folder)
        for path in copied:
            wait_until(lambda p=path: found(url, p) is not None, f"{path} found", server)
        contents = {path: path.read_bytes() for path in copied}
        for path in copied[:2]:
            path.unlink()
        for path in copied[:2]:
            wait_until(lambda p=path: not listed(url, p, contents[p]), f"{path} gone", server)
        for path in copied[2:]:
            assert found(url, path) is not None
        wait_until(lambda: (watch_state(url) or {}).get("phase") == "idle", "idle", server)
        state = ready(url)
        assert state["points"] == 2
        assert state["watch"]["mode"] == "events"
        assert state["watch"]["folders"] == [str(folder)]


def test_a_file_being_written_is_embedded_only_once_complete(
    tmp_path: Path, pool: list[Path]
) -> None:
    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    data = tmp_path / "data"
    content = pool[0].read_bytes()
    slow = folder / "cats" / "slow.jpg"
    with watching(folder, data) as (url, server):
        with slow.open("wb") as writer:
            writer.write(content[: len(content) // 2])
            writer.flush()
            os.fsync(writer.fileno())
            # A file copied after the half is written: once it is found, the watcher has seen
            # (and passed over) the half-written file, whatever the machine's speed.
            (marker,) = copy_in([pool[5]], folder)
            wait_until(lambda: found(url, marker) is not None, "the marker found", server)
            assert not listed(url, slow, content)
            assert str(slow) not in failures(data)  # not tried either
            assert (watch_state(url) or {}).get("pending", 0) >= 1
            writer.write(content[len(content) // 2 :])
        wait_until(lambda: found(url, slow) is not None, "the completed file found", server)
        assert str(slow) not in failures(data)
        assert ready(url)["points"] == 2


def test_a_moved_file_is_relabelled_from_its_folder(tmp_path: Path, pool: list[Path]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    with watching(folder, tmp_path / "data") as (url, server):
        (cat,) = copy_in(pool[:1], folder)
        wait_until(lambda: found(url, cat) is not None, "the cat found", server)
        assert (found(url, cat) or {})["label"] == "cats"
        moved = folder / "birds" / cat.name
        moved.parent.mkdir()
        os.rename(cat, moved)
        wait_until(lambda: found(url, moved) is not None, "the moved file found", server)
        assert (found(url, moved) or {})["label"] == "birds"
        assert not listed(url, cat, moved.read_bytes())
        assert ready(url)["points"] == 1


def test_polling_finds_changes(tmp_path: Path, pool: list[Path]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    with watching(folder, tmp_path / "data", "--poll", "--poll-interval", "0.5") as (url, server):
        assert (watch_state(url) or {})["mode"] == "polling"
        copied = copy_in(pool[:2], folder)
        for path in copied:
            wait_until(lambda p=path: found(url, p) is not None, f"{path} found", server)
        content = copied[0].read_bytes()
        copied[0].unlink()
        wait_until(lambda: not listed(url, copied[0], content), "the deleted file gone", server)
        assert found(url, copied[1]) is not None


def test_a_kill_in_a_watch_pass_is_repaired_by_the_next_start(
    tmp_path: Path, pool: list[Path]
) -> None:
    """SIGKILL just before the second write of a watch pass (batches of 2: 3 writes for 6
    files), then a plain restart: every file found, and `dinoseek index` finds the catalog
    mirroring the folder (nothing to embed)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    data = tmp_path / "data"
    env = {**harness_env(tmp_path / "site", REPO), **kill_env("store.upsert", 2)}
    with watching(folder, data, env=env, stop=False) as (_, server):
        copied = copy_in(pool[:6], folder)
        server.wait(timeout=HANG_S)
        assert server.returncode == -signal.SIGKILL
    with watching(folder, data) as (url, server):
        for path in copied:
            wait_until(lambda p=path: found(url, p) is not None, f"{path} found", server)
        assert ready(url)["points"] == 6
    rerun = CliRunner().invoke(
        main,
        ["index", str(folder), "--model", MODEL, "--data-dir", str(data), *LABELLED_JSON],
        obj=FAKE_LOADER,
    )
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert (summary["embedded"], summary["unchanged"], summary["points"]) == (0, 6, 6)


def test_index_watch_indexes_changes_until_sigterm(tmp_path: Path, pool: list[Path]) -> None:
    """``dinoseek index --watch``: the first pass's summary on stdout, a line per later pass
    on stderr, and SIGTERM a clean stop (exit 0) with the store released."""
    folder = tmp_path / "photos"
    copy_in(pool[:1], folder)
    data = tmp_path / "data"
    stderr = tmp_path / "index.err"
    command = [sys.executable, "-m", "tests.fake_cli", "index", str(folder), "--watch"]
    command += ["--model", MODEL, "--data-dir", str(data), "--json"]
    with stderr.open("w") as err:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            first = json.loads(process.stdout.readline())
            assert (first["embedded"], first["points"]) == (1, 1)
            copy_in(pool[1:3], folder)
            wait_until(lambda: "2 embedded; 3 images" in stderr.read_text(), "a pass", process)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=HANG_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr.read_text()
    assert "stopped watching" in stderr.read_text()
    with EdgeStore(data) as store:
        assert store.collection_info("images").points == 3


def test_queries_are_answered_while_a_pass_writes(tmp_path: Path, pool: list[Path]) -> None:
    """The watcher held inside a pass, just before its first write (a pause of the harness):
    the service answers searches and /ready meanwhile, then the pass completes."""
    folder = tmp_path / "photos"
    copy_in(pool[:2], folder)
    pause = Pause(tmp_path / "pause", "store.upsert", 2)  # the first pass writes once
    env = {**harness_env(tmp_path / "site", REPO), **pause.env()}
    with watching(folder, tmp_path / "data", env=env) as (url, server):
        added = copy_in(pool[2:4], folder)
        pause.wait(server)
        state = ready(url)
        assert state["watch"]["phase"] == "indexing"
        assert state["points"] == 2
        for path in pool[:2]:
            assert found(url, folder / path.parent.name / path.name) is not None
        assert found(url, added[0]) is None  # not written yet
        pause.release()
        for path in added:
            wait_until(lambda p=path: found(url, p) is not None, f"{path} found", server)
