"""``dinoseek dedup``: near-duplicates grouped from the stored vectors and marked in their
payloads, searches that collapse them, and ``--against`` another set.

The real CLI and the real embedded store, with the stand-in model (it gives a re-encoded or
resized copy a similarity above 0.999 and distinct test images at most ~0.9); the core's
planning runs on both stores (the server store on qdrant-client's in-process mode).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from qdrant_client import QdrantClient

from dinoseek import similarity
from dinoseek.collection_vectors import read_vectors
from dinoseek.dedup import (
    MARK_FIELDS,
    PAYLOAD_FIELDS,
    apply_plan,
    forget_compared,
    marks_of,
    plan_dedup,
    write_marks,
)
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, PointRecord, ServerStore, VectorStore
from search_api.app import create_app
from tests.cli_runner import invoke, run_json
from tests.fakes import fake_model
from tests.helpers import unit_vectors, write_tree
from tests.test_store_contract import make_space

DIM = 16


def copy_of(source: Path, target: Path, *, quality: int = 60, scale: float = 1.0) -> Path:
    """A JPEG re-encoded at ``quality``, resized by ``scale``."""
    image = Image.open(source)
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return target


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, list[Path], dict[Path, Path]]:
    """(data dir, the distinct photos, copy -> its source), indexed."""
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=5, classes=("cats", "dogs"))
    copies = {
        copy_of(paths[0], photos / "copies" / "requality60_of_cats_0.jpg", quality=60): paths[0],
        copy_of(paths[6], photos / "copies" / "resized70_of_dogs_1.jpg", scale=0.7): paths[6],
    }
    data = tmp_path / "data"
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data, "-q")
    assert indexed.exit_code == 0, indexed.output
    return data, paths, copies


def test_planted_copies_are_grouped_with_their_source(
    planted: tuple[Path, list[Path], dict[Path, Path]],
) -> None:
    data, paths, copies = planted
    report = run_json("dedup", "--data-dir", data)
    groups = {group["keep"]: sorted(group["duplicates"]) for group in report["groups"]}
    # The source is kept: more pixels than the resized copy, a larger file than the other.
    assert groups == {str(source): [str(copy)] for copy, source in copies.items()}
    assert report["compared"] == report["points"] == len(paths) + len(copies)
    assert all(score > 0.99 for group in report["groups"] for score in group["scores"])
    with EdgeStore(data) as store:
        store.acquire("images")
        by_path = {p.payload["path"]: p for p in store.scroll("images")}
    for copy, source in copies.items():
        kept, marked = by_path[str(source)], by_path[str(copy)]
        assert marked.payload["duplicate_of"] == kept.id
        assert marked.payload["duplicate_role"] == "duplicate"
        assert kept.payload["duplicate_role"] == "keep"
        assert kept.payload["duplicate_count"] == 1
        assert marked.payload["relative_path"] == f"copies/{copy.name}"  # the rest is kept
    distinct = [by_path[str(p)] for p in paths if p not in copies.values()]
    assert not any(key in p.payload for p in distinct for key in MARK_FIELDS[:-1])
    assert all(p.payload["dedup_threshold"] == 0.95 for p in by_path.values())
    assert report["warnings"] == []


def test_a_group_holding_most_of_the_collection_is_warned_of(
    planted: tuple[Path, list[Path], dict[Path, Path]],
) -> None:
    data, paths, copies = planted
    points = len(paths) + len(copies)
    chained = run_json("dedup", "--data-dir", data, "--threshold", "0.05")
    largest = max(1 + len(group["duplicates"]) for group in chained["groups"])
    assert 2 * largest > points
    assert [w.split(":")[0] for w in chained["warnings"]] == [
        f"one group holds {largest:,} of the {points:,} points"
    ]
    text = invoke("dedup", "--data-dir", data, "--threshold", "0.05").output
    assert f"warning: one group holds {largest:,} of the {points:,} points" in text
    assert "--threshold (the marks are decided again)" in " ".join(text.split())


def test_searches_collapse_duplicates(planted: tuple[Path, list[Path], dict[Path, Path]]) -> None:
    data, paths, copies = planted
    run_json("dedup", "--data-dir", data)
    copy, source = next(iter(copies.items()))
    plain = run_json("search", source, "--data-dir", data, "-k", "3")
    collapsed = run_json("search", source, "--data-dir", data, "-k", "3", "--collapse-duplicates")
    assert [r["path"] for r in plain["results"]][:2] == [str(source), str(copy)]
    assert str(copy) not in [r["path"] for r in collapsed["results"]]
    assert collapsed["results"][0]["path"] == str(source)
    # Under a filter the kept point may not match: the group's best matching member stands.
    only_copy = run_json("search", source, "--data-dir", data, "--collapse-duplicates",
                         "--filter", f"path={copy}")  # fmt: skip
    assert [r["path"] for r in only_copy["results"]] == [str(copy)]
    by_label = run_json("search", source, "--data-dir", data, "-k", "20", "--collapse-duplicates",
                        "--filter", f"root={source.parent.parent}")  # fmt: skip
    found_paths = [r["path"] for r in by_label["results"]]
    assert str(source) in found_paths
    assert str(copy) not in found_paths  # one hit per group: the source came first

    embedder = fake_model("fake/dinov2")
    settings = Settings(model="fake/dinov2", data_dir=data)
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data))) as client:
        files = {"image": ("q.jpg", copy.read_bytes())}
        params = {"top_k": 3, "collapse_duplicates": True}
        found = client.post("/search", files=files, params=params).json()["results"]
        assert found[0]["path"] == str(source)
        assert str(copy) not in [r["path"] for r in found]
        batch = client.post(
            "/search/batch", files=[("images", ("q.jpg", copy.read_bytes()))], params=params
        ).json()["items"][0]["results"]
        assert str(copy) not in [r["path"] for r in batch]
        other = next(p for p in paths if p not in copies.values())
        other_id = client.post("/search", files={"image": ("o.jpg", other.read_bytes())}).json()[
            "results"
        ][0]["id"]
        similar = client.get(f"/points/{other_id}/similar", params={"top_k": 20}).json()
        collapsed_similar = client.get(
            f"/points/{other_id}/similar", params={"top_k": 20, "collapse_duplicates": True}
        ).json()
        assert len(similar["results"]) - len(collapsed_similar["results"]) == len(copies)
        groups = client.get("/duplicates", params={"limit": 1}).json()
        assert len(groups["groups"]) == 1
        assert groups["next"] is not None
        rest = client.get("/duplicates", params={"start": groups["next"]}).json()
        listed = {
            g["keep"]["path"]: [d["path"] for d in g["duplicates"]]
            for g in groups["groups"] + rest["groups"]
        }
        assert listed == {str(source): [str(copy)] for copy, source in copies.items()}
        assert rest["next"] is None


def test_a_rerun_compares_only_new_points_and_clear_undoes(
    planted: tuple[Path, list[Path], dict[Path, Path]],
) -> None:
    data, paths, copies = planted
    first = run_json("dedup", "--data-dir", data)
    again = run_json("dedup", "--data-dir", data)
    assert again["compared"] == 0
    assert again["written"] == 0
    assert again["groups"] == first["groups"]
    third = copy_of(paths[3], paths[3].parent.parent / "copies" / "third.jpg", quality=70)
    indexed = invoke("index", paths[0].parent.parent, "--data-dir", data, "-q")
    assert indexed.exit_code == 0, indexed.output
    after = run_json("dedup", "--data-dir", data)
    assert after["compared"] == 1
    assert {g["keep"]: g["duplicates"] for g in after["groups"]}[str(paths[3])] == [str(third)]
    assert len(after["groups"]) == 3
    cleared = run_json("dedup", "--clear", "--data-dir", data)
    assert cleared["cleared"] == len(paths) + len(copies) + 1
    with EdgeStore(data) as store:
        store.acquire("images")
        assert not any(
            key in point.payload for point in store.scroll("images") for key in MARK_FIELDS
        )
    assert run_json("dedup", "--data-dir", data)["compared"] == len(paths) + len(copies) + 1


def test_against_finds_leaked_copies(
    planted: tuple[Path, list[Path], dict[Path, Path]], tmp_path: Path
) -> None:
    data, paths, _ = planted
    test_set = tmp_path / "test-set"
    leaked = [paths[2], paths[8]]
    for source in leaked:
        copy_of(source, test_set / f"leak_{source.name}", quality=75)
    copy_of(paths[4], test_set / "unrelated.jpg", scale=0.3)  # too small a copy? still close
    folder = run_json("dedup", "--against", test_set, "--data-dir", data, "--threshold", "0.99")
    found = {leak["path"] for leak in folder["leaks"]}
    assert {str(p) for p in leaked} <= found
    assert len(found) <= 3
    indexed = invoke(
        "index", test_set, "--data-dir", data, "-c", "testset", "--model", "fake/dinov2", "-q"
    )
    assert indexed.exit_code == 0, indexed.output
    collection = run_json(
        "dedup", "--against", "testset", "--data-dir", data, "--threshold", "0.99"
    )
    assert {leak["path"] for leak in collection["leaks"]} == found
    with EdgeStore(data) as store:
        store.acquire("images")
        marks = {
            p.payload["path"]: p.payload["near_duplicate_of"]
            for p in store.scroll("images")
            if "near_duplicate_of" in p.payload
        }
    assert set(marks) == found
    assert all({"testset", str(test_set.resolve())} == set(m) for m in marks.values())
    # A rerun against the same set with a stricter threshold unmarks what no longer matches.
    strict = run_json("dedup", "--against", "testset", "--data-dir", data, "--threshold", "1.0")
    assert strict["written"] >= len(found) - len(strict["leaks"])


def test_bad_input_gets_a_clear_error(
    planted: tuple[Path, list[Path], dict[Path, Path]], tmp_path: Path
) -> None:
    data, _, _ = planted
    unknown = invoke("dedup", "--data-dir", data, "-c", "nope")
    assert unknown.exit_code != 0
    assert "nope" in unknown.output
    for threshold in ("0", "1.5", "-0.2"):
        out_of_range = invoke("dedup", "--data-dir", data, "--threshold", threshold)
        assert out_of_range.exit_code == 2, threshold
        assert "--threshold" in out_of_range.output
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    no_images = invoke("dedup", "--data-dir", data, "--against", empty)
    assert no_images.exit_code != 0
    assert "no image files" in no_images.output
    itself = invoke("dedup", "--data-dir", data, "--against", "images")
    assert itself.exit_code != 0
    assert "the collection itself" in itself.output
    assert (
        "neither a folder nor a collection"
        in invoke("dedup", "--data-dir", data, "--against", "missing").output
    )
    other_model = invoke(
        "index", empty.parent / "photos", "--data-dir", data, "-c", "other", "--model", "fake/other"
    )
    assert other_model.exit_code == 0, other_model.output
    mismatch = invoke("dedup", "--data-dir", data, "--against", "other")
    assert mismatch.exit_code != 0
    assert "fake/other" in mismatch.output


# -- the core, on both stores --------------------------------------------------------------


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    opened: VectorStore
    if request.param == "edge":
        opened = EdgeStore(tmp_path / "data")
    else:
        opened = ServerStore(QdrantClient(path=str(tmp_path / "qdrant-local")))
    yield opened
    opened.close()


def planted_vectors(
    groups: int, size: int, singles: int, seed: int = 0
) -> tuple[np.ndarray, list[set[int]]]:
    """Random unit vectors, with ``groups`` sets of ``size`` near-copies planted (noise far
    below the threshold's distance)."""
    rng = np.random.default_rng(seed)
    base = unit_vectors(groups + singles, DIM, seed=seed)
    rows, planted_sets = [], []
    for g in range(groups):
        members = set()
        for _ in range(size):
            noisy = base[g] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
            members.add(len(rows))
            rows.append(noisy / np.linalg.norm(noisy))
        planted_sets.append(members)
    rows += list(base[groups:])
    return np.stack(rows).astype(np.float32), planted_sets


def fill(store: VectorStore, vectors: np.ndarray) -> list[str]:
    store.ensure_collection("images", make_space(DIM))
    store.acquire("images")
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(len(vectors))]
    store.upsert(
        "images",
        [
            PointRecord(
                id=i, vector=v, payload={"path": f"/p/{n:04d}.jpg", "width": 10, "height": 10}
            )
            for n, (i, v) in enumerate(zip(ids, vectors, strict=True))
        ],
    )
    return ids


