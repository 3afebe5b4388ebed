"""Labels for vectors: a linear probe (trained) and a kNN vote (no training).

**Linear probe.** ``train_probe`` fits a multinomial logistic-regression head on stored,
L2-normalised DINOv2 vectors and their string labels, in torch (full-batch L-BFGS):

1. Unlabelled vectors (label ``None``) are left out. Classes with fewer than
   ``min_per_class`` examples are left out too, and reported in ``skipped_classes``.
2. A stratified, seeded ``holdout`` fraction of every class is kept out of training
   entirely. It measures the probe (accuracy, per-class recall, confusion matrix) and
   calibrates it.
3. Features are standardised with the mean and standard deviation of the training part.
   The standardisation is folded into the stored ``weight`` and ``bias`` afterwards, so a
   probe applies to raw vectors as ``x @ weight.T + bias`` and stores no extra arrays.
4. The loss is class-balanced cross-entropy (each class weighs the same, whatever its count)
   plus an L2 penalty ``weight_decay / 2 * |W|^2`` on the weights (not the bias). The
   penalty is picked from ``WEIGHT_DECAY_GRID`` by the balanced log-loss on a stratified
   validation split of the training part, strongest penalty first, each fit warm-starting
   the next, stopping once the validation loss rises. The probe is then refitted on all of
   the training part with that penalty.
5. Temperature scaling on the holdout (one scalar ``T > 0`` that minimises its NLL) makes
   the probabilities mean something. Class balancing means they assume classes that are
   about equally likely a priori.

Training is deterministic for a given seed on a given machine: the splits come from
``numpy``'s seeded generator, and the weights start at zero (the problem is convex). Small
problems train on one torch thread (see ``_SINGLE_THREAD_WORK``); the previous thread count
is restored afterwards.

**kNN vote.** ``knn_vote`` turns the labels of a query's nearest neighbours into label
probabilities, weighted by similarity.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)

from dinoseek.errors import (
    ConfigError,
    InvalidProbeError,
    ProbeMismatchError,
    ProbeTrainingError,
)
from dinoseek.space import FINGERPRINT_MIN_COSINE, fingerprint_cosine

UNKNOWN_LABEL = "unknown"
WEIGHT_DECAY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
DEFAULT_WEIGHT_DECAY = 1e-3  # used when the training part is too small for a validation split
VALIDATION_FRACTION = 0.2
TEMPERATURE_BOUNDS = (0.05, 20.0)  # a holdout without errors drives T to the lower bound
MAX_CONFUSION_TABLE_CLASSES = 20
FORMAT_NAME = "dinoseek.linear_probe"
FORMAT_VERSION = 1

_SEARCH_ITERATIONS = 60  # L-BFGS iterations per weight decay of the grid (warm-started)
_REFIT_ITERATIONS = 100  # L-BFGS iterations of the final fit (warm-started from the best)
_GOLDEN_SECTION_STEPS = 50  # of the temperature search: shrinks its interval 2e10-fold
_STD_FLOOR = 1e-6
# Below this many multiply-adds per loss evaluation (rows x dim x classes), training runs on
# one thread: torch's thread pool costs more than it saves there, and on a busy machine a
# second thread made a 10-class, 500-vector fit 10x slower.
_SINGLE_THREAD_WORK = 5e7


@dataclass(frozen=True)
class LabelScore:
    """One predicted label and its probability."""

    label: str
    probability: float


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """A calibrated linear classification head on raw (L2-normalised) vectors.

    ``weight`` (C, dim) and ``bias`` (C,) are float32 and read-only; the calibrated
    probabilities are ``softmax((x @ weight.T + bias) / temperature)``. ``fingerprint`` is the
    fingerprint of the collection's embedding space (``EmbeddingSpace.fingerprint``), empty
    when unknown.
    """

    classes: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray
    temperature: float
    name: str
    model_id: str
    dim: int
    accuracy: float
    trained_at: str
    train_size: int
    label_field: str = "label"
    min_confidence: float | None = None
    fingerprint: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        weight = _readonly_float32(self.weight)
        bias = _readonly_float32(self.bias)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise InvalidProbeError(f"a probe needs 2 or more distinct classes, got {self.classes}")
        if weight.shape != (len(self.classes), self.dim) or bias.shape != (len(self.classes),):
            raise InvalidProbeError(
                f"probe arrays do not fit {len(self.classes)} classes of {self.dim}-d vectors: "
                f"weight {weight.shape}, bias {bias.shape}"
            )
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise InvalidProbeError("probe weights are not all finite")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidProbeError(f"probe temperature must be > 0, got {self.temperature}")
        _check_min_confidence(self.min_confidence)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "fingerprint", tuple(float(v) for v in self.fingerprint))

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, float64 (N, C) in the order of ``classes``."""
        logits = self._logits(vectors) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))

    def predict(self, vectors: np.ndarray, top_k: int = 5) -> list[list[LabelScore]]:
        """The ``top_k`` most probable labels of each vector, most probable first.

        Where ``min_confidence`` is set and a vector's top probability is below it, the probe
        abstains: that vector gets the single entry ``LabelScore("unknown", top probability)``.
        """
        _check_top_k(top_k)
        probabilities = self.predict_proba(vectors)
        k = min(top_k, len(self.classes))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        results: list[list[LabelScore]] = []
        for row, indices in zip(probabilities, order, strict=True):
            top = float(row[indices[0]])
            if self.min_confidence is not None and top < self.min_confidence:
                results.append([LabelScore(UNKNOWN_LABEL, top)])
            else:
                results.append([LabelScore(self.classes[i], float(row[i])) for i in indices])
        return results

    def check_compatible(self, model_id: str, dim: int, fingerprint: Sequence[float] = ()) -> None:
        """Raise ``ProbeMismatchError`` unless vectors of this model may go through the probe.

        The dimensions must match. When both the probe and the caller have a fingerprint,
        the fingerprints decide (cosine >= ``FINGERPRINT_MIN_COSINE``), so a local copy of
        the probe's model is accepted and other weights under the same id are not; without
        fingerprints, the model ids must match.
        """
        remedy = f"retrain probe {self.name!r} on this collection"
        if dim != self.dim:
            raise ProbeMismatchError(
                f"probe {self.name!r} was trained on {self.dim}-d vectors of {self.model_id}, "
                f"but {model_id} makes {dim}-d vectors: {remedy}"
            )
        theirs = tuple(float(v) for v in fingerprint)
        if self.fingerprint and theirs:
            similarity = fingerprint_cosine(self.fingerprint, theirs)
            if similarity < FINGERPRINT_MIN_COSINE:
                raise ProbeMismatchError(
                    f"probe {self.name!r} was trained on vectors of {self.model_id}, and "
                    f"{model_id} is a different model (fingerprint cosine {similarity:.3f}): "
                    f"{remedy}"
                )
        elif model_id != self.model_id:
            raise ProbeMismatchError(
                f"probe {self.name!r} was trained on vectors of {self.model_id}, not of "
                f"{model_id}: {remedy}"
            )

    def metadata(self) -> dict[str, Any]:
        """The probe's description without its arrays, JSON-able."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "classes": list(self.classes),
            "temperature": self.temperature,
            "accuracy": self.accuracy,
            "trained_at": self.trained_at,
            "train_size": self.train_size,
            "label_field": self.label_field,
            "min_confidence": self.min_confidence,
            "fingerprint": list(self.fingerprint),
        }

    def to_bytes(self) -> bytes:
        """Serialise to safetensors: the arrays, and ``metadata()`` as JSON-encoded strings."""
        from safetensors.numpy import save

        metadata = {key: json.dumps(value) for key, value in self.metadata().items()}
        data: bytes = save({"weight": self.weight, "bias": self.bias}, metadata=metadata)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearProbe:
        """Inverse of ``to_bytes``. Raises ``InvalidProbeError`` on malformed data."""
        arrays = _load_arrays(data)
        metadata = _decode_metadata(_safetensors_metadata(data))
        if metadata.get("format") != FORMAT_NAME or metadata.get("version") != FORMAT_VERSION:
            raise InvalidProbeError(
                f"not a dinoseek probe of format version {FORMAT_VERSION} "
                f"(format {metadata.get('format')!r}, version {metadata.get('version')!r})"
            )
        try:
            min_confidence = metadata["min_confidence"]
            return cls(
                classes=tuple(_expect(str, label) for label in _expect(list, metadata["classes"])),
                weight=arrays["weight"],
                bias=arrays["bias"],
                temperature=_number(metadata["temperature"]),
                name=_expect(str, metadata["name"]),
                model_id=_expect(str, metadata["model_id"]),
                dim=_expect(int, metadata["dim"]),
                accuracy=_number(metadata["accuracy"]),
                trained_at=_expect(str, metadata["trained_at"]),
                train_size=_expect(int, metadata["train_size"]),
                label_field=_expect(str, metadata["label_field"]),
                min_confidence=None if min_confidence is None else _number(min_confidence),
                fingerprint=tuple(_number(v) for v in _expect(list, metadata["fingerprint"])),
            )
        except (KeyError, TypeError, ConfigError) as exc:
            raise InvalidProbeError(f"malformed probe metadata: {exc!r}") from None

    def _logits(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ProbeMismatchError(
                f"probe {self.name!r} takes {self.dim}-d vectors (N, {self.dim}), "
                f"got an array of shape {x.shape}"
            )
        logits = x.astype(np.float32, copy=False) @ self.weight.T + self.bias
        return np.asarray(logits, dtype=np.float64)


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

    def render(self) -> str:
        """A readable text report: summary, per-class table and confusion (matrix or pairs)."""
        lines = [
            f"probe {self.name!r} on {self.model_id} ({self.dim}-d vectors)",
            f"  classes: {len(self.classes)}, trained on {self.train_size} vectors, "
            f"held out {self.holdout_size} ({self.holdout_fraction:.0%} of each class), "
            f"in {self.train_seconds:.2f} s",
            f"  regularisation: weight decay {self.weight_decay:g}"
            + _render_validation(self.validation_losses),
            f"  holdout accuracy: {self.accuracy:.1%} (balanced {self.balanced_accuracy:.1%})",
            f"  holdout log-loss: {self.holdout_nll_before:.4f} before calibration, "
            f"{self.holdout_nll_after:.4f} after (temperature {self.temperature:.3g}"
            f"{_temperature_note(self.temperature)})",
        ]
        if self.min_confidence is not None and self.coverage is not None:
            covered = "n/a" if self.covered_accuracy is None else f"{self.covered_accuracy:.1%}"
            lines.append(
                f"  min confidence {self.min_confidence:g}: {self.coverage:.1%} of the holdout "
                f"is labelled, {covered} of it correctly; the rest is {UNKNOWN_LABEL!r}"
            )
        if self.unlabelled_count:
            lines.append(f"  unlabelled vectors left out: {self.unlabelled_count}")
        if self.skipped_classes:
            skipped = ", ".join(f"{entry.label} ({entry.count})" for entry in self.skipped_classes)
            lines.append(f"  skipped classes (fewer than {self.min_per_class} examples): {skipped}")
        lines += ["", *self._render_per_class(), "", *self._render_confusion()]
        return "\n".join(lines)

    def _render_per_class(self) -> list[str]:
        entries = list(self.per_class)
        lines = []
        if len(entries) > MAX_CONFUSION_TABLE_CLASSES:
            entries = sorted(entries, key=lambda entry: entry.accuracy)
            entries = entries[:MAX_CONFUSION_TABLE_CLASSES]
            lines.append(
                f"the {len(entries)} classes of {len(self.per_class)} with the lowest holdout "
                "accuracy (the JSON report has them all):"
            )
        width = max(5, *(len(entry.label) for entry in entries))
        lines.append(f"{'class':<{width}}  {'train':>6}  {'holdout':>7}  {'accuracy':>8}")
        lines += [
            f"{entry.label:<{width}}  {entry.train_count:>6}  {entry.holdout_count:>7}  "
            f"{entry.accuracy:>8.1%}"
            for entry in entries
        ]
        return lines

    def _render_confusion(self) -> list[str]:
        if len(self.classes) > MAX_CONFUSION_TABLE_CLASSES:
            pairs = self.most_confused()
            if not pairs:
                return ["no confusions on the holdout"]
            lines = ["most confused (true -> predicted: holdout examples):"]
            lines += [
                f"  {pair.true} -> {pair.predicted}: {pair.count} ({pair.fraction:.0%})"
                for pair in pairs
            ]
            return lines
        names = [_shorten(label, 16) for label in self.classes]
        name_width = max(len(name) for name in names) + 5
        cell = max(3, *(len(str(count)) for row in self.confusion for count in row)) + 1
        header = "true \\ predicted".ljust(name_width) + "".join(
            f"{index:>{cell}}" for index in range(len(self.classes))
        )
        lines = ["confusion matrix (rows: true class, columns: predicted class):", header]
        for index, (name, row) in enumerate(zip(names, self.confusion, strict=True)):
            label = f"{index:>2} {name}".ljust(name_width)
            lines.append(label + "".join(f"{count:>{cell}}" for count in row))
        return lines


@dataclass(frozen=True)
class ProbeTrainingResult:
    """A trained probe and the report on its training."""

    probe: LinearProbe
    report: ProbeReport


def train_probe(
    vectors: np.ndarray,
    labels: Sequence[str | None],
    *,
    name: str,
    model_id: str,
    dim: int | None = None,
    fingerprint: Sequence[float] | None = None,
    holdout: float = 0.2,
    min_per_class: int = 5,
    min_confidence: float | None = None,
    label_field: str = "label",
    seed: int = 0,
) -> ProbeTrainingResult:
    """Train, evaluate and calibrate a linear probe on ``vectors`` (N, dim) and ``labels``.

    ``labels[i]`` is the label of ``vectors[i]``, or ``None`` for an unlabelled vector (left
    out and counted). Raises ``ProbeTrainingError`` for empty or mismatched input, non-finite
    vectors, or fewer than 2 classes with ``min_per_class`` examples; ``ConfigError`` for
    invalid ``holdout``, ``min_per_class`` or ``min_confidence``.
    """
    started = time.perf_counter()
    _check_training_arguments(holdout, min_per_class, min_confidence)
    x_all = _training_matrix(vectors, labels, dim)
    labelled = [i for i, label in enumerate(labels) if label is not None]
    text_labels = [_training_label(labels[i], i) for i in labelled]
    counts = Counter(text_labels)
    classes = tuple(sorted(label for label, count in counts.items() if count >= min_per_class))
    skipped = tuple(
        SkippedClass(label, count)
        for label, count in sorted(counts.items())
        if count < min_per_class
    )
    if len(classes) < 2:
        raise ProbeTrainingError(_too_few_classes_message(counts, classes, min_per_class))

    index_of = {label: k for k, label in enumerate(classes)}
    keep = [
        (row, index_of[label])
        for row, label in zip(labelled, text_labels, strict=True)
        if label in index_of
    ]
    rows = np.array([row for row, _ in keep], dtype=np.int64)
    y = np.array([k for _, k in keep], dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_rows, holdout_rows = _stratified_split(y, holdout, rng)
    fit_part, val_part = _stratified_split(y[train_rows], VALIDATION_FRACTION, rng)
    train_rows = train_rows[np.concatenate([fit_part, val_part])]  # the fitting split first

    # Indexing gathers a copy of the training vectors, which _fit_head standardises in place.
    head = _fit_head(x_all[rows[train_rows]], y[train_rows], len(fit_part), len(classes))
    holdout_x = x_all[rows[holdout_rows]]
    holdout_logits = np.asarray(holdout_x @ head.weight.T + head.bias, dtype=np.float64)
    temperature, nll_before, nll_after = fit_temperature(holdout_logits, y[holdout_rows])
    probe = LinearProbe(
        classes=classes,
        weight=head.weight,
        bias=head.bias,
        temperature=temperature,
        name=name,
        model_id=model_id,
        dim=x_all.shape[1],
        accuracy=_accuracy(holdout_logits, y[holdout_rows]),
        trained_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        train_size=len(train_rows),
        label_field=label_field,
        min_confidence=min_confidence,
        fingerprint=tuple(fingerprint or ()),
    )
    report = _report(
        probe,
        head,
        y_train=y[train_rows],
        y_holdout=y[holdout_rows],
        holdout_logits=holdout_logits,
        calibration=(nll_before, nll_after),
        skipped=skipped,
        unlabelled_count=len(labels) - len(labelled),
        settings=(holdout, min_per_class, seed),
        train_seconds=time.perf_counter() - started,
    )
    return ProbeTrainingResult(probe=probe, report=report)


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
    fc, fd = _nll(logits, targets, math.exp(c)), _nll(logits, targets, math.exp(d))
    for _ in range(_GOLDEN_SECTION_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, targets, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, targets, math.exp(d))
    best_t, best_nll = (math.exp(c), fc) if fc <= fd else (math.exp(d), fd)
    before = _nll(logits, targets, 1.0)
    if best_nll >= before:
        return 1.0, before, before
    return best_t, before, best_nll


def knn_vote(
    neighbour_labels: Sequence[str | None], scores: Sequence[float], top_k: int = 5
) -> list[LabelScore]:
    """Label probabilities from a similarity-weighted vote of a query's neighbours.

    Each labelled neighbour votes for its label with weight ``max(score, 0)`` (a non-finite
    score counts 0); unlabelled ones (``None``) do not vote. The probabilities sum to 1 over
    all labels voted for, and the ``top_k`` most probable come back, ties in the order of
    the neighbours. Should every labelled neighbour have weight 0, each counts 1 instead.
    Empty when no neighbour has a label.
    """
    _check_top_k(top_k)
    if len(neighbour_labels) != len(scores):
        raise ValueError(f"{len(neighbour_labels)} labels but {len(scores)} scores")
    votes: dict[str, float] = {}
    counts: dict[str, int] = {}
    for label, score in zip(neighbour_labels, scores, strict=True):
        if label is None:
            continue
        weight = float(score) if math.isfinite(score) and score > 0 else 0.0
        votes[label] = votes.get(label, 0.0) + weight
        counts[label] = counts.get(label, 0) + 1
    if not votes:
        return []
    total = sum(votes.values())
    if total <= 0:
        votes, total = (
            {label: float(count) for label, count in counts.items()},
            sum(counts.values()),
        )
    ranked = sorted(votes.items(), key=lambda item: -item[1])  # stable: ties keep first-seen
    return [LabelScore(label, weight / total) for label, weight in ranked[:top_k]]


# --- training internals ------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    """A fitted head in raw-vector space, and how its weight decay was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    weight_decay: float
    validation_losses: tuple[tuple[float, float], ...]


