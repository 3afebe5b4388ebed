"""Documented promises (README and docs/) that had no test of their own (issue 17): the
collection's own model when ``--model`` is not given, flags over environment variables, and
exit code 3 for an unreachable store. The real CLI, the real embedded store, the stand-in models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dinoseek.store import EdgeStore
from tests.cli_runner import invoke
from tests.helpers import encode, photo, write_tree


def test_index_without_model_uses_the_collections_own(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2)
    data = tmp_path / "data"
    first = invoke("index", photos, "--model", "fake/other", "--data-dir", data, "-q")
    assert first.exit_code == 0, first.output
    paths[0].with_name("added.jpg").write_bytes(encode(photo(99)))
    second = invoke("index", photos, "--data-dir", data, "--json")  # no --model
    assert second.exit_code == 0, second.output
    report = json.loads(second.stdout)
    assert report["model"] == "fake/other"
    assert report["embedded"] == 1
    with EdgeStore(data) as store:
        assert store.collection_space("images").model_id == "fake/other"


def test_flags_win_over_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=1)
    monkeypatch.setenv("DINOSEEK_COLLECTION", "from-env")
    monkeypatch.setenv("DINOSEEK_DATA_DIR", str(tmp_path / "env-data"))
    result = invoke("index", photos, "--model", "fake/dinov2", "-c", "from-flag", "--data-dir",
                    tmp_path / "flag-data", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "env-data").exists()
    with EdgeStore(tmp_path / "flag-data") as store:
        assert store.list_collections() == ["from-flag"]
    # Without the flags, the variables are used.
    from_env = invoke("index", photos, "--model", "fake/dinov2", "-q")
    assert from_env.exit_code == 0, from_env.output
    with EdgeStore(tmp_path / "env-data") as store:
        assert store.list_collections() == ["from-env"]


def test_an_unreachable_store_exits_3() -> None:
    result = invoke("info", "--qdrant-url", "http://127.0.0.1:9")
    assert result.exit_code == 3
    assert "unreachable" in result.output
