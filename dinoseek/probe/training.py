"""Training a linear probe on stored, L2-normalised DINOv2 vectors and their string labels.

``train_probe`` fits a multinomial logistic-regression head in torch (full-batch L-BFGS):

1. Unlabelled vectors (label ``None``) are left out. Classes with fewer than
   ``min_per_class`` examples are left out too, and reported in ``skipped_classes``.
2. A stratified, seeded ``holdout`` fraction of every class is kept out of training
   entirely. It measures the probe (accuracy, per-class recall, confusion matrix) and
   calibrates it (``dinoseek.probe.calibration``).
3. Features are standardised with the mean and standard deviation of the training part.
   The standardisation is folded into the stored ``weight`` and ``bias`` afterwards, so a
   probe applies to raw vectors as ``x @ weight.T + bias`` and stores no extra arrays.
4. The loss is class-balanced cross-entropy (each class weighs the same, whatever its count)
   plus an L2 penalty ``weight_decay / 2 * |W|^2`` on the weights (not the bias). The
   penalty is picked from ``WEIGHT_DECAY_GRID`` by the balanced log-loss on a stratified
   validation split of the training part, strongest penalty first, each fit warm-starting
   the next, stopping once the validation loss rises. The probe is then refitted on all of
   the training part with that penalty.
5. Temperature scaling on the holdout. Class balancing means the probabilities assume
   classes that are about equally likely a priori.

Training is deterministic for a given seed on a given machine: the splits come from
``numpy``'s seeded generator, and the weights start at zero (the problem is convex). Small
problems train on one torch thread (see ``_SINGLE_THREAD_WORK``); the previous thread count
is restored afterwards.
"""

from __future__ import annotations

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

from dinoseek.errors import ConfigError, ProbeTrainingError
from dinoseek.messages import short_list
from dinoseek.probe.calibration import fit_temperature
from dinoseek.probe.model import LinearProbe, check_min_confidence
from dinoseek.probe.report import FittedHead, ProbeReport, SkippedClass, build_report

WEIGHT_DECAY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
DEFAULT_WEIGHT_DECAY = 1e-3  # used when the training part is too small for a validation split
VALIDATION_FRACTION = 0.2

_SEARCH_ITERATIONS = 60  # L-BFGS iterations per weight decay of the grid (warm-started)
_REFIT_ITERATIONS = 100  # L-BFGS iterations of the final fit (warm-started from the best)
_STD_FLOOR = 1e-6
# Below this many multiply-adds per loss evaluation (rows x dim x classes), training runs on
# one thread: torch's thread pool costs more than it saves there, and on a busy machine a
# second thread made small fits far slower.
_SINGLE_THREAD_WORK = 5e7


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
        raise ProbeTrainingError(
            _too_few_classes_message(counts, classes, min_per_class, label_field)
        )

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
    report = build_report(
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


def fit_linear_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    n_classes: int,
    *,
    seed: int = 0,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> FittedHead:
    """The head ``train_probe`` fits (same standardisation, loss and weight-decay search),
    on given rows: for evaluations that choose their own splits (``dinoseek eval``). The
    weight decay is searched on a stratified validation split when a class has two rows or
    more, else the default is used. ``statistics`` (mean, std) standardise the features
    instead of the rows' own (for a few rows per class, take them from more vectors)."""
    y = np.asarray(y_train, dtype=np.int64)
    fit_part, val_part = _stratified_split(y, VALIDATION_FRACTION, np.random.default_rng(seed))
    order = np.concatenate([fit_part, val_part])
    x = np.array(x_train, dtype=np.float32)[order]  # a copy: standardised in place
    return _fit_head(x, y[order], len(fit_part), n_classes, statistics)


def feature_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (floored) of ``x``, as the head standardises."""
    mean = x.mean(axis=0, dtype=np.float64)
    centred = np.asarray(x, dtype=np.float32) - mean.astype(np.float32)
    # Float32 sums are precise enough: any positive scale is exact once folded back.
    variance = np.einsum("ij,ij->j", centred, centred) / max(1, len(x))
    return mean, np.maximum(np.sqrt(variance.astype(np.float64)), _STD_FLOOR)


def _fit_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    n_fit: int,
    n_classes: int,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> FittedHead:
    """Standardise, pick the weight decay on the validation split, refit, fold back.

    The first ``n_fit`` rows are the fitting split, the rest the validation split (so both
    are views, not copies). ``x_train`` (float32) is standardised in place, with
    ``statistics`` (mean, std) when given, else its own.
    """
    mean, std = statistics if statistics is not None else feature_statistics(x_train)
    x_train -= mean.astype(np.float32)
    x_train /= std.astype(np.float32)
    x = torch.from_numpy(x_train)
    y = torch.from_numpy(y_train)
    threads = 1 if x.shape[0] * x.shape[1] * n_classes < _SINGLE_THREAD_WORK else None
    with _torch_threads(threads):
        w, b, weight_decay, losses = _search_and_fit(x, y, n_fit, n_classes)
    weight = w.numpy().astype(np.float64) / std
    bias = b.numpy().astype(np.float64) - weight @ mean
    return FittedHead(
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


def _accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == targets))


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
    check_min_confidence(min_confidence)


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


HOW_TO_LABEL = (
    "To label, run `dinoseek index FOLDER --labels-from-folders` (sub-folder names) or "
    "`--labels-csv FILE` (path,label rows) again: only labels are written; or label them on "
    "the search page of `dinoseek serve`"
)


def _too_few_classes_message(
    counts: Counter[str], classes: tuple[str, ...], min_per_class: int, label_field: str
) -> str:
    if not counts:
        return f"no labelled vectors to train on (none has a {label_field!r}). {HOW_TO_LABEL}"
    found = short_list(f"{label} ({count})" for label, count in counts.most_common())
    return (
        f"a probe needs at least 2 classes with {min_per_class} or more labelled examples each; "
        f"{len(classes)} of {len(counts)} qualify (examples per class: {found}). "
        f"Label more images or lower min_per_class. {HOW_TO_LABEL}"
    )
