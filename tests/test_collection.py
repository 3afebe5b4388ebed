"""Deleting and renaming a collection: the store's operations on both stores (the embedded
Qdrant Edge store; the server store on qdrant-client's in-process mode, which speaks a
server's API), and ``dinoseek collection`` with everything that follows a collection: its
probes, its saved catalog and its failures report. The model is the stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from qdrant_client import QdrantClient

from dinoseek.errors import CollectionExistsError, CollectionNotFoundError, StoreLockedError
from dinoseek.store import EdgeStore, SearchQuery, ServerStore, VectorStore
from dinoseek.store.server_rename import RENAME_KEY
from dinoseek_cli.collection import render_rename
from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER
from tests.helpers import write_tree
from tests.live_server import free_port
from tests.test_store_contract import make_space, records, store, store_factory

__all__ = ["store", "store_factory"]  # the fixtures, shared with the store's contract

REPO = Path(__file__).parent.parent


def test_a_renamed_collection_keeps_its_points_vectors_payloads_and_probes(
    store: VectorStore,
) -> None:
    store.ensure_collection("images", make_space())
    written = records(300)  # more than one batch of a server's copy
    store.upsert("images", written)
    store.probes.save("images", "default", b"\x00weights\xff", {"classes": ["cat", "dog"]})
    store.ensure_collection("other", make_space(seed=1, model_id="other/model"))
    before = {p.id: p for p in store.scroll("images", with_vectors=True)}

    done = store.rename_collection("images", "photos")

    assert (done.name, done.new_name, done.points, done.probes) == ("images", "photos", 300, 1)
    assert done.method == ("moved" if isinstance(store, EdgeStore) else "copied")
    assert store.list_collections() == ["other", "photos"]
    assert store.collection_space("photos") == make_space()
    with pytest.raises(CollectionNotFoundError):
        store.collection_info("images")
    store.acquire("photos")
    after = {p.id: p for p in store.scroll("photos", with_vectors=True)}
    assert after.keys() == before.keys()
    for point_id, point in after.items():
        assert point.payload == before[point_id].payload
        assert point.vector is not None
        np.testing.assert_allclose(point.vector, before[point_id].vector, atol=1e-6)
    (hits,) = store.search("photos", [SearchQuery(written[7].vector, top_k=1)])
    assert hits[0].id == written[7].id
    assert [p.name for p in store.probes.list("photos")] == ["default"]
    assert store.probes.load("photos", "default") == b"\x00weights\xff"
    store.ensure_collection("images", make_space())  # the old name is free again, empty
    assert store.probes.list("images") == []
    assert store.count("images") == 0


def test_a_rename_onto_a_taken_name_or_of_a_missing_collection_is_refused(
    store: VectorStore,
) -> None:
    store.ensure_collection("images", make_space())
    store.upsert("images", records(3))
    store.ensure_collection("photos", make_space())
    with pytest.raises(CollectionExistsError, match="dinoseek collection delete photos"):
        store.rename_collection("images", "photos")
    with pytest.raises(CollectionNotFoundError):
        store.rename_collection("nope", "other")
    with pytest.raises(ValueError, match="invalid collection name"):
        store.rename_collection("images", "../escape")
    assert store.list_collections() == ["images", "photos"]
    assert store.count("images") == 3


def test_an_embedded_collection_held_by_another_process_is_neither_renamed_nor_deleted(
    tmp_path: Path,
) -> None:
    owner = {"command": "dinoseek serve", "url": "http://127.0.0.1:8000"}
    with EdgeStore(tmp_path / "data", owner=owner) as server:
        server.ensure_collection("images", make_space())
        server.upsert("images", records(3))
        with EdgeStore(tmp_path / "data") as other:  # another open file: another holder
            with pytest.raises(StoreLockedError, match=r"http://127\.0\.0\.1:8000"):
                other.rename_collection("images", "photos")
            with pytest.raises(StoreLockedError):
                other.delete_collection("images")
            assert other.list_collections() == ["images"]
        assert server.count("images") == 3


def test_the_embedded_store_refuses_a_name_that_is_a_folder_of_its_own(tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "data") as store:
        store.ensure_collection("images", make_space())
        (tmp_path / "data" / "catalogs").mkdir()
        with pytest.raises(CollectionExistsError, match="is not a collection"):
            store.rename_collection("images", "catalogs")
        assert store.list_collections() == ["images"]


def test_a_server_rename_that_stopped_half_way_is_redone(tmp_path: Path) -> None:
    """What a rename left when it stopped before the copy was complete (a collection with the
    marker and no dinoseek metadata) is not a collection, and the next rename starts over;
    a marker naming another collection is not a leftover of this rename."""
    with ServerStore(QdrantClient(path=str(tmp_path / "qdrant"))) as store:
        store.ensure_collection("images", make_space())
        store.upsert("images", records(5))
        store.create_collection_like("photos", "images", metadata={RENAME_KEY: "images"})
        store.acquire("photos")
        store.upsert("photos", records(2, seed=9))  # a partial copy
        store.create_collection_like("albums", "images", metadata={RENAME_KEY: "others"})
        assert store.list_collections() == ["images"]
        with pytest.raises(CollectionExistsError):
            store.rename_collection("images", "albums")
        done = store.rename_collection("images", "photos")
        assert done.points == 5
        assert store.list_collections() == ["photos"]
        store.acquire("photos")
        assert sorted(p.id for p in store.scroll("photos")) == sorted(r.id for r in records(5))
        assert RENAME_KEY not in store.collection_metadata("photos")


# -- the command ------------------------------------------------------------------------------


def invoke(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], obj=FAKE_LOADER, input=stdin)


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Path, Path]:
    """(photos, data): two labelled classes indexed into 'images', with a probe."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=3)
    done = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data,
                  "--labels-from-folders", "--workers", "0", "-q")  # fmt: skip
    assert done.exit_code == 0, done.output
    with EdgeStore(data) as store:
        store.probes.save("images", "default", b"probe bytes", {"classes": ["cats", "dogs"]})
    return photos, data


