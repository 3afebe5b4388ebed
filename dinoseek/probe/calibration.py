"""Calibration of a probe: temperature scaling on the held-out split, and how to measure it.

Temperature scaling divides the logits by one scalar ``T > 0``, chosen to minimise the
negative log-likelihood (NLL) of the holdout, so that a probability of 0.8 means right about 8
times in 10. It changes no prediction, only the confidence.
"""

from __future__ import annotations

import math

import numpy as np

TEMPERATURE_BOUNDS = (0.05, 20.0)  # a holdout without errors drives T to the lower bound
GOLDEN_SECTION_STEPS = 50  # shrinks the search interval 2e10-fold


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float, float]:
    """Temperature scaling: the ``T`` in ``TEMPERATURE_BOUNDS`` minimising NLL(logits / T).

    Returns ``(T, nll at T=1, nll at T)``; the second NLL never exceeds the first (``T`` falls
    back to 1 if the search finds nothing better). NLL is convex in ``1/T``, so a
    golden-section search on ``log T`` finds its minimum.
    """
    lo, hi = math.log(TEMPERATURE_BOUNDS[0]), math.log(TEMPERATURE_BOUNDS[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, targets, math.exp(c)), nll(logits, targets, math.exp(d))
    for _ in range(GOLDEN_SECTION_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, targets, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, targets, math.exp(d))
    best_t, best_nll = (math.exp(c), fc) if fc <= fd else (math.exp(d), fd)
    before = nll(logits, targets, 1.0)
    if best_nll >= before:
        return 1.0, before, before
    return best_t, before, best_nll


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits / temperature)``."""
    scaled = logits / temperature
    peak = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - peak).sum(axis=1)) + peak[:, 0]
    return float(np.mean(log_norm - scaled[np.arange(len(targets)), targets]))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise probabilities of ``logits / temperature`` (float64)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=1, keepdims=True))


def expected_calibration_error(
    probabilities: np.ndarray, targets: np.ndarray, bins: int = 10
) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence
    bins of the top probability, weighted by how many predictions fall in each."""
    top = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(top, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(
                float(correct[members].mean()) - float(top[members].mean())
            )
    return float(error)


def coverage(
    probabilities: np.ndarray, targets: np.ndarray, min_confidence: float
) -> tuple[float, float | None]:
    """Fraction of rows whose top probability reaches ``min_confidence``, and the accuracy on
    those rows (None when there are none)."""
    covered = probabilities.max(axis=1) >= min_confidence
    if not covered.any():
        return 0.0, None
    hits = probabilities[covered].argmax(axis=1) == targets[covered]
    return float(covered.mean()), float(hits.mean())


def temperature_note(temperature: float) -> str:
    """Why a temperature sits at a bound of the search, or ""."""
    if math.isclose(temperature, TEMPERATURE_BOUNDS[0], rel_tol=1e-3):
        return "the lowest allowed: the holdout has too few errors to calibrate on"
    if math.isclose(temperature, TEMPERATURE_BOUNDS[1], rel_tol=1e-3):
        return "the highest allowed"
    return ""