def _fit_head(x_train: np.ndarray, y_train: np.ndarray, n_fit: int, n_classes: int) -> _Head:
    """Standardise, pick the weight decay on the validation split, refit, fold back.

    The first ``n_fit`` rows are the fitting split, the rest the validation split (so both
    are views, not copies). ``x_train`` (float32) is standardised in place.
    """
    mean = x_train.mean(axis=0, dtype=np.float64)
    x_train -= mean.astype(np.float32)
    # Float32 sums are precise enough: any positive scale is exact once folded back.
    variance = np.einsum("ij,ij->j", x_train, x_train) / max(1, len(x_train))
    std = np.maximum(np.sqrt(variance.astype(np.float64)), _STD_FLOOR)
    x_train /= std.astype(np.float32)
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    threads = 1 if x.shape[0] * x.shape[1] * n_classes < _SINGLE_THREAD_WORK else None
    with _torch_threads(threads):
        w, b, weight_decay, losses = _search_and_fit(x, y, n_fit, n_classes)
    weight = w.numpy().astype(np.float64) / std
    bias = b.numpy().astype(np.float64) - weight @ mean
    return _Head(
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        weight_decay=weight_decay,
        validation_losses=tuple(losses),
    )


def _search_and_fit(
    x: torch.Tensor,
    y: torch.Tensor,
    n_fit: int,
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, float, list[tuple[float, float]]]:
    """Pick the weight decay on the validation split, then fit on all rows with it."""
    params: tuple[torch.Tensor, torch.Tensor] | None = None
    losses: list[tuple[float, float]] = []
    best: tuple[float, float, tuple[torch.Tensor, torch.Tensor] | None] = (
        math.inf,
        DEFAULT_WEIGHT_DECAY,
        None,
    )
    if n_fit < len(x) and len(torch.unique(y[:n_fit])) == n_classes:
        x_fit, y_fit, x_val, y_val = x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]
        for decay in WEIGHT_DECAY_GRID:  # strongest first: each fit warm-starts the next
            params = _fit_softmax(x_fit, y_fit, n_classes, decay, params, _SEARCH_ITERATIONS)
            loss = _balanced_nll(x_val, y_val, params, n_classes)
            losses.append((decay, loss))
            if loss >= best[0]:
                break  # past the minimum (assuming the loss is unimodal along the path)
            best = (loss, decay, params)
    weight_decay, start = best[1], best[2]
    w, b = _fit_softmax(x, y, n_classes, weight_decay, start, _REFIT_ITERATIONS)
    return w, b, weight_decay, losses


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with at most ``count`` torch threads (unchanged for ``None``)."""
    previous = torch.get_num_threads()
    if count is None or count >= previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_softmax(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    weight_decay: float,
    start: tuple[torch.Tensor, torch.Tensor] | None,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression with an L2 penalty, full-batch L-BFGS."""
    counts = torch.bincount(y, minlength=n_classes).clamp(min=1).to(torch.float32)
    class_weight = 1.0 / counts
    if start is None:
        w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
    else:
        w = start[0].clone().requires_grad_(True)
        b = start[1].clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=1e-5,  # on the largest gradient entry of a mean loss
        tolerance_change=1e-6,  # tighter ones took twice the steps for the same probe
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.addmm(b, x, w.T)
        loss = F.cross_entropy(logits, y, weight=class_weight)
        loss = loss + 0.5 * weight_decay * w.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def _balanced_nll(
    x: torch.Tensor, y: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor], n_classes: int
) -> float:
    """Mean over the classes present of their mean log-loss."""
    with torch.no_grad():
        losses = F.cross_entropy(torch.addmm(params[1], x, params[0].T), y, reduction="none")
        sums = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, y, losses.double())
        counts = torch.bincount(y, minlength=n_classes).double()
        present = counts > 0
        return float((sums[present] / counts[present]).mean())