def test_rename_takes_the_probes_the_saved_catalog_and_the_report_along(
    indexed: tuple[Path, Path],
) -> None:
    photos, data = indexed
    catalog = data / "catalogs" / "images.npz"
    report = data / "reports" / "images.failures.jsonl"
    assert catalog.exists()
    assert report.exists()
    (data / "catalogs" / "photos.npz").write_bytes(b"stale: of a 'photos' deleted long ago")

    renamed = invoke("collection", "rename", "images", "photos", "--data-dir", data)

    assert renamed.exit_code == 0, renamed.output
    assert renamed.stdout == (
        f"renamed collection 'images' to 'photos' in the embedded store at {data}: its "
        f"directory moved (6 points, 1 probe); its files follow: {data}/catalogs/photos.npz, "
        f"{data}/reports/photos.failures.jsonl\n"
    )
    assert not catalog.exists()
    assert not report.exists()
    assert (data / "reports" / "photos.failures.jsonl").exists()
    listed = json.loads(
        invoke("probe", "list", "-c", "photos", "--data-dir", data, "--json").stdout
    )
    assert [p["name"] for p in listed["probes"]] == ["default"]
    # The saved catalog is still the collection's (its state token moved with it): a rerun
    # of index on the new name reads no image and finds everything unchanged.
    again = invoke("index", photos, "-c", "photos", "--data-dir", data, "--workers", "0",
                   "--labels-from-folders", "--json")  # fmt: skip
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["embedded"], summary["unchanged"], summary["points"]) == (0, 6, 6)
    info = json.loads(invoke("info", "--data-dir", data, "--json").stdout)
    assert [c["name"] for c in info["collections"]] == ["photos"]


def test_rename_in_json_and_refusals(indexed: tuple[Path, Path]) -> None:
    _, data = indexed
    invoke("index", indexed[0], "-c", "taken", "--model", "fake/dinov2", "--data-dir", data,
           "--workers", "0", "-q")  # fmt: skip
    taken = invoke("collection", "rename", "images", "taken", "--data-dir", data)
    assert taken.exit_code == 1
    assert "collection 'taken' already exists" in taken.stderr
    assert "`dinoseek collection delete taken`" in taken.stderr
    bad = invoke("collection", "rename", "images", "a/b", "--data-dir", data)
    assert bad.exit_code == 2
    assert "invalid collection name 'a/b'" in bad.output
    missing = invoke("collection", "rename", "nope", "x", "--data-dir", data)
    assert missing.exit_code == 1
    assert "no collection 'nope'" in missing.stderr
    as_json = invoke("collection", "rename", "images", "photos", "--data-dir", data, "--json")
    document = json.loads(as_json.stdout)
    assert (document["method"], document["points"], document["probes"]) == ("moved", 6, 1)
    assert document["files_moved"] == [
        {
            "from": str(data / "catalogs" / "images.npz"),
            "to": str(data / "catalogs" / "photos.npz"),
        },
        {
            "from": str(data / "reports" / "images.failures.jsonl"),
            "to": str(data / "reports" / "photos.failures.jsonl"),
        },
    ]