def test_the_plan_groups_exactly_the_planted_sets(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(similarity, "BLOCK_ELEMENTS", 64 * 7)  # many blocks, ragged edges
    vectors, planted_sets = planted_vectors(groups=4, size=3, singles=40)
    ids = fill(store, vectors)
    data = read_vectors(store, "images", PAYLOAD_FIELDS)
    plan = plan_dedup(data, 0.95)
    found = [{data.ids.index(ids[i]) for i in [g.keep, *g.others]} for g in plan.groups]
    index_of = {ids[i]: data.ids.index(ids[i]) for i in range(len(ids))}
    expected = [{index_of[ids[i]] for i in members} for members in planted_sets]
    assert sorted(map(sorted, found)) == sorted(map(sorted, expected))
    assert plan.pairs == 4 * 3  # three pairs in each group of three
    apply_plan(store, "images", data, plan, 0.95)
    again = plan_dedup(read_vectors(store, "images", PAYLOAD_FIELDS), 0.95)
    assert len(again.compared) == 0
    assert again.changes == {}


def test_pairs_above_is_the_brute_force_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(similarity, "BLOCK_ELEMENTS", 50 * 3)
    vectors = unit_vectors(50, 4, seed=3)  # 4-d: many pairs above 0.8
    truth = {(i, j) for i in range(50) for j in range(i + 1, 50) if vectors[i] @ vectors[j] >= 0.8}
    upper = {
        (int(r), int(c))
        for found in similarity.pairs_above(vectors, vectors, 0.8, query_offset=0)
        for r, c in zip(found.rows, found.columns, strict=True)
    }
    assert upper == truth
    every = {
        (int(r), int(c))
        for found in similarity.pairs_above(vectors[10:20], vectors, 0.8)
        for r, c in zip(found.rows, found.columns, strict=True)
    }
    assert every == {
        (i - 10, j) for i in range(10, 20) for j in range(50) if vectors[i] @ vectors[j] >= 0.8
    }


def test_a_run_stopped_while_writing_is_finished_by_the_next(store: VectorStore) -> None:
    """The first phase cut short after half its writes (as a kill would leave it): a rerun
    ends with the marks of an uninterrupted run."""
    vectors, _ = planted_vectors(groups=5, size=2, singles=20, seed=1)
    fill(store, vectors)
    data = read_vectors(store, "images", PAYLOAD_FIELDS)
    plan = plan_dedup(data, 0.95)
    for index, marks in list(plan.changes.items())[: len(plan.changes) // 2]:
        write_marks(store, "images", data, index, marks)
    rerun_data = read_vectors(store, "images", PAYLOAD_FIELDS)
    rerun = plan_dedup(rerun_data, 0.95)
    assert len(rerun.compared) == len(data.ids)  # nothing was finished: all compared again
    apply_plan(store, "images", rerun_data, rerun, 0.95)
    final = read_vectors(store, "images", PAYLOAD_FIELDS)
    expected = marks_of(data, plan.groups)
    for index, payload in enumerate(final.payloads):
        marks = {k: v for k, v in payload.items() if k in MARK_FIELDS and k != "dedup_threshold"}
        assert marks == expected.get(index, {})
        assert payload["dedup_threshold"] == 0.95


def test_a_regrouping_stopped_midway_keeps_every_pair(store: VectorStore) -> None:
    """A and B are near-duplicates; N arrives, larger, linked to A only, and becomes the kept
    point of all three. A run stopped after rewriting A alone must not lose B: its next run
    compares the half-written points again."""
    store.ensure_collection("images", make_space(3))
    store.acquire("images")
    a, b, n = (
        np.array(v, dtype=np.float32) for v in ((1, 0, 0), (0.96, 0.28, 0), (0.96, -0.28, 0))
    )
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(3)]
    small = {"width": 10, "height": 10}
    store.upsert("images", [PointRecord(ids[0], a, {"path": "/a.jpg", **small}),
                            PointRecord(ids[1], b, {"path": "/b.jpg", **small})])  # fmt: skip
    first = read_vectors(store, "images", PAYLOAD_FIELDS)
    apply_plan(store, "images", first, plan_dedup(first, 0.95), 0.95)
    store.upsert("images", [PointRecord(ids[2], n, {"path": "/n.jpg", "width": 99, "height": 99})])
    second = read_vectors(store, "images", PAYLOAD_FIELDS)
    plan = plan_dedup(second, 0.95)
    assert [second.ids[g.keep] for g in plan.groups] == [ids[2]]
    forget_compared(store, "images", second, plan)  # the run is stopped after A's marks
    a_row = second.ids.index(ids[0])
    write_marks(store, "images", second, a_row, plan.changes[a_row])
    third = read_vectors(store, "images", PAYLOAD_FIELDS)
    rerun = plan_dedup(third, 0.95)
    apply_plan(store, "images", third, rerun, 0.95)
    final = read_vectors(store, "images", PAYLOAD_FIELDS)
    by_id = dict(zip(final.ids, final.payloads, strict=True))
    assert by_id[ids[2]]["duplicate_role"] == "keep"
    assert by_id[ids[0]]["duplicate_of"] == by_id[ids[1]]["duplicate_of"] == ids[2]
    assert all(p["dedup_threshold"] == 0.95 for p in final.payloads)
