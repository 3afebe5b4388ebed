"""Temperature scaling, tested as a property: on logits whose miscalibration is known (the
calibrated logits multiplied by ``k``: over-confident for k > 1, under-confident below), the
fitted temperature undoes it, the expected calibration error falls by a stated margin, and a
probability of 0.8 is right about 8 times in 10."""

from __future__ import annotations

import numpy as np
import pytest

from dinoseek.probe.calibration import expected_calibration_error, fit_temperature, softmax

CLASSES = 5
SAMPLES = 20_000


def miscalibrated(k: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets): targets drawn from softmax(z), logits = k * z."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(0.0, 2.0, (SAMPLES, CLASSES))
    probabilities = softmax(calibrated)
    cumulative = probabilities.cumsum(axis=1)
    targets = (rng.random((SAMPLES, 1)) > cumulative).sum(axis=1)
    return calibrated * k, np.minimum(targets, CLASSES - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [0.4, 2.5, 4.0])
def test_temperature_scaling_removes_a_known_miscalibration(k: float, seed: int) -> None:
    logits, targets = miscalibrated(k, seed)
    fit, held = slice(0, SAMPLES // 2), slice(SAMPLES // 2, SAMPLES)
    temperature, before_nll, after_nll = fit_temperature(logits[fit], targets[fit])
    assert temperature == pytest.approx(k, rel=0.1)  # logits / T = the calibrated ones
    assert after_nll < before_nll - 0.01

    before = expected_calibration_error(softmax(logits[held]), targets[held])
    scaled = softmax(logits[held], temperature)
    after = expected_calibration_error(scaled, targets[held])
    assert before >= 0.05, "the miscalibration is not visible: a wrong setup"
    assert after <= 0.025
    assert after < before - 0.04

    top = scaled.max(axis=1)
    near = (top >= 0.75) & (top < 0.85)
    assert near.sum() >= 300
    accuracy = float((scaled[near].argmax(axis=1) == targets[held][near]).mean())
    assert accuracy == pytest.approx(0.8, abs=0.1)


def test_calibrated_logits_keep_a_temperature_near_one() -> None:
    logits, targets = miscalibrated(1.0, 5)
    temperature, before_nll, after_nll = fit_temperature(logits, targets)
    assert temperature == pytest.approx(1.0, abs=0.05)
    assert after_nll == pytest.approx(before_nll, abs=1e-3)
