"""The saved copy of the catalog (``indexer.catalog_cache``): what it reads back, when it is
used, and that a run's copy always equals what the store itself holds (the real embedded
store, the stand-in model)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.store import EdgeStore, PointRecord
from indexer.catalog import ApiLabel, Catalog, FileEntry, LabelSource, PointEntry
from indexer.catalog_cache import catalog_cache_path, load_catalog, save_catalog
from indexer.pipeline import IndexOptions, IndexRun, IndexSummary, index_folders
from tests.helpers import encode, photo, write_tree

TOKEN = "0123456789abcdef0123456789abcdef"


def content(sha: str, **changes: Any) -> dict[str, Any]:
    values = {
        "sha256": sha, "size": 10, "width": 4, "height": 3, "format": "JPEG",
        "model_id": "m", "indexed_at": "2026-12-02T00:00:00+00:00",
    }  # fmt: skip
    return {**values, **changes}


def entry(path: str, label: str | None = None, mtime_ns: int = 5) -> FileEntry:
    return FileEntry(path, "/r", path.removeprefix("/r/"), 10, mtime_ns, label)


def described(catalog: Catalog) -> dict[str, Any]:
    """Everything a catalog says, files in path order."""
    return {
        point.id: (
            sorted(point.file_entries(), key=lambda f: f.path),
            point.content,
            point.api_label,
        )
        for point in catalog.points.values()
    }


def sample_catalog() -> Catalog:
    return Catalog(
        [
            PointEntry("id-1", {"/r/a.jpg": entry("/r/a.jpg", "cat")}, content("aa")),
            PointEntry(
                "id-2",
                {"/r/c.jpg": entry("/r/c.jpg"), "/r/b.jpg": entry("/r/b.jpg", "dog", -7)},
                content("bb", indexed_at="2026-12-01T00:00:00+00:00"),
            ),
            # Points that do not fit the columns: a payload without a size, a hand-written
            # model id that is a number, a NUL in a path, a size past 64 bits.
            PointEntry("id-3", {"/r/d.jpg": entry("/r/d.jpg")}, {"sha256": "dd"}),
            PointEntry("id-4", {"/r/e.jpg": entry("/r/e.jpg")}, content("ee", model_id=7)),
            PointEntry("id-5", {"/r/f\0.jpg": entry("/r/f\0.jpg")}, content("ff")),
            PointEntry("id-6", {"/r/g.jpg": entry("/r/g.jpg")}, content("gg", size=2**70)),
            # A name that is not UTF-8 (never stored, but a copy must not choke on it).
            PointEntry("id-7", {"/r/\udcff.jpg": entry("/r/\udcff.jpg")}, content("hh")),
            # Labels set over HTTP: one, one removed there, one on an irregular point.
            PointEntry(
                "id-8", {"/r/h.jpg": entry("/r/h.jpg", "cat")}, content("ii"), ApiLabel("dog")
            ),
            PointEntry(
                "id-9", {"/r/i.jpg": entry("/r/i.jpg", "cat")}, content("jj"), ApiLabel(None)
            ),
            PointEntry("id-10", {"/r/j.jpg": entry("/r/j.jpg")}, {"sha256": "kk"}, ApiLabel("x")),
        ]
    )


def test_a_saved_catalog_reads_back_the_same(tmp_path: Path) -> None:
    catalog = sample_catalog()
    path = tmp_path / "catalogs" / "images.npz"
    save_catalog(path, TOKEN, catalog)
    loaded = load_catalog(path, TOKEN)
    assert loaded is not None
    assert described(loaded) == described(catalog)
    assert loaded.owners("/r/b.jpg") == {"id-2"}
    assert loaded.unchanged("/r/b.jpg", 10, -7) == entry("/r/b.jpg", "dog", -7)
    assert sorted(loaded.paths()) == sorted(catalog.paths())
    assert list(tmp_path.joinpath("catalogs").iterdir()) == [path]  # no leftover


def test_an_empty_catalog_reads_back_empty(tmp_path: Path) -> None:
    save_catalog(tmp_path / "c.npz", TOKEN, Catalog())
    loaded = load_catalog(tmp_path / "c.npz", TOKEN)
    assert loaded is not None
    assert len(loaded) == 0


def test_a_copy_of_another_state_or_none_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    assert load_catalog(path, TOKEN) is None  # none saved
    save_catalog(path, TOKEN, sample_catalog())
    assert load_catalog(path, "f" * 32) is None
    assert load_catalog(path, None) is None  # a store that cannot tell


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_flip(path: Path) -> None:
    """One byte of a stored path changed (its member's CRC no longer matches)."""
    data = bytearray(path.read_bytes())
    data[data.index(b"/r/b.jpg") + 3] ^= 0x01
    path.write_bytes(bytes(data))


def damage_index(path: Path) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["file_strings"][0, 0] = 99  # a root outside the string table
    np.savez(path, **arrays)


def damage_negative_index(path: Path) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["point_strings"][0, 0] = -2
    np.savez(path, **arrays)


def damage_counts(path: Path) -> None:
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["point_files"][0] += 1  # more files than paths
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_flip, damage_index, damage_negative_index, damage_counts],
    ids=lambda f: f.__name__,
)
def test_a_damaged_copy_is_ignored_with_a_warning(
    tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.npz"
    save_catalog(path, TOKEN, sample_catalog())
    damage(path)
    with caplog.at_level(logging.WARNING):
        assert load_catalog(path, TOKEN) is None
    assert f"ignoring the saved catalog {path}" in caplog.text


# -- in the pipeline --------------------------------------------------------------------------


def index_options(data_dir: Path, root: Path, **overrides: Any) -> IndexOptions:
    """Indexing ``root`` into ``images`` with the saved copy."""
    settings: dict[str, Any] = {
        "batch_size": 4,
        "workers": 0,
        "progress": "off",
        "catalog_cache": catalog_cache_path(data_dir, "images"),
        **overrides,
    }
    report = data_dir / "reports" / "images.failures.jsonl"
    return IndexOptions(roots=(root,), collection="images", failures_report=report, **settings)


def run(
    embedder: ImageEmbedder, data_dir: Path, root: Path, **overrides: Any
) -> tuple[IndexSummary, dict[str, Any], dict[str, Any] | None]:
    """One run with the saved copy; (its summary, the store's catalog after it, the copy's)."""
    options = index_options(data_dir, root, **overrides)
    with EdgeStore(data_dir) as store:
        summary = index_folders(embedder, store, options)
        store.acquire("images")
        from_store = described(Catalog.load(store, "images"))
        copy = load_catalog(catalog_cache_path(data_dir, "images"), store.state_token("images"))
    return summary, from_store, described(copy) if copy is not None else None


def test_the_copy_follows_every_kind_of_change(embedder: ImageEmbedder, tmp_path: Path) -> None:
    """After each run, the copy is exactly the catalog the store's payloads give, and the next
    run uses it."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    files = write_tree(photos, per_class=3, classes=("cats", "dogs"))
    labels = LabelSource(from_folders=True)
    changes = [
        lambda: None,  # nothing: the copy is used, and kept
        lambda: shutil.copy(files[0], photos / "dogs" / "copy.jpg"),  # a duplicate
        lambda: files[1].write_bytes(encode(photo(seed=77))),  # new content
        lambda: files[2].unlink(),  # a file gone
        lambda: (photos / "dogs" / "copy.jpg").rename(photos / "cats" / "moved.jpg"),  # relabel
        lambda: (photos / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg"),  # failure
        lambda: files[0].unlink(),  # the original of the duplicate gone
    ]
    summary, from_store, copy = run(embedder, data, photos, labels=labels)
    assert summary.catalog_source == "store"
    assert copy == from_store
    for change in changes:
        change()
        summary, from_store, copy = run(embedder, data, photos, labels=labels)
        assert summary.catalog_source == "saved copy"
        assert copy == from_store
    relabelled = LabelSource(from_folders=True, mapping={str(files[3]): "special"})
    summary, from_store, copy = run(embedder, data, photos, labels=relabelled)
    assert summary.relabelled == 1
    assert copy == from_store


def test_a_write_by_anything_else_sends_the_next_run_to_the_store(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=2, classes=("cats",))
    run(embedder, data, photos)
    with EdgeStore(data) as store:  # another command (a label edit in the API, say)
        store.acquire("images")
        (point,) = list(store.scroll("images", batch_size=1))[:1]
        store.delete("images", [point.id])
    summary, from_store, copy = run(embedder, data, photos)
    assert summary.catalog_source == "store"
    assert summary.embedded == 1  # the deleted point was seen missing, and indexed again
    assert copy == from_store


def test_an_interrupted_run_saves_no_copy(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=3, classes=("cats",))
    stop = threading.Event()
    options = index_options(data, photos, batch_size=1)
    with EdgeStore(data) as store:
        interrupted = IndexRun(
            embedder,
            store,
            options,
            stop=stop,
            on_progress=lambda done: stop.set() if done == 1 else None,
        )
        summary = interrupted.run()
    assert summary.interrupted
    assert not catalog_cache_path(data, "images").exists()
    summary, from_store, copy = run(embedder, data, photos)
    assert summary.catalog_source == "store"
    assert copy == from_store


def test_a_refused_point_saves_no_copy(embedder: ImageEmbedder, tmp_path: Path) -> None:
    class Refusing(EdgeStore):
        def upsert(self, name: str, points: Any) -> None:
            if any("/refused/" in str(p.payload.get("path")) for p in points):
                raise TypeError("refused")
            super().upsert(name, points)

    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=2, classes=("a", "refused"))
    with Refusing(data) as store:
        summary = index_folders(embedder, store, index_options(data, photos))
    assert summary.failed_by_reason == {"store_refused": 2}
    assert not catalog_cache_path(data, "images").exists()


def test_a_damaged_copy_costs_only_time(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=2, classes=("cats",))
    first, _, _ = run(embedder, data, photos)
    catalog_cache_path(data, "images").write_bytes(b"PK\x03\x04 damaged")
    summary, from_store, copy = run(embedder, data, photos)
    assert summary.catalog_source == "store"
    assert (summary.unchanged, summary.embedded) == (first.embedded, 0)
    assert copy == from_store


def test_a_copy_that_cannot_be_written_is_a_warning(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=2, classes=("cats",))
    (data / "catalogs").mkdir(parents=True)
    (data / "catalogs" / "images.npz").mkdir()  # a folder where the file goes
    summary, _, _ = run(embedder, data, photos)
    assert summary.embedded == 2
    assert any("could not save the catalog" in w for w in summary.warnings)


def test_points_of_the_store_match_their_copy_with_vectors(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """Points written by other tools into the collection (no files listed) go through."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=2, classes=("cats",))
    run(embedder, data, photos)
    with EdgeStore(data) as store:
        store.acquire("images")
        vector = np.ones(embedder.space.dim, np.float32) / np.sqrt(embedder.space.dim)
        store.upsert(
            "images",
            [PointRecord("00000000-0000-0000-0000-000000000009", vector, {"note": "hand"})],
        )
    summary, from_store, copy = run(embedder, data, photos)
    assert summary.catalog_source == "store"
    assert copy == from_store
    summary, _, _ = run(embedder, data, photos)
    assert summary.catalog_source == "saved copy"


@pytest.mark.parametrize(
    "sha256",
    ["ab" * 32, "AB" * 32, "ab" * 30 + "  ab", "zz" * 32, "ab" * 31, 12],
    ids=["hex", "upper", "spaces", "not-hex", "short", "number"],
)
def test_a_content_hash_reads_back_as_it_was_written(sha256: Any, tmp_path: Path) -> None:
    """A catalog holds a lowercase hex sha256 as its 32 bytes; every value comes back as it
    was, through the store's payload and through the saved copy."""
    point = PointEntry("id-1", {"/r/a.jpg": entry("/r/a.jpg")}, content(sha256))
    assert point.content["sha256"] == sha256
    rebuilt = PointEntry.from_parts("id-1", (entry("/r/a.jpg"),), tuple(content(sha256).values()))
    assert rebuilt.content == point.content
    save_catalog(tmp_path / "c.npz", TOKEN, Catalog([point]))
    loaded = load_catalog(tmp_path / "c.npz", TOKEN)
    assert loaded is not None
    assert loaded.points["id-1"].content["sha256"] == sha256


def test_a_hex_hash_is_held_in_half_the_memory() -> None:
    point = PointEntry("id-1", {}, content("ab" * 32))
    assert point._content[0] == bytes.fromhex("ab" * 32)
