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
