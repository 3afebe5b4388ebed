"""``dinoseek.probe.calibration``'s measures on small hand-worked cases (what the mutation
run showed untested: the ECE's bin edges, coverage at its threshold, softmax's stability, the
notes at the temperature bounds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinoseek.probe.calibration import (
    TEMPERATURE_BOUNDS,
    coverage,
    expected_calibration_error,
    fit_temperature,
    nll,
    softmax,
    temperature_note,
)


def two_class(tops: list[float]) -> np.ndarray:
    """Rows whose top probability, for class 0, is each of ``tops`` (the rest spread evenly
    over nine other classes, so that class 0 stays on top down to 0.1)."""
    return np.array([[t] + [(1.0 - t) / 9] * 9 for t in tops])


def test_softmax_is_float64_and_stable_row_by_row() -> None:
    logits = np.array([[0.0, 1.0], [1000.0, 1001.0]], dtype=np.float32)
    probabilities = softmax(logits)
    assert probabilities.dtype == np.float64
    expected = 1.0 / (1.0 + math.e)
    assert probabilities == pytest.approx(np.array([[expected, 1 - expected]] * 2), abs=1e-12)
    assert softmax(np.array([[0.0, 1.0]]), temperature=0.5)[0, 1] == pytest.approx(
        1.0 / (1.0 + math.exp(-2.0))
    )


def test_ece_bins_are_right_closed_tenths() -> None:
    # 0.2 sits on an edge: it belongs to (0.1, 0.2], with 0.15; 0.95 and 1.0 share (0.9, 1].
    probabilities = two_class([0.15, 0.2, 0.95, 1.0, 0.55])
    targets = np.array([0, 1, 0, 1, 0])
    by_bin = [
        (2 / 5, abs(0.5 - 0.175)),  # (0.1, 0.2]: one right of two, mean confidence 0.175
        (1 / 5, abs(1.0 - 0.55)),  # (0.5, 0.6]
        (2 / 5, abs(0.5 - 0.975)),  # (0.9, 1.0]
    ]
    expected = sum(weight * gap for weight, gap in by_bin)
    assert expected_calibration_error(probabilities, targets) == pytest.approx(expected)
    # Five bins: 0.2 moves to (0, 0.2] with 0.15, 0.55 to (0.4, 0.6], 0.95 and 1 to (0.8, 1].
    assert expected_calibration_error(probabilities, targets, bins=5) == pytest.approx(expected)
    assert expected_calibration_error(two_class([0.6]), np.array([0]), bins=2) == pytest.approx(0.4)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probabilities = two_class([0.75] * 4)
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1])) == 0.0


def test_coverage_counts_rows_at_or_above_the_threshold() -> None:
    probabilities = two_class([0.9, 0.8, 0.6, 0.3])
    targets = np.array([0, 1, 0, 0])
    assert coverage(probabilities, targets, 0.8) == (0.5, 0.5)
    assert coverage(probabilities, targets, 0.6) == (0.75, pytest.approx(2 / 3))
    assert coverage(probabilities, targets, 0.0) == (1.0, 0.75)
    assert coverage(probabilities, targets, 0.95) == (0.0, None)


def test_temperature_notes_at_the_bounds_only() -> None:
    low, high = TEMPERATURE_BOUNDS
    assert temperature_note(low) == (
        "the lowest allowed: the holdout has too few errors to calibrate on"
    )
    assert temperature_note(low * 1.0005) == temperature_note(low)
    assert temperature_note(high) == "the highest allowed"
    assert temperature_note(high * 0.9995) == "the highest allowed"
    assert temperature_note(low * 1.01) == ""
    assert temperature_note(1.0) == ""
    assert temperature_note(high * 0.99) == ""


def reference_ece(probabilities: np.ndarray, targets: np.ndarray, bins: int) -> float:
    """The ECE written the plain way: each row goes to the first right-closed bin whose upper
    edge it does not pass."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    members: list[list[int]] = [[] for _ in range(bins)]
    for row, top in enumerate(probabilities.max(axis=1)):
        members[next(b for b in range(bins) if top <= edges[b + 1] or b == bins - 1)].append(row)
    total = 0.0
    for rows in members:
        if rows:
            accuracy = np.mean(probabilities[rows].argmax(axis=1) == targets[rows])
            confidence = np.mean(probabilities[rows].max(axis=1))
            total += len(rows) / len(targets) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("bins", [2, 5, 10, 15])
def test_ece_matches_the_plain_definition_on_every_edge(bins: int) -> None:
    rng = np.random.default_rng(bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    tops = np.concatenate([rng.uniform(0.1, 1.0, 200), edges[edges >= 0.1]])
    probabilities = two_class(list(tops))
    targets = (rng.random(len(tops)) < 0.3).astype(np.int64)  # right 70% of the time
    assert expected_calibration_error(probabilities, targets, bins) == pytest.approx(
        reference_ece(probabilities, targets, bins), abs=1e-12
    )


def test_coverage_scores_each_covered_row_by_its_own_top_class() -> None:
    probabilities = np.array([[0.9, 0.1], [0.15, 0.85], [0.6, 0.4]])
    assert coverage(probabilities, np.array([0, 1, 1]), 0.8) == (pytest.approx(2 / 3), 1.0)


def test_nll_is_exact_and_stable_for_rows_of_any_scale() -> None:
    logits = np.array([[0.0, 1.0], [1000.0, 1001.0]])
    expected = math.log(1 + math.e) - 1.0  # -log softmax of the right class, both rows
    assert nll(logits, np.array([1, 1]), 1.0) == pytest.approx(expected)
    assert nll(logits, np.array([0, 1]), 2.0) == pytest.approx(
        (math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(0.5)) - 0.5) / 2
    )


def test_a_temperature_that_cannot_help_stays_at_one() -> None:
    logits = np.zeros((6, 3))  # every temperature gives the same uniform predictions
    assert fit_temperature(logits, np.array([0, 1, 2, 0, 1, 2])) == (
        1.0, pytest.approx(math.log(3)), pytest.approx(math.log(3))
    )  # fmt: skip
