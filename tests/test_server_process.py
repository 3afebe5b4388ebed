"""A real ``dinoseek serve`` (uvicorn) on a loopback port with the tiny DINOv2, and the CLI
going through it: end to end, the same answers with and without a running server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dinoseek.store import EdgeStore
from dinoseek_cli.main import main
from tests.helpers import refuse_to_wait, write_tree
from tests.live_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.model]
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[str, Path, list[Path], subprocess.Popen[str]]]:
    """(url, data dir, indexed photos, server process), one server for the module, stopped
    with SIGINT at the end (it must exit 0 and leave the store released). The search answers
    of the collection before the server started are in ``DATA/../local.json``
    (see ``local_answers``)."""
    tmp_path = tmp_path_factory.mktemp("served")
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=4)
    data = tmp_path / "data"
    indexed = CliRunner().invoke(
        main,
        [
            "index",
            str(photos),
            "--model",
            str(tiny_model_dir),
            "--data-dir",
            str(data),
            "--workers",
            "0",
            "--labels-from-folders",
            "--regions",
            "-q",
        ],
    )
    assert indexed.exit_code == 0, indexed.output
    local_answers(tmp_path, data, paths)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "search_api", "--port", str(port), "--data-dir", str(data)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a hang detector, not a speed limit
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            output = server.stdout.read() if server.stdout else ""
            raise AssertionError(f"the server did not become ready:\n{output}")
        time.sleep(0.2)
    try:
        yield url, data, paths, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # a clean stop: exit 0, the store released
            try:
                server.wait(timeout=120)  # a hang detector
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert server.returncode == 0, "the server did not stop cleanly on SIGINT"
    with EdgeStore(data) as store:
        assert store.collection_info("images").points == 8  # released, and intact


QUERIES: dict[str, tuple[str, ...]] = {
    "plain": (),
    "path": ("--filter", "path={path}"),
    "root": ("--filter", "root={root}", "-k", "3"),
    "format+label": ("--filter", "format=JPEG", "--filter", "label=dogs", "-k", "5"),
    "sha256": ("--filter", "sha256=nope"),
    "threshold+offset": ("--threshold", "0.5", "--offset", "2", "-k", "3"),
    "regions": ("--regions", "-k", "3"),
    "box+label": ("--region", "0.25,0.2,0.5,0.5", "--filter", "label=dogs", "-k", "3"),
}


def search_json(data: Path, query: Path, *options: str) -> tuple[dict[str, object], str]:
    """``dinoseek search --json``: the document (without the timing-free fields that differ)
    and stderr."""
    filled = [o.format(path=query, root=query.parent.parent) for o in options]
    result = CliRunner().invoke(
        main, ["search", str(query), "--data-dir", str(data), "--json", *filled]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def local_answers(tmp_path: Path, data: Path, paths: list[Path]) -> None:
    """Every query of ``QUERIES``, answered by the embedded store itself (no server yet)."""
    answers = {name: search_json(data, paths[5], *options)[0] for name, options in QUERIES.items()}
    (tmp_path / "local.json").write_text(json.dumps(answers))


def test_the_cli_gives_the_same_answer_with_and_without_a_server(
    served: tuple[str, Path, list[Path], subprocess.Popen[str]],
) -> None:
    url, data, paths, _ = served
    local = json.loads((data.parent / "local.json").read_text())
    for name, options in QUERIES.items():
        remote, stderr = search_json(data, paths[5], *options)
        assert f"the server at {url} holds" in stderr, name
        assert remote == local[name], name
    assert [r["path"] for r in local["path"]["results"]] == [str(paths[5])]
    assert local["sha256"]["results"] == []
    assert {r["label"] for r in local["format+label"]["results"]} == {"dogs"}
    assert all(r["region"] is not None for r in local["regions"]["results"])
    assert {r["label"] for r in local["box+label"]["results"]} == {"dogs"}


def test_search_over_http_and_the_cli_through_the_server(
    served: tuple[str, Path, list[Path], subprocess.Popen[str]],
) -> None:
    url, data, paths, _ = served
    response = httpx.post(
        f"{url}/search", files={"image": paths[3].open("rb")}, params={"top_k": 3}
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["path"] == str(paths[3])

    runner = CliRunner()
    searched = runner.invoke(main, ["search", str(paths[5]), "--data-dir", str(data), "--json"])
    assert searched.exit_code == 0, searched.output
    assert f"the server at {url} holds" in searched.stderr
    assert json.loads(searched.stdout)["results"][0]["path"] == str(paths[5])

    info = runner.invoke(main, ["info", "--data-dir", str(data), "--json"])
    (collection,) = json.loads(info.stdout)["collections"]
    assert collection["points"] == 8
    assert collection["in_use_by"]["url"] == url

    with pytest.MonkeyPatch.context() as patch:  # refused at once: it never waits
        patch.setattr("time.sleep", refuse_to_wait)
        refused = runner.invoke(main, ["index", str(paths[0].parent), "--data-dir", str(data)])
    assert refused.exit_code == 3
    assert "stop the server" in refused.stderr


def test_python_dash_m_search_api_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "search_api", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "--host" in result.stdout