def test_delete_asks_first_and_removes_everything_that_follows(indexed: tuple[Path, Path]) -> None:
    _, data = indexed
    files = (data / "catalogs" / "images.npz", data / "reports" / "images.failures.jsonl")
    kept = invoke("collection", "delete", "images", "--data-dir", data, stdin="n\n")
    assert kept.exit_code == 1
    assert "Delete collection 'images' (6 points, 1 probe) from the embedded store" in (kept.stderr)
    assert all(path.exists() for path in files)
    assert json.loads(invoke("info", "--data-dir", data, "--json").stdout)["collections"]

    deleted = invoke("collection", "delete", "images", "--data-dir", data, stdin="y\n")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.startswith(
        f"deleted collection 'images' (6 points, 1 probe) from the embedded store at {data}; "
        "removed "
    )
    assert not any(path.exists() for path in files)
    assert json.loads(invoke("info", "--data-dir", data, "--json").stdout)["collections"] == []
    again = invoke("collection", "delete", "images", "--data-dir", data, "--yes")
    assert again.exit_code == 1
    assert "no collection 'images'" in again.stderr


def test_delete_with_yes_asks_nothing_and_json_is_one_document(indexed: tuple[Path, Path]) -> None:
    _, data = indexed
    done = invoke("collection", "delete", "images", "--data-dir", data, "--yes", "--json")
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert (document["action"], document["points"], document["probes"]) == ("delete", 6, 1)
    assert done.stderr == ""


def test_the_messages_that_said_delete_it_first_name_the_command(
    indexed: tuple[Path, Path],
) -> None:
    photos, data = indexed
    assert invoke("curate", "--balanced", "2", "--into", "kept", "--data-dir", data).exit_code == 0
    taken = invoke("curate", "--balanced", "2", "--into", "kept", "--data-dir", data)
    assert "`dinoseek collection delete kept`" in taken.output
    for path in (photos / "cats").iterdir():
        path.unlink()
    for path in (photos / "dogs").iterdir():
        path.unlink()
    emptied = invoke("index", photos, "--data-dir", data, "--workers", "0", "-q")
    assert "start over with `dinoseek collection delete images`" in emptied.stderr


def test_render_of_a_rename_by_copy() -> None:
    from dinoseek.store import CollectionRename

    done = CollectionRename("images", "photos", 1234, 2, "copied")
    assert render_rename(done, "Qdrant server at http://qdrant:6333", []) == (
        "renamed collection 'images' to 'photos' on the Qdrant server at http://qdrant:6333: "
        "1,234 points, 2 probes copied to 'photos' (Qdrant cannot rename a collection), "
        "then 'images' deleted"
    )


@pytest.mark.slow
def test_a_collection_that_a_running_server_holds_is_refused_with_exit_3(
    indexed: tuple[Path, Path],
) -> None:
    """A real ``dinoseek serve`` (the stand-in model) holding the embedded collection."""
    _, data = indexed
    port = free_port()
    fake_cli = [sys.executable, "-m", "tests.fake_cli"]
    server = subprocess.Popen(
        [*fake_cli, "serve", "--port", str(port), "--data-dir", str(data), "-q"],
        cwd=REPO,
        env={**os.environ, "DINOSEEK_API_KEY": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "serving 'images'" in server.stdout.readline()  # printed once it holds it
        for command in (["delete", "images", "--yes"], ["rename", "images", "photos"]):
            refused = subprocess.run(
                [*fake_cli, "collection", *command, "--data-dir", str(data)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert refused.returncode == 3, refused.stderr
            assert "collection 'images' is in use by process" in refused.stderr
            assert f"(dinoseek serve), serving at http://127.0.0.1:{port}; stop it first" in (
                refused.stderr
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    with EdgeStore(data) as store:
        assert store.list_collections() == ["images"]
