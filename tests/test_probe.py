"""The linear probe and the kNN vote, with real torch training on generated clustered vectors."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from dinoseek.errors import (
    ConfigError,
    DinoseekError,
    InvalidProbeError,
    ProbeMismatchError,
    ProbeTrainingError,
)
from dinoseek.labels import UNKNOWN_LABEL, PredictedLabel, knn_vote
from dinoseek.probe import (
    LinearProbe,
    SkippedClass,
    expected_calibration_error,
    fit_temperature,
)
from dinoseek.probe.calibration import softmax
from dinoseek.probe.training import ProbeTrainingResult, train_probe
from dinoseek_cli.probe import render_report

DIM = 64
CLASSES = ("cat", "dog", "fox", "owl", "yak")

Data = tuple[np.ndarray, list[str | None], dict[str, np.ndarray]]


def clustered(counts: dict[str, int], *, dim: int = DIM, noise: float = 0.6, seed: int = 0) -> Data:
    """Unit vectors around one random unit centroid per label: (vectors, labels, centroids)."""
    rng = np.random.default_rng(seed)
    centroids = {}
    for label in counts:
        centroid = rng.standard_normal(dim)
        centroids[label] = centroid / np.linalg.norm(centroid)
    labels: list[str | None] = [label for label, count in counts.items() for _ in range(count)]
    points = np.stack([centroids[str(label)] for label in labels])
    points += noise * rng.standard_normal(points.shape) / np.sqrt(dim)
    vectors = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return vectors, labels, centroids


@pytest.fixture(scope="module")
def data() -> Data:
    """40 vectors of each of five classes, plus a class with 3 and 2 unlabelled vectors."""
    vectors, labels, centroids = clustered({**dict.fromkeys(CLASSES, 40), "rare": 3})
    extra = clustered({"x": 2}, seed=9)[0]
    return np.concatenate([vectors, extra]), [*labels, None, None], centroids


@pytest.fixture(scope="module")
def trained(data: Data) -> ProbeTrainingResult:
    vectors, labels, _ = data
    return train_probe(
        vectors,
        labels,
        name="animals",
        model_id="facebook/dinov2-small",
        fingerprint=(0.6, 0.8, 0.0),
        seed=0,
    )


def test_probe_learns_separable_classes(trained: ProbeTrainingResult) -> None:
    report = trained.report
    assert report.accuracy >= 0.95
    assert trained.probe.classes == CLASSES
    assert [entry.holdout_count for entry in report.per_class] == [8] * 5
    assert [entry.train_count for entry in report.per_class] == [32] * 5
    assert report.train_size == 160
    assert report.holdout_size == 40
    assert sum(map(sum, report.confusion)) == 40
    assert report.weight_decay in {decay for decay, _ in report.validation_losses}
    assert trained.probe.dim == DIM
    assert trained.probe.train_size == 160


def test_small_classes_and_unlabelled_vectors_are_reported_and_excluded(
    trained: ProbeTrainingResult,
) -> None:
    assert trained.report.skipped_classes == (SkippedClass("rare", 3),)
    assert "rare" not in trained.probe.classes
    assert trained.report.unlabelled_count == 2
    text = render_report(trained.report)
    assert "rare (3)" in text
    assert "confusion matrix" in text


def test_probabilities_sum_to_one_and_predictions_are_sorted(
    trained: ProbeTrainingResult, data: Data
) -> None:
    vectors = data[0][:50]
    probabilities = trained.probe.predict_proba(vectors)
    assert probabilities.shape == (50, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    predictions = trained.probe.predict(vectors, top_k=3)
    assert all(len(row) == 3 for row in predictions)
    for row in predictions:
        values = [entry.probability for entry in row]
        assert values == sorted(values, reverse=True)
    assert predictions[0][0].label == "cat"
    assert len(trained.probe.predict(vectors[:1], top_k=50)[0]) == 5
    assert trained.probe.predict(vectors[:0]) == []


def miscalibrated_logits(scale: float, rows: int = 20_000, seed: int = 0) -> tuple[Any, Any]:
    """Logits whose softmax is the truth, times ``scale`` (> 1: over-confident, < 1: under-),
    and targets drawn from the truth."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 1.5, size=(rows, 4))
    truth = softmax(true_logits)
    targets = np.array([rng.choice(4, p=row) for row in truth])
    return true_logits * scale, targets


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_scaling_calibrates_miscalibrated_logits(scale: float) -> None:
    logits, targets = miscalibrated_logits(scale)
    temperature, nll_before, nll_after = fit_temperature(logits, targets)
    assert temperature == pytest.approx(scale, rel=0.1)  # it undoes the known distortion
    assert nll_after < nll_before
    before = expected_calibration_error(softmax(logits), targets)
    after = expected_calibration_error(softmax(logits, temperature), targets)
    assert before > 0.05
    assert after < before / 3
    # "0.8 means right 8 times in 10": predictions made with 0.75-0.85 confidence.
    probabilities = softmax(logits, temperature)
    top = probabilities.max(axis=1)
    near = (top >= 0.75) & (top < 0.85)
    assert near.sum() > 500
    accuracy = float((probabilities[near].argmax(axis=1) == targets[near]).mean())
    assert accuracy == pytest.approx(0.8, abs=0.1)


