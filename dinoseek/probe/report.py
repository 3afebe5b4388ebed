"""What training a probe reports: held-out accuracy overall and per class, the confusion
matrix, the chosen regularisation and the calibration. Data only; the commands render it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseek.probe.calibration import coverage, softmax
from dinoseek.probe.model import LinearProbe


@dataclass(frozen=True)
class FittedHead:
    """A fitted head in raw-vector space, and how its weight decay was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    weight_decay: float
    validation_losses: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ClassReport:
    """How one class was trained and how it did on the holdout."""

    label: str
    train_count: int
    holdout_count: int
    accuracy: float  # recall: the fraction of its holdout examples predicted as it

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "label": self.label,
            "train_count": self.train_count,
            "holdout_count": self.holdout_count,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class SkippedClass:
    """A class left out of training because it has too few examples."""

    label: str
    count: int


@dataclass(frozen=True)
class ConfusedPair:
    """Holdout examples of ``true`` predicted as ``predicted``."""

    true: str
    predicted: str
    count: int
    fraction: float  # of the holdout examples of ``true``


@dataclass(frozen=True)
class ProbeReport:
    """What training did and how well the probe does on the holdout.

    ``confusion[i][j]`` counts holdout examples of ``classes[i]`` predicted as ``classes[j]``
    (argmax, without ``min_confidence``). ``validation_losses`` pairs each weight decay of the
    grid with its balanced validation log-loss (empty when there was no validation split).
    ``coverage`` and ``covered_accuracy`` are the fraction of holdout examples whose top
    probability reaches ``min_confidence`` and the accuracy on those (``None`` without it).
    """

    name: str
    model_id: str
    dim: int
    classes: tuple[str, ...]
    per_class: tuple[ClassReport, ...]
    confusion: tuple[tuple[int, ...], ...]
    skipped_classes: tuple[SkippedClass, ...]
    min_per_class: int
    unlabelled_count: int
    train_size: int
    holdout_size: int
    holdout_fraction: float
    accuracy: float
    balanced_accuracy: float
    weight_decay: float
    validation_losses: tuple[tuple[float, float], ...]
    temperature: float
    holdout_nll_before: float
    holdout_nll_after: float
    min_confidence: float | None
    coverage: float | None
    covered_accuracy: float | None
    train_seconds: float
    seed: int

    def most_confused(self, limit: int = 10) -> list[ConfusedPair]:
        """The off-diagonal cells of the confusion matrix with the most examples."""
        pairs = [
            ConfusedPair(
                true=self.classes[i],
                predicted=self.classes[j],
                count=count,
                fraction=count / max(1, sum(row)),
            )
            for i, row in enumerate(self.confusion)
            for j, count in enumerate(row)
            if i != j and count > 0
        ]
        pairs.sort(key=lambda pair: (-pair.count, -pair.fraction))
        return pairs[:limit]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the whole report."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "classes": list(self.classes),
            "per_class": [entry.to_dict() for entry in self.per_class],
            "confusion": [list(row) for row in self.confusion],
            "skipped_classes": [
                {"label": entry.label, "count": entry.count} for entry in self.skipped_classes
            ],
            "min_per_class": self.min_per_class,
            "unlabelled_count": self.unlabelled_count,
            "train_size": self.train_size,
            "holdout_size": self.holdout_size,
            "holdout_fraction": self.holdout_fraction,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "weight_decay": self.weight_decay,
            "validation_losses": [
                {"weight_decay": decay, "log_loss": loss} for decay, loss in self.validation_losses
            ],
            "temperature": self.temperature,
            "holdout_nll_before": self.holdout_nll_before,
            "holdout_nll_after": self.holdout_nll_after,
            "min_confidence": self.min_confidence,
            "coverage": self.coverage,
            "covered_accuracy": self.covered_accuracy,
            "train_seconds": self.train_seconds,
            "seed": self.seed,
        }


def build_report(
    probe: LinearProbe,
    head: FittedHead,
    *,
    y_train: np.ndarray,
    y_holdout: np.ndarray,
    holdout_logits: np.ndarray,
    calibration: tuple[float, float],
    skipped: tuple[SkippedClass, ...],
    unlabelled_count: int,
    settings: tuple[float, int, int],
    train_seconds: float,
) -> ProbeReport:
    """The report on a probe trained on ``y_train`` and measured on the holdout."""
    n_classes = len(probe.classes)
    predicted = holdout_logits.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_holdout, predicted), 1)
    train_counts = np.bincount(y_train, minlength=n_classes)
    holdout_counts = confusion.sum(axis=1)
    recalls = np.diag(confusion) / np.maximum(holdout_counts, 1)
    per_class = tuple(
        ClassReport(label, int(train_counts[k]), int(holdout_counts[k]), float(recalls[k]))
        for k, label in enumerate(probe.classes)
    )
    coverage_rate, covered_accuracy = None, None
    if probe.min_confidence is not None:
        probabilities = softmax(holdout_logits, probe.temperature)
        coverage_rate, covered_accuracy = coverage(probabilities, y_holdout, probe.min_confidence)
    holdout, min_per_class, seed = settings
    return ProbeReport(
        name=probe.name,
        model_id=probe.model_id,
        dim=probe.dim,
        classes=probe.classes,
        per_class=per_class,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        skipped_classes=skipped,
        min_per_class=min_per_class,
        unlabelled_count=unlabelled_count,
        train_size=len(y_train),
        holdout_size=len(y_holdout),
        holdout_fraction=holdout,
        accuracy=probe.accuracy,
        balanced_accuracy=float(recalls.mean()),
        weight_decay=head.weight_decay,
        validation_losses=head.validation_losses,
        temperature=probe.temperature,
        holdout_nll_before=calibration[0],
        holdout_nll_after=calibration[1],
        min_confidence=probe.min_confidence,
        coverage=coverage_rate,
        covered_accuracy=covered_accuracy,
        train_seconds=train_seconds,
        seed=seed,
    )
