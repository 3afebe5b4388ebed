"""``dinoseek curate``: retrieval-based selection from a pool near a reference set, and
balanced sampling over a hierarchical k-means.

The real CLI on the real embedded store with the stand-in model (a re-encoded copy is
~0.9999 similar to its source, distinct test images at most ~0.9); the core on vectors with
known clusters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dinoseek.cluster_index import neighbour_probes
from dinoseek.collection_vectors import CollectionVectors
from dinoseek.curate import balanced, by_neighbours, eligible_rows, level_sizes
from dinoseek.kmeans import kmeans
from dinoseek.payload_table import PayloadTable
from dinoseek.store import EdgeStore
from tests.cli_runner import invoke, run_json
from tests.helpers import write_tree
from tests.test_dedup import copy_of


@pytest.fixture
def pool(tmp_path: Path) -> tuple[Path, list[Path], Path]:
    """(data dir, the pool's photos, a reference folder of re-encoded copies of two)."""
    photos = write_tree(tmp_path / "photos", per_class=6, classes=("cats", "dogs"))
    data = tmp_path / "data"
    indexed = invoke("index", tmp_path / "photos", "--model", "fake/dinov2", "--data-dir", data)
    assert indexed.exit_code == 0, indexed.output
    reference = tmp_path / "reference"
    for source in (photos[1], photos[7]):
        copy_of(source, reference / f"ref_{source.name}", quality=70)
    return data, photos, reference


def test_curate_selects_the_twins_of_the_reference_images(
    pool: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    data, photos, reference = pool
    manifest = tmp_path / "kept.jsonl"
    document = run_json(
        "curate", "--reference", reference, "--per-image", "1", "--near-duplicate", "0.99999",
        "--into", "kept", "--manifest", manifest, "--data-dir", data,
    )  # fmt: skip
    assert {e["path"] for e in document["selection"]} == {str(photos[1]), str(photos[7])}
    assert document["steps"]["near_duplicates_of_reference"] == 0
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {line["reference"] for line in lines} == {
        str(reference / f"ref_{photos[1].name}"),
        str(reference / f"ref_{photos[7].name}"),
    }
    assert all(line["score"] > 0.99 and len(line["sha256"]) == 64 for line in lines)
    with EdgeStore(data) as store:
        store.acquire("kept")
        kept = {p.id: p for p in store.scroll("kept", with_vectors=True)}
        store.acquire("images")
        originals = {p.id: p for p in store.get("images", list(kept), with_vectors=True)}
    assert set(kept) == {line["id"] for line in lines}  # exactly the manifest's points
    for point_id, point in kept.items():
        assert point.vector is not None
        np.testing.assert_array_equal(point.vector, originals[point_id].vector)
        assert point.payload["path"] == originals[point_id].payload["path"]
        assert point.payload["selected_by"].startswith(str(reference))


def test_near_duplicates_of_the_reference_and_marked_duplicates_are_not_selected(
    pool: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    data, photos, reference = pool
    copy_of(photos[3], photos[3].parent / "copy_of_3.jpg", quality=65)
    assert invoke("index", photos[0].parent.parent, "--data-dir", data).exit_code == 0
    assert invoke("dedup", "--data-dir", data).exit_code == 0
    document = run_json("curate", "--reference", reference, "--per-image", "20", "--data-dir", data)
    steps = document["steps"]
    assert steps["pool"] == len(photos) + 1
    assert steps["marked_duplicates"] == 1
    assert steps["near_duplicates_of_reference"] == 2  # the twins, too close to select
    selected = {e["path"] for e in document["selection"]}
    assert str(photos[1]) not in selected
    assert str(photos[7]) not in selected
    assert len(selected) == steps["eligible"] == len(photos) + 1 - 1 - 2


def test_cluster_based_retrieval_takes_from_the_reference_images_clusters(
    pool: tuple[Path, list[Path], Path],
) -> None:
    data, _, reference = pool
    document = run_json(
        "curate", "--reference", reference, "--cluster-sample", "3", "--clusters", "3",
        "--near-duplicate", "0.99999", "--pool", "images", "--data-dir", data,
    )  # fmt: skip
    assert document["method"] == "clusters"
    assert document["pool"] == "images"
    assert 1 <= document["selected"] <= 6
    assert all(e["reference"].startswith(str(reference)) for e in document["selection"])


def test_balanced_sampling_flattens_a_skewed_pool() -> None:
    """Three well separated groups of 900, 90 and 10 points: a balanced sample of 30 takes
    about a third from each."""
    rng = np.random.default_rng(0)
    centres = np.eye(16, dtype=np.float32)[:3]
    sizes = (900, 90, 10)
    rows = np.concatenate(
        [centres[i] + 0.05 * rng.standard_normal((n, 16)) for i, n in enumerate(sizes)]
    ).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    data = CollectionVectors(
        [f"id{i}" for i in range(len(rows))], rows, PayloadTable.of([{}] * len(rows))
    )
    outcome = balanced(data, np.arange(len(rows)), 30, [12, 3], seed=1)
    print(
        f"largest/smallest top-cluster share: before {max(outcome.shares_before):.3f}/"
        f"{min(outcome.shares_before):.3f}, after {max(outcome.shares_after):.3f}/"
        f"{min(outcome.shares_after):.3f}"
    )
    assert max(outcome.shares_before) >= 0.85
    assert min(outcome.shares_before) <= 0.02
    assert max(outcome.shares_after) <= 0.4
    assert min(outcome.shares_after) >= 0.3
    assert len(set(outcome.rows.tolist())) == 30
    groups = np.repeat(np.arange(3), sizes)
    assert sorted(np.bincount(groups[outcome.rows], minlength=3).tolist()) == [10, 10, 10]


def test_kmeans_finds_separated_clusters_and_levels_shrink() -> None:
    rng = np.random.default_rng(2)
    centres = np.eye(8, dtype=np.float32)[:4]
    rows = np.concatenate([c + 0.05 * rng.standard_normal((50, 8)) for c in centres])
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    fitted = kmeans(rows, 4, seed=0)
    truth = np.repeat(np.arange(4), 50)
    for cluster in range(4):
        assert len(set(truth[fitted.labels == cluster].tolist())) == 1
    assert level_sizes(10_000, 2) == [464, 22]
    assert level_sizes(10, 3) == [6, 3, 2]


def test_a_point_chosen_by_several_references_keeps_the_most_similar() -> None:
    vectors = np.eye(6, dtype=np.float32)
    data = CollectionVectors([f"p{i}" for i in range(6)], vectors, PayloadTable.of([{}] * 6))
    reference = np.zeros((3, 6), dtype=np.float32)
    reference[0, [1, 2]] = (0.8, 0.6)
    reference[1, [1, 2]] = (0.6, 0.8)
    reference[2, 3] = 1.0  # p3 itself: a near-duplicate of the reference, never selected
    rows, steps = eligible_rows(data, reference, 0.95)
    assert steps["near_duplicates_of_reference"] == 1
    assert 3 not in rows.tolist()
    chosen = by_neighbours(data, rows, reference[:2], 2)
    assert [(s.index, s.reference, s.score) for s in chosen] == [(1, 0, 0.8), (2, 1, 0.8)]


def test_bad_input_gets_a_clear_error(pool: tuple[Path, list[Path], Path], tmp_path: Path) -> None:
    data, _, reference = pool
    neither = invoke("curate", "--into", "x", "--data-dir", data)
    assert neither.exit_code == 2
    assert "--reference" in neither.output
    both = invoke("curate", "--reference", reference, "--balanced", "3", "--into", "x",
                  "--data-dir", data)  # fmt: skip
    assert both.exit_code == 2
    nowhere = invoke("curate", "--reference", reference, "--data-dir", data)
    assert nowhere.exit_code == 2
    assert "--into" in nowhere.output
    unknown = invoke("curate", "--reference", reference, "--into", "x", "-c", "nope",
                     "--data-dir", data)  # fmt: skip
    assert unknown.exit_code != 0
    assert "nope" in unknown.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    no_images = invoke("curate", "--reference", empty, "--into", "x", "--data-dir", data)
    assert no_images.exit_code != 0
    assert "no image files" in no_images.output
    other = invoke("index", reference, "-c", "other", "--model", "fake/other", "--data-dir", data)
    assert other.exit_code == 0, other.output
    mismatch = invoke("curate", "--reference", "other", "--into", "x", "--data-dir", data)
    assert mismatch.exit_code != 0
    assert "fake/other" in mismatch.output
    assert invoke("curate", "--balanced", "3", "--into", "taken", "--data-dir", data).exit_code == 0
    taken = invoke("curate", "--balanced", "3", "--into", "taken", "--data-dir", data)
    assert taken.exit_code != 0
    assert "already exists" in taken.output


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_the_selection_is_copied_into_a_new_collection_on_both_stores(
    kind: str, tmp_path: Path
) -> None:
    """The core's steps on the embedded store and on qdrant-client's in-process server mode."""
    from qdrant_client import QdrantClient

    from dinoseek.collection_vectors import read_vectors
    from dinoseek.curate import copy_selection
    from dinoseek.store import ServerStore, VectorStore
    from tests.test_dedup import fill, planted_vectors

    store: VectorStore = (
        EdgeStore(tmp_path / "data")
        if kind == "edge"
        else ServerStore(QdrantClient(path=str(tmp_path / "local")))
    )
    with store:
        vectors, _ = planted_vectors(groups=0, size=0, singles=30, seed=4)
        fill(store, vectors)
        pool = read_vectors(store, "images", ("path",))
        reference = vectors[[3, 17]] * 0.9 + vectors[[4, 18]] * 0.1
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        rows, _ = eligible_rows(pool, reference, 0.999)
        selected = by_neighbours(pool, rows, reference, 2)
        copied = copy_selection(
            store, pool, "images", "kept", selected, lambda s: {"selected_by": s.reference}
        )
        assert copied == len(selected) >= 2
        kept = {p.id: p for p in store.scroll("kept", with_vectors=True)}
        assert set(kept) == {pool.ids[s.index] for s in selected}
        assert {pool.ids[3], pool.ids[17]} <= set(kept)
        for s in selected:
            point = kept[pool.ids[s.index]]
            assert point.payload["selected_by"] == s.reference
            np.testing.assert_allclose(point.vector, pool.vectors[s.index], atol=1e-6)


def test_balanced_sampling_of_an_empty_pool_is_a_clear_error(tmp_path: Path) -> None:
    from dinoseek.errors import ConfigError

    empty = CollectionVectors([], np.zeros((0, 4), dtype=np.float32), PayloadTable())
    with pytest.raises(ConfigError, match="no pool image is eligible"):
        balanced(empty, np.zeros(0, dtype=np.int64), 5, [2])


@pytest.mark.parametrize("search", ["exact", "clusters"])
def test_per_image_returns_n_per_reference_image(
    pool: tuple[Path, list[Path], Path], search: str
) -> None:
    """For every N tried (the default 4 included), the selection is the N nearest eligible
    pool images of each reference image, as a brute-force comparison of the stored vectors
    finds them."""
    data, _, reference = pool
    indexed = invoke("index", reference, "-c", "ref", "--model", "fake/dinov2", "--data-dir", data)
    assert indexed.exit_code == 0, indexed.output
    with EdgeStore(data) as store:
        store.acquire("images")
        pooled = list(store.scroll("images", with_vectors=True))
        store.acquire("ref")
        refs = np.stack([p.vector for p in store.scroll("ref", with_vectors=True)])  # type: ignore[misc]
    vectors = np.stack([p.vector for p in pooled])  # type: ignore[misc]
    similar = refs.astype(np.float64) @ vectors.T.astype(np.float64)
    eligible = np.round(similar.max(axis=0), 6) < 0.95
    for n in (1, 2, None, 7):
        flags = [] if n is None else ["--per-image", str(n)]
        document = run_json("curate", "--reference", "ref", "--search", search, *flags,
                            "--data-dir", data)  # fmt: skip
        assert document["per_image"] == (n or 4)
        assert document["search"]["name"] == search
        if search == "clusters":  # the probes used are stated
            clusters = document["search"]["parameters"]["clusters"]
            assert document["search"]["neighbour_probes"] == neighbour_probes(clusters)
        wanted = set()
        for row in similar:
            order = [i for i in np.argsort(-row, kind="stable") if eligible[i]]
            wanted |= {pooled[i].id for i in order[: n or 4]}
        assert {entry["id"] for entry in document["selection"]} == wanted, n


def test_a_larger_pool_probes_a_share_of_its_clusters() -> None:
    """Neighbours spread over more clusters as a larger pool is cut into more: at least 32
    are probed, and an eighth of them once that is more (never more than there are)."""
    assert [neighbour_probes(k) for k in (10, 100, 256, 264, 1732)] == [10, 32, 32, 33, 216]


def test_each_reference_gets_n_even_when_its_clusters_hold_fewer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One cluster probed per reference, half the pool not eligible, N larger than a cluster:
    a reference whose clusters hold fewer than N is compared with the whole pool."""
    from dinoseek import cluster_index
    from dinoseek.curate import PoolSearch, nearest_rows
    from dinoseek.pair_search import choose_method
    from tests.helpers import unit_vectors

    monkeypatch.setattr(cluster_index, "NEIGHBOUR_PROBES", 1)
    monkeypatch.setattr(cluster_index, "NEIGHBOUR_PROBE_SHARE", 10**9)
    vectors = unit_vectors(3000, 16, seed=4)
    references = unit_vectors(40, 16, seed=5)
    rows = np.arange(0, 3000, 2)
    method = choose_method("clusters", 40, 3000, 16, 0.95, "cpu", within=False)
    for n in (1, 4, 60):
        search = PoolSearch(method)
        found, scores = nearest_rows(vectors, rows, references, n, search)
        assert found.shape == (40, n)
        assert all(len(set(r)) == n and set(r) <= set(rows.tolist()) for r in found.tolist())
        assert (np.diff(scores, axis=1) <= 0).all()
        if n == 60:  # every cluster holds fewer than 60 eligible: all exact
            exact = np.argsort(-(references @ vectors[rows].T), axis=1)[:, :n]
            np.testing.assert_array_equal(found, rows[exact])