def test_a_calibrated_holdout_keeps_a_temperature_near_one() -> None:
    logits, targets = miscalibrated_logits(1.0, seed=1)
    temperature, _, _ = fit_temperature(logits, targets)
    assert temperature == pytest.approx(1.0, abs=0.1)


def test_the_trained_probe_carries_its_temperature(trained: ProbeTrainingResult) -> None:
    report = trained.report
    assert report.temperature == trained.probe.temperature > 0
    assert report.holdout_nll_after <= report.holdout_nll_before


def test_fit_temperature_softens_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, size=200)
    logits = rng.standard_normal((200, 3)) * 10  # confident, and right only by chance
    temperature, before, after = fit_temperature(logits, targets)
    assert temperature > 1
    assert after < before


def test_min_confidence_turns_uncertain_predictions_into_unknown(
    trained: ProbeTrainingResult, data: Data
) -> None:
    centroids = data[2]
    between = centroids["cat"] + centroids["dog"]
    queries = np.stack([between / np.linalg.norm(between), centroids["owl"]]).astype(np.float32)
    top = trained.probe.predict_proba(queries).max(axis=1)
    threshold = float(top.mean())
    assert top[0] < threshold <= top[1]
    probe = dataclasses.replace(trained.probe, min_confidence=threshold)
    uncertain, confident = probe.predict(queries)
    assert uncertain == [
        PredictedLabel(UNKNOWN_LABEL, round(float(top[0]), 6), "probe", probe.name)
    ]
    assert confident[0].label == "owl"


def test_training_is_deterministic_for_a_seed(
    data: Data,
    trained: ProbeTrainingResult,
) -> None:
    again = train_probe(data[0], data[1], name="animals", model_id="facebook/dinov2-small")
    np.testing.assert_array_equal(again.probe.weight, trained.probe.weight)
    np.testing.assert_array_equal(again.probe.bias, trained.probe.bias)
    assert again.probe.temperature == trained.probe.temperature


def test_min_confidence_is_applied_and_reported_by_training() -> None:
    vectors, labels, _ = clustered(dict.fromkeys(("a", "b", "c"), 15), noise=3.0, seed=3)
    result = train_probe(vectors, labels, name="p", model_id="m", min_confidence=0.9)
    assert result.probe.min_confidence == 0.9
    assert result.report.coverage is not None
    assert 0 <= result.report.coverage <= 1
    assert "min confidence 0.9" in render_report(result.report)


