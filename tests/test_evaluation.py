"""``dinoseek eval`` and its measures (``dinoseek.evaluation``): hand-computed values on tiny
sets, brute-force references on random data, and the command on the real embedded store with
the stand-in models (this is not about the model: any embedding does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dinoseek.errors import ConfigError
from dinoseek.evaluation import (
    LabelledSet,
    confused_pairs,
    few_shot_accuracy,
    group_split,
    knn_accuracy,
    knn_predictions,
    labelled_set,
    retrieval_metrics,
)
from dinoseek.store import EdgeStore
from dinoseek_cli.eval import render
from dinoseek_cli.main import main
from tests.cli_runner import invoke, run_json
from tests.helpers import unit_vectors, write_tree


def make_set(
    vectors: np.ndarray, labels: list[int], groups: list[int] | None = None
) -> LabelledSet:
    count = len(labels)
    return LabelledSet(
        vectors=np.asarray(vectors, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        classes=tuple(f"c{k}" for k in range(max(labels) + 1)),
        groups=np.asarray(groups if groups is not None else [-(i + 1) for i in range(count)]),
        names=[f"p{i}" for i in range(count)],
    )


def perfect(classes: int = 3, per_class: int = 6, seed: int = 0) -> LabelledSet:
    """Each class a tight cluster around its own axis."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(classes):
        axis = np.zeros(16)
        axis[k] = 1.0
        rows += [axis + 0.01 * rng.standard_normal(16) for _ in range(per_class)]
    vectors = np.asarray(rows) / np.linalg.norm(rows, axis=1, keepdims=True)
    return make_set(vectors, [k for k in range(classes) for _ in range(per_class)])


def test_a_perfect_embedding_scores_one() -> None:
    data = perfect(per_class=10)
    assert knn_accuracy(data, 10) == 1.0
    metrics = retrieval_metrics(data)
    assert metrics == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "map@r": 1.0}
    probes = few_shot_accuracy(data, [1, 5, None], draws=2, seed=0)
    # One example per class: the probe's standardisation gives the 13 axes that carry only
    # noise as much weight as the 3 that carry the classes; five examples are enough.
    assert probes["1"][0] > 1 / 3
    assert probes["5"] == (1.0, 0.0)
    assert probes["all"] == (1.0, 0.0)
    assert confused_pairs(data, knn_predictions(data, 10)) == []


def test_a_constant_embedding_is_at_chance() -> None:
    labels = [k for k in range(4) for _ in range(10)]
    data = make_set(np.ones((40, 8)) / np.sqrt(8), labels)
    # Every neighbour ties: the vote is the class shares among the others, so each point's
    # own class is the one with one fewer: never predicted.
    assert knn_accuracy(data, 39) == 0.0
    probes = few_shot_accuracy(data, [None], draws=3, seed=0)
    assert probes["all"][0] == pytest.approx(0.25, abs=0.01)  # one class for all: a quarter