def _stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (kept, split off): ``fraction`` of each class, at least 1 and at most
    all but 1 of it (none of a class with a single row)."""
    kept: list[np.ndarray] = []
    split: list[np.ndarray] = []
    for k in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == k))
        n = 0 if len(rows) < 2 else min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        split.append(rows[:n])
        kept.append(rows[n:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(split))


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    peak = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - peak).sum(axis=1)) + peak[:, 0]
    return float(np.mean(log_norm - scaled[np.arange(len(targets)), targets]))


def _accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == targets))


def _report(
    probe: LinearProbe,
    head: _Head,
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
    coverage, covered_accuracy = _coverage(probe, holdout_logits, y_holdout)
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
        coverage=coverage,
        covered_accuracy=covered_accuracy,
        train_seconds=train_seconds,
        seed=seed,
    )


def _coverage(
    probe: LinearProbe, logits: np.ndarray, targets: np.ndarray
) -> tuple[float | None, float | None]:
    """Fraction of rows at or above ``min_confidence``, and the accuracy on them."""
    if probe.min_confidence is None:
        return None, None
    scaled = logits / probe.temperature
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    top = exp.max(axis=1) / exp.sum(axis=1)
    covered = top >= probe.min_confidence
    if not covered.any():
        return 0.0, None
    return float(covered.mean()), _accuracy(logits[covered], targets[covered])


# --- validation --------------------------------------------------------------------------


def _check_training_arguments(
    holdout: float, min_per_class: int, min_confidence: float | None
) -> None:
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must be a fraction between 0 and 1, got {holdout}")
    if min_per_class < 2:
        raise ConfigError(
            "min_per_class must be at least 2 (one training and one holdout example), "
            f"got {min_per_class}"
        )
    _check_min_confidence(min_confidence)


def _check_min_confidence(min_confidence: float | None) -> None:
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_confidence must be between 0 and 1, got {min_confidence}")


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")


def _training_matrix(vectors: np.ndarray, labels: Sequence[str | None], dim: int | None) -> Any:
    """``vectors`` as a float32 (N, dim) array, after checking it against ``labels``."""
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ProbeTrainingError(f"vectors must be a 2-d array (N, dim), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ProbeTrainingError(f"no vectors to train on (shape {x.shape})")
    if x.shape[0] != len(labels):
        raise ProbeTrainingError(f"{x.shape[0]} vectors but {len(labels)} labels")
    if dim is not None and x.shape[1] != dim:
        raise ProbeTrainingError(f"expected {dim}-d vectors, got {x.shape[1]}-d")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ProbeTrainingError(f"vectors must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ProbeTrainingError(
            f"{len(bad)} vector(s) are not finite (NaN or infinity), first at row {bad[0]}"
        )
    return x


def _training_label(label: str | None, row: int) -> str:
    if not isinstance(label, str):
        raise ProbeTrainingError(f"label of row {row} is {label!r}, not a string")
    return label


def _too_few_classes_message(
    counts: Counter[str], classes: tuple[str, ...], min_per_class: int
) -> str:
    if not counts:
        return "no labelled vectors to train on"
    found = ", ".join(f"{label} ({count})" for label, count in sorted(counts.items()))
    return (
        f"a probe needs at least 2 classes with {min_per_class} or more labelled examples each; "
        f"{len(classes)} of {len(counts)} qualify (examples per class: {found}). "
        "Label more images or lower min_per_class"
    )


# --- serialisation internals -------------------------------------------------------------


def _load_arrays(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        arrays: dict[str, np.ndarray] = load(bytes(data))
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own, untyped errors)
        raise InvalidProbeError(f"not a safetensors probe: {exc}") from None
    if set(arrays) != {"weight", "bias"}:
        raise InvalidProbeError(f"probe tensors must be weight and bias, got {sorted(arrays)}")
    return arrays


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (which ``load`` has already validated)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise InvalidProbeError("probe data has no metadata")
    return metadata


def _decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    try:
        return {key: json.loads(value) for key, value in raw.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidProbeError(f"probe metadata is not JSON: {exc}") from None


def _expect(kind: type[Any] | tuple[type[Any], ...], value: Any) -> Any:
    """``value`` if it is of ``kind`` (never a bool), else ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"unexpected {type(value).__name__} {value!r}")
    return value


def _number(value: Any) -> float:
    """``value`` as a float if it is an int or a float (never a bool), else ``TypeError``."""
    return float(_expect((int, float), value))


def _readonly_float32(array: np.ndarray) -> np.ndarray:
    result = np.array(array, dtype=np.float32, copy=True)
    result.flags.writeable = False
    return result


def _render_validation(losses: tuple[tuple[float, float], ...]) -> str:
    if not losses:
        return " (default: too few examples for a validation split)"
    tried = ", ".join(f"{decay:g}: {loss:.4f}" for decay, loss in losses)
    return f" (validation log-loss {tried})"


def _temperature_note(temperature: float) -> str:
    if math.isclose(temperature, TEMPERATURE_BOUNDS[0], rel_tol=1e-3):
        return ", the lowest allowed: the holdout has too few errors to calibrate on"
    if math.isclose(temperature, TEMPERATURE_BOUNDS[1], rel_tol=1e-3):
        return ", the highest allowed"
    return ""


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
