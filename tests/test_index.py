"""The indexing pipeline on the real embedded store, with the stand-in model."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from dinoseek.embedder_protocol import ImageEmbedder, Pixels, VectorOrError
from dinoseek.errors import ConfigError, EmbeddingError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.images import load_image
from dinoseek.labels_csv import read_labels_csv
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek.store import EdgeStore, SearchQuery, point_id_for_sha256
from indexer.catalog import (
    Catalog,
    FileEntry,
    LabelSource,
    PointEntry,
    build_payload,
)
from indexer.pipeline import IndexOptions, IndexSummary, index_folders
from indexer.report import load_failures
from tests.helpers import encode, photo, write_bad_files, write_tree


def run(
    embedder: ImageEmbedder, data_dir: Path, *roots: Path, workers: int = 0, **overrides: object
) -> IndexSummary:
    options = IndexOptions(
        roots=tuple(roots),
        collection="images",
        failures_report=data_dir / "reports" / "images.failures.jsonl",
        batch_size=4,
        workers=workers,
        progress="off",
        **overrides,  # type: ignore[arg-type]
    )
    with EdgeStore(data_dir) as store:
        return index_folders(embedder, store, options)


def stored_points(data_dir: Path) -> dict[str, dict[str, object]]:
    with EdgeStore(data_dir) as store:
        store.acquire("images")
        return {p.id: p.payload for p in store.scroll("images")}


def test_first_run_embeds_reports_and_describes(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    good = write_tree(photos, per_class=3)
    expected_failures = write_bad_files(photos / "broken")
    (photos / "cats" / "copy_of_cat.jpg").write_bytes(good[0].read_bytes())
    (photos / "notes.txt").write_text("not scanned")

    summary = run(embedder, tmp_path / "data", photos, workers=1)

    assert summary.scanned == len(good) + 1 + len(expected_failures)
    assert summary.embedded == len(good)
    assert summary.duplicates == 1
    assert summary.failed == len(expected_failures)
    assert sum(summary.failed_by_reason.values()) == summary.failed
    assert summary.points == len(good)
    assert not summary.interrupted

    failures = load_failures(tmp_path / "data" / "reports" / "images.failures.jsonl")
    assert {Path(p).name: r.code for p, r in failures.items()} == expected_failures
    assert all(Path(p).name in r.message for p, r in failures.items())

    points = stored_points(tmp_path / "data")
    cat_id = point_id_for_sha256(__import__("hashlib").sha256(good[0].read_bytes()).hexdigest())
    cat = points[cat_id]
    assert cat["paths"] == sorted([str(good[0]), str(photos / "cats" / "copy_of_cat.jpg")])
    assert cat["label"] is None  # labels were not asked for
    assert cat["width"] == 160
    assert cat["height"] == 120
    assert cat["format"] == "JPEG"
    assert cat["roots"] == [str(photos)]
    assert cat["model_id"] == embedder.model_id
    assert len(cat["files"]) == 2  # type: ignore[arg-type]


def test_stored_vector_is_the_embedders_vector(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (path,) = write_tree(photos, per_class=1, classes=("a",))
    run(embedder, tmp_path / "data", photos)
    pixels = DINOV2_PREPROCESSING.to_pixels(load_image(path, max_pixels=10**8).image)
    vector = embedder.embed_pixels(pixels[None])[0]
    with EdgeStore(tmp_path / "data") as store:
        store.acquire("images")
        ((hit,),) = store.search("images", [SearchQuery(vector=vector, top_k=1)])
    assert hit.payload["path"] == str(path)
    assert hit.score >= 0.999


def test_second_run_over_an_unchanged_folder_embeds_nothing(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=3)
    write_bad_files(photos / "broken")
    first = run(embedder, tmp_path / "data", photos)
    second = run(embedder, tmp_path / "data", photos)
    assert second.embedded == 0
    assert second.unchanged == first.embedded
    assert second.failed == 0
    assert second.known_failures_skipped == first.failed
    assert second.points == first.points
    # The report still lists the files that fail: it is the current state, not one run's log.
    assert len(load_failures(tmp_path / "data" / "reports" / "images.failures.jsonl")) == (
        first.failed
    )


def test_unchanged_files_are_not_read_again(embedder: ImageEmbedder, tmp_path: Path) -> None:
    """A file whose size and modification time are unchanged is trusted, not read: its bytes
    are swapped for another image of the same size behind the indexer's back (mtime put
    back), and the rerun neither notices nor re-keys it."""
    photos = tmp_path / "photos"
    write_tree(photos, per_class=2)
    first = run(embedder, tmp_path / "data", photos)
    before = stored_points(tmp_path / "data")
    target, other = sorted(photos.rglob("*.jpg"))[:2]
    stat = target.stat()
    swapped = other.read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0")
    target.write_bytes(swapped)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = run(embedder, tmp_path / "data", photos)
    assert second.unchanged == first.embedded
    assert second.embedded == second.failed == 0
    assert stored_points(tmp_path / "data") == before


def test_changed_touched_and_retried_files(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2, classes=("a",))
    bad = photos / "a" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    run(embedder, tmp_path / "data", photos)
    before = stored_points(tmp_path / "data")

    paths[0].write_bytes(encode(photo(999, (100, 100))))  # new content
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    summary = run(embedder, tmp_path / "data", photos)

    assert summary.embedded == 1
    assert summary.unchanged == 1
    after = stored_points(tmp_path / "data")
    assert len(after) == 2
    assert len(set(after) - set(before)) == 1  # the old content's point was replaced

    retried = run(embedder, tmp_path / "data", photos, retry_failed=True)
    assert retried.failed_by_reason == {"corrupt_image": 1}
    bad.write_bytes(encode(photo(5, (90, 90))))
    fixed = run(embedder, tmp_path / "data", photos)
    assert fixed.embedded == 1
    assert fixed.failed == 0
    assert not (tmp_path / "data" / "reports" / "images.failures.jsonl").read_text().strip()


def test_duplicates_share_one_point_until_one_copy_goes(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (original,) = write_tree(photos, per_class=1, classes=("a",))
    copy = photos / "b" / "copy.jpg"
    copy.parent.mkdir()
    copy.write_bytes(original.read_bytes())
    summary = run(embedder, tmp_path / "data", photos)
    assert (summary.embedded, summary.duplicates, summary.points) == (1, 1, 1)
    (payload,) = stored_points(tmp_path / "data").values()
    assert payload["paths"] == [str(original), str(copy)]

    original.unlink()
    summary = run(embedder, tmp_path / "data", photos)
    assert (summary.embedded, summary.removed, summary.points) == (0, 1, 1)
    (payload,) = stored_points(tmp_path / "data").values()
    assert payload["paths"] == [str(copy)]
    assert payload["path"] == str(copy)


def test_pruning_and_no_prune(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=3, classes=("a",))
    run(embedder, tmp_path / "data", photos)
    paths[0].unlink()
    kept = run(embedder, tmp_path / "data", photos, prune=False)
    assert (kept.removed, kept.points) == (0, 3)
    pruned = run(embedder, tmp_path / "data", photos)
    assert (pruned.removed, pruned.points) == (1, 2)


def test_a_root_that_looks_empty_is_not_wiped(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=2, classes=("a",))
    run(embedder, tmp_path / "data", photos)
    for path in (photos / "a").iterdir():
        path.unlink()  # as if the disk behind the folder were unmounted
    summary = run(embedder, tmp_path / "data", photos)
    assert summary.removed == 0
    assert summary.points == 2
    assert "nothing was removed" in summary.warnings[0]


def test_other_roots_are_left_alone(embedder: ImageEmbedder, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_tree(first, per_class=2, classes=("a",))
    write_tree(second, per_class=2, classes=("b",))
    run(embedder, tmp_path / "data", first, second)
    summary = run(embedder, tmp_path / "data", second)
    assert (summary.removed, summary.points) == (0, 4)


def test_labels_from_folders_csv_and_relabelling(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2)
    nested = photos / "cats" / "kittens" / "k.jpg"
    nested.parent.mkdir()
    nested.write_bytes(encode(photo(77)))
    top = photos / "top.jpg"
    top.write_bytes(encode(photo(78)))
    run(embedder, tmp_path / "data", photos)
    assert {p["label"] for p in stored_points(tmp_path / "data").values()} == {None}

    summary = run(embedder, tmp_path / "data", photos, labels=LabelSource(from_folders=True))
    assert summary.embedded == 0
    assert summary.relabelled == len(paths) + 1  # top.jpg sits in the root: no label
    labels = {p["path"]: p["label"] for p in stored_points(tmp_path / "data").values()}
    assert labels[str(paths[0])] == "cats"
    assert labels[str(paths[-1])] == "dogs"
    assert labels[str(nested)] == "kittens"
    assert labels[str(top)] is None

    mapping = {str(top): "landscape", "cats/kittens/k.jpg": "kitten"}
    run(embedder, tmp_path / "data", photos, labels=LabelSource(from_folders=True, mapping=mapping))
    labels = {p["path"]: p["label"] for p in stored_points(tmp_path / "data").values()}
    assert labels[str(top)] == "landscape"
    assert labels[str(nested)] == "kitten"
    assert labels[str(paths[0])] == "cats"


def test_model_mismatch_is_refused(
    embedder: ImageEmbedder, other_embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=1, classes=("a",))
    run(embedder, tmp_path / "data", photos)
    from dinoseek.errors import CollectionMismatchError

    with pytest.raises(CollectionMismatchError, match="different model"):
        run(other_embedder, tmp_path / "data", photos)


class FailsSomeImages(FakeEmbedder):
    """A model that cannot embed images whose mean brightness is above ``threshold`` (as an
    image that alone exhausts a GPU's memory would fail); the others embed as usual."""

    def __init__(self, threshold: float) -> None:
        super().__init__(model_id="fake/dinov2", seed=fake_seed("fake/dinov2"))
        self.threshold = threshold

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        vectors = super().embed_each(pixels)
        return [
            EmbeddingError("not enough memory to embed this image", code="out_of_memory")
            if float(image.mean()) > self.threshold
            else vector
            for image, vector in zip(pixels, vectors, strict=True)
        ]


def fake_seed(model_id: str) -> int:
    from tests.fakes import fake_model

    return fake_model(model_id).seed


def test_images_that_cannot_be_embedded_are_reported_not_fatal(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=4)
    brightness = sorted(
        float(DINOV2_PREPROCESSING.to_pixels(load_image(p, max_pixels=10**8).image).mean())
        for p in paths
    )
    threshold = (brightness[2] + brightness[3]) / 2  # the five brightest fail
    summary = run(FailsSomeImages(threshold), tmp_path / "data", photos)
    assert summary.embedded == 3
    assert summary.failed_by_reason == {"out_of_memory": 5}
    assert summary.points == 3
    failures = load_failures(tmp_path / "data" / "reports" / "images.failures.jsonl")
    assert {r.code for r in failures.values()} == {"out_of_memory"}
    assert len(failures) == 5


def test_stop_event_ends_the_run_cleanly(embedder: ImageEmbedder, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=10)
    stop = threading.Event()
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        batch_size=2,
        workers=0,
        progress="off",
        failures_report=tmp_path / "report.jsonl",
    )
    with EdgeStore(tmp_path / "data") as store:
        from indexer.pipeline import IndexRun

        run_ = IndexRun(
            embedder,
            store,
            options,
            stop=stop,
            on_progress=lambda done: stop.set() if done >= 5 else None,
        )
        summary = run_.run()
    assert summary.interrupted
    assert 0 < summary.points < 20
    resumed = run(embedder, tmp_path / "data", photos)
    assert resumed.points == 20
    assert resumed.unchanged == summary.points


