"""Where a model loads from when the hub cannot be reached (``dinoseek.hub``): never the hub
client's half a minute of retries, but at once from the cache, or at once an error that says
what to do. No test here makes a real connection attempt: every socket connection and name
lookup is refused and recorded, and the hub's answer comes from ``HF_HUB_OFFLINE`` or a
stand-in for the probe."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from huggingface_hub import constants

from dinoseek.errors import ModelLoadError
from dinoseek.hub import model_source
from dinoseek.runtime import load_embedder
from dinoseek.settings import DEFAULT_MODEL, Settings
from dinoseek_cli.main import main
from tests.helpers import write_tree

HUB_ID = "example-org/dinov2-offline-test"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse (and record) every name lookup and socket connection of this process."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("the tests make no connection")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def hub_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in offline mode (the test session sets HF_HUB_OFFLINE; the hub client reads it
    once, when it is imported)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A Hugging Face cache that holds nothing."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_and_not_cached_fails_at_once_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch, empty_cache: Path, no_network: list[str]
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the variable alone says it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:
        load_embedder(DEFAULT_MODEL, Settings(device="cpu"))
    message = caught.value.message
    assert no_network == [], "the hub was asked under HF_HUB_OFFLINE"
    assert f"cannot load model {DEFAULT_MODEL!r}: it is not in the Hugging Face cache" in message
    assert str(empty_cache) in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "local directory written by save_pretrained" in message
    assert "MODEL=DIR" in message
    assert "Pass a hub id" not in message  # the id was one


@pytest.mark.usefixtures("hub_allowed")
def test_a_hub_that_does_not_answer_is_asked_once_then_the_error_says_so(
    empty_cache: Path, no_network: list[str]
) -> None:
    asked: list[str] = []

    def silent_hub(endpoint: str) -> bool:
        asked.append(endpoint)
        return False

    with pytest.raises(ModelLoadError) as caught:
        model_source(HUB_ID, reachable=silent_hub)
    assert asked == [constants.ENDPOINT]
    assert no_network == []
    message = caught.value.message
    assert f"the hub ({constants.ENDPOINT}) does not answer" in message
    assert "Download it once with the network" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_a_local_directory_never_asks_the_hub(tmp_path: Path, no_network: list[str]) -> None:
    source = model_source(str(tmp_path), reachable=lambda endpoint: pytest.fail("asked"))
    assert source.local_files_only
    with pytest.raises(ModelLoadError, match="no such directory, and not a hub id"):
        model_source(str(tmp_path / "missing"), reachable=lambda endpoint: pytest.fail("asked"))


def cache_model(cache: Path, repo_id: str, model_dir: Path) -> None:
    """Lay ``model_dir`` out in ``cache`` as the hub client does after a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(model_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.mark.model
@pytest.mark.usefixtures("hub_allowed")
def test_a_cached_model_loads_from_the_cache_when_the_hub_does_not_answer(
    empty_cache: Path, no_network: list[str], tiny_model_dir: Path
) -> None:
    from dinoseek.torch_embedder import load_dinov2

    cache_model(empty_cache, HUB_ID, tiny_model_dir)
    source = model_source(HUB_ID, reachable=lambda endpoint: False)
    assert source.local_files_only
    checkpoint = load_dinov2(HUB_ID, source=source)
    assert checkpoint.config.model_type == "dinov2"
    assert no_network == []


@pytest.mark.model
def test_index_offline_with_the_default_model_says_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_cache: Path, no_network: list[str]
) -> None:
    """``make run IMAGES=...`` without ``MODEL=``: the default hub model, offline."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the variable alone says it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DINOSEEK_MODEL", raising=False)
    write_tree(tmp_path / "photos", per_class=1)
    result = CliRunner().invoke(
        main, ["index", str(tmp_path / "photos"), "--data-dir", str(tmp_path / "d"), "-q"]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.count("error: cannot load model") == 1
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no retries, no traceback
    assert f"{DEFAULT_MODEL!r}: it is not in the Hugging Face cache" in result.stderr
    assert "`make run IMAGES=... MODEL=DIR`" in result.stderr
    assert no_network == []


def test_the_hub_clients_warnings_are_printed_once() -> None:
    script = (
        "from dinoseek.commandline import configure_logging\n"
        "configure_logging(quiet=False)\n"
        "from huggingface_hub.utils import logging\n"
        "logging.get_logger('huggingface_hub.test').warning('said once')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stderr.count("said once") == 1, done.stderr


@pytest.mark.slow
@pytest.mark.model
def test_a_quiet_index_with_a_real_model_prints_its_result_and_nothing_else(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A new process, as a user runs it: the hub client is imported only once the logging
    is configured, so it leaves its progress bars off under --quiet."""
    write_tree(tmp_path / "photos", per_class=1)
    done = subprocess.run(
        [sys.executable, "-m", "dinoseek_cli", "index", str(tmp_path / "photos"),
         "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "-q"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.stderr == ""
    assert done.stdout.startswith("done: 2 files scanned in ")
    assert done.stdout.count("\n") == 1
