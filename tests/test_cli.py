"""The ``dinoseek`` command through click's CliRunner: output, JSON, errors, exit codes.

The model is the stand-in (``tests.fakes``): these tests are about the commands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER
from tests.helpers import encode, photo, write_bad_files, write_tree

MODEL = "fake/dinov2"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, obj=FAKE_LOADER)


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    """A labelled tree (with bad files) indexed into ``tmp_path / data``."""
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=3)
    write_bad_files(photos / "broken")
    data = tmp_path / "data"
    result = invoke(
        "index",
        photos,
        "--model",
        MODEL,
        "--data-dir",
        data,
        "--labels-from-folders",
        "--workers",
        "0",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return photos, data, paths


def test_help_explains_commands_and_environment() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("index", "search", "info"):
        assert command in result.output
    index_help = invoke("index", "--help").output
    assert "DINOSEEK_MODEL" in index_help
    assert "--labels-from-folders" in index_help
    assert "Exit codes" in index_help


def test_index_json_is_one_document(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=2)
    write_bad_files(photos / "bad")
    result = invoke(
        "index",
        photos,
        "--model",
        MODEL,
        "--data-dir",
        tmp_path / "d",
        "--workers",
        "0",
        "--json",
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["embedded"] == 4
    assert summary["failed"] == 10
    assert summary["failed_by_reason"]["too_many_pixels"] == 2
    assert Path(summary["failures_report"]).exists()


def test_index_human_summary(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=2)
    result = invoke(
        "index", photos, "--model", MODEL, "--data-dir", tmp_path / "d", "--workers", "0"
    )
    assert result.exit_code == 0
    assert "embedded           4" in result.stdout
    assert "holds 4 images" in result.stdout


def test_index_quiet_prints_only_the_result_line(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=2)
    args = ("index", photos, "--model", MODEL, "--data-dir", tmp_path / "d", "--workers", "0")
    result = invoke(*args, "-q")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("done: 4 files scanned in ")
    assert lines[0].endswith(
        "collection 'images' (embedded store at " + str(tmp_path / "d") + ") holds 4 images"
    )


def test_search_table_json_and_filters(indexed: tuple[Path, Path, list[Path]]) -> None:
    _, data, paths = indexed
    # No --model: the collection's own model is used.
    table = invoke("search", paths[0], "--data-dir", data, "-k", "3")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0] == f"already there: {paths[0]} (similarity 1.0000, at or above 0.95)"
    assert lines[1].startswith(
        "labels (vote of the 6 nearest in the collection, filters aside): cats"
    )
    first_row = lines[3]
    assert str(paths[0]) in first_row
    assert "cats" in first_row

    as_json = invoke(
        "search", paths[0], "--data-dir", data, "-k", "6", "--json", "--filter", "label=dogs"
    )
    document = json.loads(as_json.stdout)
    assert len(document["results"]) == 3
    assert {r["label"] for r in document["results"]} == {"dogs"}
    assert document["model"] == MODEL


def test_search_errors_have_exit_codes(
    indexed: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    photos, data, paths = indexed
    bad_filter = invoke("search", paths[0], "--data-dir", data, "--filter", "colour=red")
    assert bad_filter.exit_code == 2
    assert "label, root, path" in bad_filter.output
    missing = invoke("search", tmp_path / "nope.jpg", "--data-dir", data)
    assert missing.exit_code == 1
    assert "file not found" in missing.stderr
    corrupt = invoke("search", photos / "broken" / "truncated.jpg", "--data-dir", data, "--json")
    assert corrupt.exit_code == 1
    assert json.loads(corrupt.stdout)["error"]["code"] == "truncated_image"
    unknown = invoke("search", paths[0], "--data-dir", data, "--collection", "other")
    assert unknown.exit_code == 1
    assert "dinoseek index" in unknown.stderr


def test_mismatched_model_is_refused(indexed: tuple[Path, Path, list[Path]]) -> None:
    photos, data, paths = indexed
    result = invoke("index", photos, "--model", "fake/other", "--data-dir", data, "--workers", "0")
    assert result.exit_code == 1
    assert "different model" in result.stderr
    searched = invoke("search", paths[0], "--model", "fake/other", "--data-dir", data)
    assert searched.exit_code == 1


def test_info(indexed: tuple[Path, Path, list[Path]]) -> None:
    _, data, _ = indexed
    text = invoke("info", "--data-dir", data)
    assert text.exit_code == 0
    assert "images" in text.stdout
    assert "6" in text.stdout
    assert "images                       6    exact*     32" in text.stdout
    assert "* no HNSW index: Qdrant builds one once the vectors pass its indexing" in text.stdout
    assert "until then each search compares every vector: exact" in text.stdout
    document = json.loads(invoke("info", "--data-dir", data, "--json").stdout)
    (collection,) = document["collections"]
    assert collection["points"] == 6
    assert collection["dim"] == 32
    assert (collection["indexed_vectors"], collection["search"]) == (0, "exact")
    assert document["size_bytes"] > 0
    empty = invoke("info", "--data-dir", data / "nothing-here")
    assert "no collections yet" in empty.stdout


@pytest.mark.slow
def test_info_says_when_qdrant_indexes_and_what_is_pending(tmp_path: Path) -> None:
    """The threshold ``info`` states is the one the real store applies: 384-d vectors below
    it stay unindexed after an index build, a few more are indexed; points written after the
    build are pending until the next."""
    import uuid

    from dinoseek.store import PointRecord
    from dinoseek_cli.info import threshold_points
    from tests.helpers import unit_vectors
    from tests.test_store_contract import make_space

    data = tmp_path / "data"
    below = threshold_points(384) - 50
    vectors = unit_vectors(below + 200, 384, seed=4)

    def write(rows: range, build: bool) -> dict[str, Any]:
        with EdgeStore(data) as store:
            store.ensure_collection("images", make_space(384))
            store.acquire("images")
            store.upsert("images", [PointRecord(str(uuid.UUID(int=i)), vectors[i], {})
                                    for i in rows])  # fmt: skip
            if build:
                store.optimize("images")
        (entry,) = json.loads(invoke("info", "--data-dir", data, "--json").stdout)["collections"]
        return entry

    assert write(range(below), build=True)["search"] == "exact"
    indexed = write(range(below, below + 100), build=True)
    assert (indexed["indexed_vectors"], indexed["search"]) == (below + 100, "hnsw")
    pending = write(range(below + 100, below + 200), build=False)
    assert pending["search"] == "pending"
    text = invoke("info", "--data-dir", data).stdout
    assert "images: 100 points are not in the index yet, and searched exactly meanwhile" in text


def test_invalid_settings_are_usage_errors(tmp_path: Path) -> None:
    result = invoke("info", "--data-dir", tmp_path, "--collection", "../escape")
    assert result.exit_code == 2
    assert "invalid collection name" in result.output


def test_python_dash_m_indexer_is_the_index_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "indexer", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: python -m indexer [OPTIONS] FOLDERS...")
    assert "--labels-from-folders" in result.stdout


def test_labels_from_a_csv_file(tmp_path: Path) -> None:
    """``--labels-csv``: rows of path,label with absolute paths or paths relative to the
    folder; files without a row get no label; a rerun with another CSV relabels without
    re-embedding."""
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        f"{paths[0]},tabby\n{paths[1].relative_to(photos)},siamese\n{paths[2]},beagle\n"
    )
    data = tmp_path / "data"
    first = invoke("index", photos, "--model", MODEL, "--data-dir", data, "--labels-csv",
                   csv_file, "--workers", "0", "--quiet")  # fmt: skip
    assert first.exit_code == 0, first.output
    with EdgeStore(data) as store:
        store.acquire("images")
        labels = {p.payload["path"]: p.payload.get("label") for p in store.scroll("images")}
    assert labels[str(paths[0])] == "tabby"
    assert labels[str(paths[1])] == "siamese"
    assert labels[str(paths[2])] == "beagle"
    assert labels[str(paths[3])] in (None, "")
    csv_file.write_text(f"{paths[3]},poodle\n")
    second = invoke("index", photos, "--data-dir", data, "--labels-csv", csv_file, "--json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.stdout)
    assert report["embedded"] == 0  # relabelled, not re-embedded
    with EdgeStore(data) as store:
        store.acquire("images")
        labels = {p.payload["path"]: p.payload.get("label") for p in store.scroll("images")}
    assert labels[str(paths[3])] == "poodle"


def test_a_rerun_with_nothing_new_loads_no_model(indexed: tuple[Path, Path, list[Path]]) -> None:
    """The model loads once a file needs embedding, and a run over an unchanged folder reads
    the saved catalog instead of every payload."""
    photos, data, paths = indexed
    loaded: list[str] = []

    def counting(model_id: str, settings: Settings) -> ImageEmbedder:
        loaded.append(model_id)
        return FAKE_LOADER.load(model_id, settings)

    def index() -> dict[str, Any]:
        args = ["index", str(photos), "--data-dir", str(data), "--workers", "0", "--json"]
        result = CliRunner().invoke(main, args, obj=ModelLoader(load=counting))
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    unchanged = index()
    assert loaded == []
    assert unchanged["catalog_source"] == "saved copy"
    assert unchanged["model"] == MODEL  # the collection's, named without loading it
    assert (unchanged["embedded"], unchanged["unchanged"]) == (0, len(paths))
    (photos / "cats" / "new.jpg").write_bytes(encode(photo(seed=99)))
    changed = index()
    assert loaded == [MODEL]
    assert changed["embedded"] == 1