def test_the_catalog_reads_back_every_field_of_every_file(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """What change detection and relabelling rest on: each file's path, root, relative path,
    size, mtime and label, as the payloads hold them."""
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2)
    run(embedder, tmp_path / "data", photos, labels=LabelSource(from_folders=True))
    with EdgeStore(tmp_path / "data") as store:
        store.acquire("images")
        catalog = Catalog.load(store, "images")
    assert sorted(catalog.paths()) == sorted(str(p) for p in paths)
    for path in paths:
        (owner,) = catalog.owners(str(path))
        entry = catalog.points[owner].files[str(path)]
        stat = path.stat()
        assert entry == FileEntry(
            path=str(path), root=str(photos), relative_path=str(path.relative_to(photos)),
            size=stat.st_size, mtime_ns=stat.st_mtime_ns, label=path.parent.name,
        )  # fmt: skip
        assert (
            catalog.points[owner].content["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        )
        assert set(catalog.points[owner].content) == {
            "sha256", "size", "width", "height", "format", "model_id", "indexed_at",
        }  # fmt: skip
    assert catalog.owners(str(photos / "never-indexed.jpg")) == set()


# -- --labels-csv files and the payload the catalog writes -----------------------------------


def write_csv(tmp_path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return path


def test_rows_with_an_optional_header_blank_lines_and_a_byte_order_mark(tmp_path: Path) -> None:
    text = "\ufeffPath , LABEL\r\n\r\na.jpg,cat\r\n , \r\n/abs/../abs/b.jpg, dog \r\n"
    assert read_labels_csv(write_csv(tmp_path, text)) == {"a.jpg": "cat", "/abs/b.jpg": "dog"}


def test_a_header_is_only_a_first_line_of_exactly_path_and_label(tmp_path: Path) -> None:
    assert read_labels_csv(write_csv(tmp_path, "a.jpg,cat\npath,label\n")) == {
        "a.jpg": "cat", "path": "label",
    }  # fmt: skip
    assert read_labels_csv(write_csv(tmp_path, "path,label,source\nb.jpg,dog,x\n")) == {
        "b.jpg": "dog"
    }
    assert read_labels_csv(write_csv(tmp_path, "path,labels\nb.jpg,dog\n")) == {
        "path": "labels", "b.jpg": "dog",
    }  # fmt: skip


def test_a_quoted_field_may_hold_a_comma_or_a_line_break(tmp_path: Path) -> None:
    text = 'path,label\n"odd, name.jpg","two\nlines"\n'
    assert read_labels_csv(write_csv(tmp_path, text)) == {"odd, name.jpg": "two\nlines"}


@pytest.mark.parametrize(
    ("text", "line", "got"),
    [
        ("a.jpg,cat\nb.jpg\n", 2, "'b.jpg'"),
        ("a.jpg,cat\n,dog\n", 2, "',dog'"),
        ("path,label\na.jpg,cat\nc.jpg, \n", 3, "'c.jpg, '"),
    ],
)
def test_a_bad_row_is_named_by_its_line(tmp_path: Path, text: str, line: int, got: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        read_labels_csv(path)
    assert refused.value.message == f"{path}, line {line}: expected 'path,label', got {got}"


def test_an_unreadable_or_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(ConfigError) as refused:
        read_labels_csv(missing)
    assert refused.value.message == (
        f"cannot read labels file {missing}: No such file or directory"
    )
    latin = write_csv(tmp_path, "caf\u00e9.jpg,cat\n", encoding="latin-1")
    with pytest.raises(ConfigError) as refused:
        read_labels_csv(latin)
    assert refused.value.message.startswith(f"labels file {latin} is not a UTF-8 CSV file: ")


def test_the_payload_names_its_primary_file_and_lists_every_file() -> None:
    files = {
        "/b/x.jpg": FileEntry("/b/x.jpg", "/b", "x.jpg", 10, 1, None),
        "/a/y.jpg": FileEntry("/a/y.jpg", "/a", "y.jpg", 10, 2, "cat"),
    }
    point = PointEntry(id="p", files=files, content={"sha256": "f00", "size": 10, "other": 1})
    assert build_payload(point) == {
        "path": "/a/y.jpg",
        "paths": ["/a/y.jpg", "/b/x.jpg"],
        "root": "/a",
        "roots": ["/a", "/b"],
        "relative_path": "y.jpg",
        "label": "cat",
        "files": [
            {"path": "/a/y.jpg", "root": "/a", "relative_path": "y.jpg", "size": 10,
             "mtime_ns": 2, "label": "cat"},
            {"path": "/b/x.jpg", "root": "/b", "relative_path": "x.jpg", "size": 10,
             "mtime_ns": 1, "label": None},
        ],
        "sha256": "f00",
        "size": 10,
    }  # fmt: skip


def test_the_catalog_tracks_points_and_the_paths_that_own_them() -> None:
    def entry(path: str, size: int = 10, mtime: int = 1) -> FileEntry:
        return FileEntry(path, "/r", path.lstrip("/r"), size, mtime, None)

    catalog = Catalog()
    assert catalog.add_file("p1", entry("/r/a.jpg"), {"sha256": "1"}) is True
    assert catalog.add_file("p1", entry("/r/b.jpg"), {"sha256": "ignored"}) is False
    assert catalog.add_file("p2", entry("/r/c.jpg"), {"sha256": "2"}) is True
    catalog.add_file("p3", entry("/r/a.jpg", mtime=2), {"sha256": "3"})  # an interrupted run
    assert catalog.points["p1"].id == "p1"
    assert catalog.points["p1"].content == {"sha256": "1"}
    assert catalog.owners("/r/a.jpg") == {"p1", "p3"}
    assert catalog.unchanged("/r/a.jpg", 10, 1) is None  # two owners: not trusted
    assert catalog.unchanged("/r/c.jpg", 10, 1) == entry("/r/c.jpg")
    assert catalog.unchanged("/r/c.jpg", 10, 2) is None  # same size, other mtime
    assert catalog.unchanged("/r/c.jpg", 11, 1) is None  # same mtime, other size
    assert catalog.remove_path("/r/a.jpg", keep="p3") == (["p1"], [])
    assert catalog.owners("/r/a.jpg") == {"p3"}
    assert sorted(catalog.points["p1"].files) == ["/r/b.jpg"]
    assert catalog.remove_path("/r/a.jpg") == ([], ["p3"])
    assert "p3" not in catalog.points
    assert "/r/a.jpg" not in catalog.paths()
    assert catalog.remove_path("/r/never.jpg") == ([], [])
    catalog.add_file("p0", entry("/r/b.jpg"), {"sha256": "0"})  # sorts before p1, and kept
    assert catalog.remove_path("/r/b.jpg", keep="p0") == ([], ["p1"])
    assert catalog.owners("/r/b.jpg") == {"p0"}
    assert sorted(catalog.paths()) == ["/r/b.jpg", "/r/c.jpg"]


def test_a_path_listed_by_three_points_is_untangled_one_owner_at_a_time() -> None:
    """After interrupted runs a path can be listed by several points; each owner is tracked
    until one is left, which is then trusted again."""

    def entry(path: str, mtime: int = 1) -> FileEntry:
        return FileEntry(path, "/r", path.removeprefix("/r/"), 10, mtime, None)

    catalog = Catalog()
    for point_id in ("p1", "p2", "p3"):
        catalog.add_file(point_id, entry("/r/a.jpg"), {"sha256": point_id})
        catalog.add_file(point_id, entry(f"/r/{point_id}.jpg"), {})
    catalog.add_file("p2", entry("/r/a.jpg", mtime=2), {})  # listed again: still three owners
    assert catalog.owners("/r/a.jpg") == {"p1", "p2", "p3"}
    assert catalog.points["p2"].file("/r/a.jpg") == entry("/r/a.jpg", mtime=2)
    assert catalog.unchanged("/r/a.jpg", 10, 1) is None
    assert catalog.remove_path("/r/a.jpg", keep="p2") == (["p1", "p3"], [])
    assert catalog.owners("/r/a.jpg") == {"p2"}
    assert catalog.unchanged("/r/a.jpg", 10, 2) == entry("/r/a.jpg", mtime=2)
    assert sorted(catalog.paths()) == ["/r/a.jpg", "/r/p1.jpg", "/r/p2.jpg", "/r/p3.jpg"]
    catalog.add_file("p1", entry("/r/a.jpg"), {})
    catalog.add_file("p3", entry("/r/a.jpg"), {})
    assert catalog.remove_path("/r/a.jpg", keep="p1") == (["p2", "p3"], [])
    assert catalog.owners("/r/a.jpg") == {"p1"}
    with pytest.raises(KeyError, match=r"/r/a\.jpg"):
        catalog.points["p3"].file("/r/a.jpg")


class CountingOptimizes(EdgeStore):
    """The embedded store, noting how many points the collection held at each index build."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.optimized_at: list[int] = []

    def optimize(self, name: str) -> None:
        self.optimized_at.append(self.count(name))
        super().optimize(name)


@pytest.mark.parametrize("optimize", [True, False])
def test_a_long_run_builds_the_index_as_it_writes(
    embedder: ImageEmbedder, tmp_path: Path, optimize: bool
) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=5)
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        failures_report=tmp_path / "report.jsonl",
        batch_size=2,
        workers=0,
        progress="off",
        optimize=optimize,
        optimize_every=4,
    )
    with CountingOptimizes(tmp_path / "data") as store:
        summary = index_folders(embedder, store, options)
        assert summary.embedded == 10
        # After 4 and 8 points written, then the build at the end; none with --no-optimize.
        assert store.optimized_at == ([4, 8, 10] if optimize else [])