def test_too_few_classes_raise_a_domain_error() -> None:
    vectors, labels, _ = clustered({"a": 10, "b": 4})
    with pytest.raises(ProbeTrainingError) as caught:
        train_probe(vectors, labels, name="p", model_id="m")
    assert caught.value.code == "probe_training_failed"
    assert "b (4)" in caught.value.message
    assert isinstance(caught.value, DinoseekError)


@pytest.mark.parametrize(
    ("vectors", "labels", "message"),
    [
        (np.zeros((0, DIM), np.float32), [], "no vectors"),
        (np.zeros(DIM, np.float32), ["a"], "2-d"),
        (np.zeros((3, DIM), np.float32), ["a", "b"], "3 vectors but 2 labels"),
        (np.full((2, DIM), np.nan, np.float32), ["a", "b"], "not finite"),
        (np.zeros((2, DIM), np.float32), [None, None], "no labelled vectors"),
        (np.zeros((2, DIM), np.float32), ["a", 3], "not a string"),
    ],
)
def test_bad_training_input_raises_a_domain_error(
    vectors: np.ndarray, labels: list[object], message: str
) -> None:
    with pytest.raises(ProbeTrainingError, match=message):
        train_probe(vectors, labels, name="p", model_id="m")  # type: ignore[arg-type]


def test_dimension_and_arguments_are_checked() -> None:
    vectors, labels, _ = clustered({"a": 10, "b": 10})
    with pytest.raises(ProbeTrainingError, match="expected 32-d vectors, got 64-d"):
        train_probe(vectors, labels, name="p", model_id="m", dim=32)
    with pytest.raises(ConfigError, match="holdout"):
        train_probe(vectors, labels, name="p", model_id="m", holdout=0.0)
    with pytest.raises(ConfigError, match="min_per_class"):
        train_probe(vectors, labels, name="p", model_id="m", min_per_class=1)


def test_serialisation_round_trips_exactly(trained: ProbeTrainingResult, data: Data) -> None:
    probe = dataclasses.replace(trained.probe, min_confidence=0.5)
    loaded = LinearProbe.from_bytes(probe.to_bytes())
    for field in dataclasses.fields(LinearProbe):
        if field.name not in {"weight", "bias"}:
            assert getattr(loaded, field.name) == getattr(probe, field.name), field.name
    assert loaded.weight.tobytes() == probe.weight.tobytes()
    assert loaded.bias.tobytes() == probe.bias.tobytes()
    np.testing.assert_array_equal(loaded.predict_proba(data[0]), probe.predict_proba(data[0]))
    assert not loaded.weight.flags.writeable


def _tampered(probe: LinearProbe, **changes: object) -> bytes:
    metadata = {key: json.dumps(value) for key, value in {**probe.metadata(), **changes}.items()}
    data: bytes = save({"weight": probe.weight, "bias": probe.bias}, metadata=metadata)
    return data


@pytest.mark.parametrize(
    "mutate",
    [
        lambda probe: b"",
        lambda probe: b"not a probe at all",
        lambda probe: probe.to_bytes()[:-7],
        lambda probe: save({"weight": probe.weight}),
        lambda probe: save({"weight": probe.weight, "bias": probe.bias}),
        lambda probe: _tampered(probe, format="something.else"),
        lambda probe: _tampered(probe, classes="cat"),
        lambda probe: _tampered(probe, classes=["cat", "dog"]),
        lambda probe: _tampered(probe, temperature=-1.0),
        lambda probe: _tampered(probe, min_confidence=2.0),
        lambda probe: _tampered(probe, dim="64"),
        lambda probe: _tampered(probe, fingerprint=0.5),
        lambda probe: _tampered(probe, name=None),
    ],
)
def test_malformed_bytes_raise_the_domain_error(
    trained: ProbeTrainingResult, mutate: object
) -> None:
    data = mutate(trained.probe)  # type: ignore[operator]
    with pytest.raises(InvalidProbeError) as caught:
        LinearProbe.from_bytes(data)
    assert caught.value.code == "invalid_probe"