def test_map_at_r_of_a_known_ranking() -> None:
    """Three points on a line: from p0, p1 (same class) is farther than p2 (other class)."""
    angles = np.array([0.0, 0.6, 0.3, 2.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    data = make_set(vectors, [0, 0, 1, 1])
    metrics = retrieval_metrics(data, ks=(1, 2))
    # p0: R=1, nearest is p2 (wrong): AP 0. p1: R=1, nearest p2 (wrong): 0.
    # p2: R=1, nearest p1 or p0 (wrong): 0. p3: R=1, nearest p1 (wrong): 0.
    assert metrics["map@r"] == 0.0
    assert metrics["recall@1"] == 0.0
    assert metrics["recall@2"] == pytest.approx(0.75)  # p3's two nearest are p1, p2


def brute_force(data: LabelledSet, k: int) -> tuple[float, dict[str, float]]:
    sims = data.vectors @ data.vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    correct, recalls, aps = 0, {1: 0, 5: 0}, []
    for i in range(len(data.labels)):
        near = order[i, :k]
        votes = np.zeros(len(data.classes))
        for j in near:
            votes[data.labels[j]] += np.exp(sims[i, j] / 0.07)
        correct += votes.argmax() == data.labels[i]
        hits = data.labels[order[i]] == data.labels[i]
        for r in recalls:
            recalls[r] += hits[:r].any()
        big_r = int((data.labels == data.labels[i]).sum() - 1)
        precision = np.cumsum(hits[:big_r]) / np.arange(1, big_r + 1)
        aps.append(float((precision * hits[:big_r]).sum() / big_r))
    count = len(data.labels)
    return correct / count, {
        "recall@1": recalls[1] / count,
        "recall@5": recalls[5] / count,
        "map@r": float(np.mean(aps)),
    }


def test_knn_and_retrieval_match_a_brute_force_reference() -> None:
    vectors = unit_vectors(120, 8, seed=5)
    labels = (np.arange(120) % 4).tolist()
    data = make_set(vectors, labels)
    accuracy, reference = brute_force(data, 20)
    assert knn_accuracy(data, 20) == pytest.approx(accuracy)
    metrics = retrieval_metrics(data, ks=(1, 5))
    for key, value in reference.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_near_duplicates_are_never_on_both_sides() -> None:
    data = perfect(classes=2, per_class=8)
    groups = np.arange(16) // 2  # pairs
    grouped = make_set(data.vectors, data.labels.tolist(), groups.tolist())
    train, test = group_split(grouped, 0.3, np.random.default_rng(0))
    assert not set(groups[train]) & set(groups[test])
    # The nearest other point of each row is never its group mate.
    twins = make_set(
        np.repeat(unit_vectors(8, 8, seed=1), 2, axis=0), (np.arange(16) // 8).tolist(),
        groups.tolist(),
    )  # fmt: skip
    assert retrieval_metrics(twins, ks=(1,))["recall@1"] < 1.0


def test_few_shot_draws_are_reproducible_with_a_seed() -> None:
    data = make_set(unit_vectors(60, 8, seed=2), (np.arange(60) % 3).tolist())
    first = few_shot_accuracy(data, [1, 5, None], draws=3, seed=7)
    assert few_shot_accuracy(data, [1, 5, None], draws=3, seed=7) == first
    assert few_shot_accuracy(data, [1, 5, None], draws=3, seed=8) != first


def test_labelled_set_refuses_what_cannot_be_evaluated() -> None:
    vectors = unit_vectors(6, 4)
    with pytest.raises(ConfigError, match="no labelled points"):
        labelled_set(vectors, [None] * 6, [None] * 6, list("abcdef"), min_per_class=2)
    with pytest.raises(ConfigError, match="at least two classes"):
        labelled_set(vectors, ["a"] * 6, [None] * 6, list("abcdef"), min_per_class=2)
    data, left_out = labelled_set(
        vectors, ["a", "a", "b", "b", "c", None], [None] * 6, list("abcdef"), min_per_class=2
    )
    assert left_out == {"c": 1}  # a class of one image: reported and left out
    assert data.classes == ("a", "b")


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    write_tree(tmp_path / "photos", per_class=8, classes=("cats", "dogs", "birds"))
    return tmp_path / "photos"


def reference(vectors: np.ndarray, labels: list[str], groups: list[str | None]) -> dict[str, Any]:
    """What ``eval`` must report, pair by pair: each row against every other row outside its
    near-duplicate group (a row with no group is a group of its own)."""
    classes = sorted(set(labels))
    group = [g if g else f"own-{i}" for i, g in enumerate(groups)]
    count = len(labels)
    found: dict[str, Any] = {"knn_accuracy@10": 0, "knn_accuracy@20": 0, "recall@1": 0,
                             "recall@5": 0, "recall@10": 0}  # fmt: skip
    precisions, confusion = [], np.zeros((len(classes), len(classes)), dtype=int)
    for i in range(count):
        others = [j for j in range(count) if group[j] != group[i]]
        ranked = sorted(others, key=lambda j: -float(vectors[i] @ vectors[j]))
        for k in (10, 20):
            votes = dict.fromkeys(classes, 0.0)
            for j in ranked[:k]:
                votes[labels[j]] += np.exp(float(vectors[i] @ vectors[j]) / 0.07)
            guess = max(classes, key=lambda c: votes[c])
            found[f"knn_accuracy@{k}"] += guess == labels[i]
            if k == 20:
                confusion[classes.index(labels[i]), classes.index(guess)] += 1
        hits = [labels[j] == labels[i] for j in ranked]
        for k in (1, 5, 10):
            found[f"recall@{k}"] += any(hits[:k])
        relevant = sum(hits)
        if relevant:
            seen = 0
            total = 0.0
            for rank, hit in enumerate(hits[:relevant], start=1):
                seen += hit
                total += seen / rank if hit else 0.0
            precisions.append(total / relevant)
    numbers = {key: round(value / count, 4) for key, value in found.items()}
    return {**numbers, "map@r": round(float(np.mean(precisions)), 4),
            "confusion": {"k": 20, "classes": classes, "matrix": confusion.tolist()}}  # fmt: skip


def stored(data: Path, collection: str = "images") -> tuple[np.ndarray, list[str], list[Any]]:
    """The labelled vectors of a collection, their labels and their dedup groups."""
    with EdgeStore(data) as store:
        store.acquire(collection)
        points = [p for p in store.scroll(collection, with_vectors=True) if p.payload.get("label")]
    return (
        np.stack([p.vector for p in points]),
        [str(p.payload["label"]) for p in points],
        [p.payload.get("duplicate_group") for p in points],
    )


def assert_pinned(entry: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        assert entry[key] == (value if key == "confusion" else pytest.approx(value, abs=1e-4)), key


def test_eval_on_a_folder_is_the_brute_force_answer_for_each_model(
    photos: Path, tmp_path: Path
) -> None:
    """Each model's numbers against the reference on the vectors the same model stores when
    the folder is indexed for good (which eval's own temporary collection is not)."""
    report = tmp_path / "report"
    document = run_json(
        "eval", photos, "--labels-from-folders", "--model", "fake/dinov2", "--model",
        "fake/other", "--shots", "1,5", "--draws", "2", "--report", report,
        "--data-dir", tmp_path / "unused",
    )  # fmt: skip
    assert [m["model"] for m in document["models"]] == ["fake/dinov2", "fake/other"]
    assert not (tmp_path / "unused").exists()  # temporary collections only
    for entry in document["models"]:
        data = tmp_path / entry["model"].replace("/", "-")
        indexed = invoke("index", photos, "--model", entry["model"], "--data-dir", data,
                         "--labels-from-folders", "-q")  # fmt: skip
        assert indexed.exit_code == 0, indexed.output
        vectors, labels, groups = stored(data)
        expected = reference(vectors, labels, groups)
        assert expected["recall@1"] < 1.0  # a query that found itself would score 1
        assert (entry["points"], entry["classes"]) == (24, 3)
        assert_pinned(entry, expected)
        assert set(entry["linear_probe"]) == {"1", "5", "all"}
        assert entry["images_per_s"] > 0
        assert entry["peak_memory_mb"] > 0
    with Image.open(report / "eval.png") as picture:
        assert picture.format == "PNG"
    assert json.loads((report / "eval.json").read_text())["models"] == document["models"]
    assert "kNN@20" in (report / "summary.md").read_text()


def test_eval_on_a_collection_is_the_brute_force_answer_without_near_duplicates(
    photos: Path, tmp_path: Path
) -> None:
    """Copies marked by ``dinoseek dedup`` are neither neighbours nor relevant to their
    originals: pinned against the reference with the stored groups."""
    for source in (photos / "cats" / "cats_0.jpg", photos / "dogs" / "dogs_3.jpg"):
        Image.open(source).save(source.with_name(f"{source.stem}-copy.png"))
    data = tmp_path / "data"
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data,
                     "--labels-from-folders", "-q")  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    assert run_json("dedup", "--data-dir", data, "--threshold", "0.999")["duplicates"] == 2
    vectors, labels, groups = stored(data)
    expected = reference(vectors, labels, groups)
    assert expected != reference(vectors, labels, [None] * len(labels))  # the groups matter
    document = run_json("eval", "--data-dir", data, "--draws", "2", "--seed", "3")
    (entry,) = document["models"]
    assert (entry["model"], entry["collection"], entry["points"]) == ("fake/dinov2", "images", 26)
    assert entry["splits"] == "near-duplicate groups (dinoseek dedup)"
    assert_pinned(entry, expected)
    assert "images_per_s" not in entry  # nothing was embedded
    again = run_json("eval", "--data-dir", data, "--draws", "2", "--seed", "3")
    assert again["models"][0]["linear_probe"] == entry["linear_probe"]
    text = invoke("eval", "--data-dir", data, "--draws", "1")
    assert text.exit_code == 0, text.output
    assert "kNN@10" in text.output
    assert "taken for" in text.output or entry["confused"] == []


def test_long_model_names_keep_their_end_after_an_ellipsis() -> None:
    entry = {"model": "/home/someone/models/" + "x" * 40 + "/dinov2-small-adapted",
             "dtype": "auto", "images_per_s": 10.0, "knn_accuracy@10": 0.5,
             "knn_accuracy@20": 0.5, "recall@1": 0.5, "recall@5": 0.5, "map@r": 0.5,
             "linear_probe": {"all": {"mean": 0.5, "std": 0.0}}, "points": 10, "classes": 2,
             "splits": "x", "left_out_classes": {}, "confused": []}  # fmt: skip
    short = {**entry, "model": "fake/dinov2"}
    head, long_row, short_row = render({"shots": ["all"], "models": [entry, short]}).split("\n")[:3]
    assert long_row.startswith("…")
    assert long_row.split()[0].endswith("/dinov2-small-adapted")
    assert len(long_row.split()[0]) == 40
    assert head.index("dtype") == long_row.index("auto") == short_row.index("auto")
    alone = render({"shots": ["all"], "models": [short]}).split("\n")
    assert alone[1].startswith("fake/dinov2 auto")  # the column is as wide as the names


def test_the_plot_has_titles_a_confusion_matrix_and_no_speed_panel_for_one_model() -> None:
    pytest.importorskip("matplotlib")
    from dinoseek_cli.eval import plot_figure

    def entry(model: str, rate: float) -> dict[str, Any]:
        confusion = {"k": 20, "classes": ["a", "b"], "matrix": [[9, 1], [5, 15]]}
        return {"model": model, "dtype": "auto", "images_per_s": rate, "knn_accuracy@20": 0.5,
                "points": 30, "classes": 2, "linear_probe": {"all": {"mean": 0.5, "std": 0.1}},
                "confusion": confusion}  # fmt: skip

    one = plot_figure({"shots": ["all"], "models": [entry("m1", 10.0)]})
    titles = [axis.get_title() for axis in one.axes if axis.get_title()]
    assert titles == ["Linear probe on frozen features", "kNN confusion (k=20): m1"]
    assert one.get_suptitle() == "dinoseek eval: 30 labelled images, 2 classes"
    (image,) = one.axes[1].get_images()
    assert image.get_array().tolist() == [[0.9, 0.1], [0.25, 0.75]]  # rows: the true class
    two = plot_figure({"shots": ["all"], "models": [entry("m1", 10.0), entry("m2", 20.0)]})
    titles = [axis.get_title() for axis in two.axes if axis.get_title()]
    assert titles[:2] == ["Linear probe on frozen features", "Accuracy against speed"]
    speed = two.axes[1]
    assert sum(len(c.get_offsets()) for c in speed.collections) == 2


def test_eval_errors_are_clear(photos: Path, tmp_path: Path) -> None:
    unlabelled = invoke("eval", photos, "--model", "fake/dinov2")
    assert unlabelled.exit_code == 2
    assert "--labels-from-folders" in unlabelled.output
    one_class = tmp_path / "one"
    write_tree(one_class, per_class=6, classes=("cats",))
    single = invoke("eval", one_class, "--labels-from-folders", "--model", "fake/dinov2")
    assert single.exit_code != 0
    assert "at least two classes" in single.output
    not_a_model = tmp_path / "nope"
    not_a_model.mkdir()  # a folder without weights: the real loader, not the stand-in
    broken = CliRunner().invoke(
        main, ["eval", str(photos), "--labels-from-folders", "--model", str(not_a_model)]
    )
    assert broken.exit_code != 0
    assert "cannot load model" in broken.output
    assert "nope" in broken.output
    bad_shots = invoke("eval", photos, "--labels-from-folders", "--shots", "one")
    assert bad_shots.exit_code == 2


def test_one_example_per_class_of_two_classes_is_enough_for_separated_classes() -> None:
    """Standardised by its own two rows, a one-shot head weighs noise most (near chance)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 384))
    rows = np.concatenate([c + 0.5 * rng.standard_normal((40, 384)) for c in centres])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    data = make_set(rows, [0] * 40 + [1] * 40)
    assert few_shot_accuracy(data, [1], draws=3, seed=0)["1"][0] >= 0.95


def test_near_duplicates_count_neither_as_hits_nor_as_relevant() -> None:
    data = perfect(classes=2, per_class=10)
    groups = list(range(20))
    groups[1:5] = [0, 0, 0, 0]  # rows 0..4 of class 0 are one group of near-duplicates
    grouped = make_set(data.vectors, data.labels.tolist(), groups)
    assert retrieval_metrics(grouped)["map@r"] == 1.0  # R leaves out what cannot be retrieved
    lonely = make_set(unit_vectors(6, 8, seed=4), [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 2, 3])
    # Rows 0..2 have no same-label row outside their group: their padding is no hit.
    assert retrieval_metrics(lonely, ks=(5,))["recall@5"] == 0.5


def test_a_group_with_two_labels_is_never_split() -> None:
    labels = [0, 1] * 10
    groups = [i // 2 for i in range(20)]  # each group: one row of each class
    data = make_set(unit_vectors(20, 8, seed=6), labels, groups)
    rng = np.random.default_rng(0)
    for _ in range(50):
        train, test = group_split(data, 0.3, rng)
        assert not set(data.groups[train].tolist()) & set(data.groups[test].tolist())


def test_nothing_to_hold_out_is_a_clear_error() -> None:
    data = make_set(unit_vectors(6, 8, seed=7), [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1])
    with pytest.raises(ConfigError, match="no images can be held out"):
        few_shot_accuracy(data, [1], draws=1, seed=0)
