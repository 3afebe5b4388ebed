"""``dinoseek eval`` and its measures (``dinoseek.evaluation``): hand-computed values on tiny
sets, brute-force references on random data, and the command on the real embedded store with
the stand-in models (this is not about the model: any embedding does)."""

from __future__ import annotations

import json
from pathlib import Path

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
from dinoseek_cli.main import main
from tests.commands import invoke, run_json
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


def test_eval_compares_models_on_a_folder_and_writes_a_report(photos: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    document = run_json(
        "eval", photos, "--labels-from-folders", "--model", "fake/dinov2", "--model",
        "fake/other", "--shots", "1,5", "--draws", "2", "--report", report,
        "--data-dir", tmp_path / "unused",
    )  # fmt: skip
    assert [m["model"] for m in document["models"]] == ["fake/dinov2", "fake/other"]
    for entry in document["models"]:
        assert entry["points"] == 24
        assert entry["classes"] == 3
        assert set(entry["linear_probe"]) == {"1", "5", "all"}
        assert 0.0 <= entry["knn_accuracy@20"] <= 1.0
        assert {"recall@1", "recall@5", "recall@10", "map@r"} <= set(entry)
        assert entry["images_per_s"] > 0
        assert entry["peak_memory_mb"] > 0
    assert not (tmp_path / "unused").exists()  # temporary collections only
    with Image.open(report / "eval.png") as picture:
        assert picture.format == "PNG"
    assert json.loads((report / "eval.json").read_text())["models"] == document["models"]
    assert "kNN@20" in (report / "summary.md").read_text()


def test_eval_on_a_collection_reads_the_stored_vectors(photos: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data,
                     "--labels-from-folders", "-q")  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    document = run_json("eval", "--data-dir", data, "--draws", "2", "--seed", "3")
    (entry,) = document["models"]
    assert entry["model"] == "fake/dinov2"
    assert entry["collection"] == "images"
    assert "images_per_s" not in entry  # nothing was embedded
    again = run_json("eval", "--data-dir", data, "--draws", "2", "--seed", "3")
    assert again["models"][0]["linear_probe"] == entry["linear_probe"]
    text = invoke("eval", "--data-dir", data, "--draws", "1")
    assert text.exit_code == 0, text.output
    assert "kNN@10" in text.output
    assert "taken for" in text.output or entry["confused"] == []


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