def test_compatibility_checks_dimension_model_and_fingerprint(trained: ProbeTrainingResult) -> None:
    probe = trained.probe
    probe.check_compatible("facebook/dinov2-small", DIM)
    probe.check_compatible("/models/dinov2-small", DIM, fingerprint=(0.61, 0.79, 0.01))
    with pytest.raises(ProbeMismatchError, match="facebook/dinov2-small") as caught:
        probe.check_compatible("facebook/dinov2-base", 768)
    assert "768-d" in caught.value.message
    assert caught.value.code == "probe_mismatch"
    with pytest.raises(ProbeMismatchError, match="/models/other"):
        probe.check_compatible("/models/other", DIM)
    with pytest.raises(ProbeMismatchError, match="fingerprint cosine"):
        probe.check_compatible("/models/other", DIM, fingerprint=(0.0, 0.0, 1.0))
    with pytest.raises(ProbeMismatchError, match="fingerprint cosine"):
        probe.check_compatible("facebook/dinov2-small", DIM, fingerprint=(0.8, -0.6, 0.0))
    unfingerprinted = dataclasses.replace(probe, fingerprint=())
    unfingerprinted.check_compatible("facebook/dinov2-small", DIM, fingerprint=(1.0, 0.0, 0.0))


def test_predicting_other_sized_vectors_is_refused(trained: ProbeTrainingResult) -> None:
    with pytest.raises(ProbeMismatchError, match="64-d"):
        trained.probe.predict(np.zeros((1, 32), np.float32))
    with pytest.raises(ConfigError):
        trained.probe.predict(np.zeros((1, DIM), np.float32), top_k=0)


def test_report_is_json_and_large_reports_list_the_most_confused_pairs() -> None:
    counts = {f"class-{k:02d}": 6 for k in range(22)}
    vectors, labels, _ = clustered(counts, dim=16, noise=1.5, seed=1)
    report = train_probe(vectors, labels, name="many", model_id="m").report
    encoded = json.loads(json.dumps(report.to_dict()))
    assert len(encoded["confusion"]) == 22
    assert encoded["skipped_classes"] == []
    text = render_report(report)
    assert "confusion matrix" not in text
    assert "the 20 classes of 22 with the lowest holdout accuracy" in text
    assert "most confused" in text or "no confusions" in text


def test_knn_vote_weights_by_similarity_and_normalises() -> None:
    votes = knn_vote(["cat", "dog", None, "cat", "owl"], [0.9, 0.8, 0.99, 0.3, -0.2])
    assert [vote.label for vote in votes] == ["cat", "dog", "owl"]
    assert votes[0].probability == pytest.approx(1.2 / 2.0)
    assert votes[1].probability == pytest.approx(0.8 / 2.0)
    assert votes[2].probability == 0.0
    assert {vote.neighbours for vote in votes} == {5}  # every neighbour, labelled or not
    assert sum(vote.probability for vote in votes) == pytest.approx(1.0)
    assert knn_vote(["cat", "dog", "cat"], [0.5, 0.9, 0.5], top_k=1) == [
        PredictedLabel("cat", pytest.approx(1.0 / 1.9), "knn", neighbours=3)  # type: ignore[arg-type]
    ]


def test_knn_vote_edge_cases() -> None:
    assert knn_vote([None, None], [0.9, 0.8]) == []
    assert knn_vote([], []) == []
    assert knn_vote(["a", "b", "a"], [0.0, -1.0, float("nan")]) == [
        PredictedLabel("a", pytest.approx(2 / 3), "knn", neighbours=3),  # type: ignore[arg-type]
        PredictedLabel("b", pytest.approx(1 / 3), "knn", neighbours=3),  # type: ignore[arg-type]
    ]
    with pytest.raises(ValueError, match="2 labels but 1 scores"):
        knn_vote(["a", "b"], [0.5])
