"""Probes of a collection: trained on its stored vectors, stored with it, loaded to serve.

- ``train_collection_probe`` reads the labelled points of an acquired collection (no
  re-embedding), trains a calibrated linear probe and stores it with the collection.
- ``ProbeCache`` gives the search path the probes of a collection that fit its model,
  re-reading the list every few seconds so that a probe trained meanwhile (Qdrant server mode)
  appears.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dinoseek.errors import ProbeNotFoundError
from dinoseek.probe.model import LinearProbe
from dinoseek.space import EmbeddingSpace
from dinoseek.store import ProbeStore, StoredProbe, VectorStore

if TYPE_CHECKING:  # torch: imported only to train
    from dinoseek.probe.training import ProbeTrainingResult

DEFAULT_PROBE = "default"


def labelled_vectors(
    store: VectorStore, collection: str, label_field: str = "label"
) -> tuple[np.ndarray, list[str | None]]:
    """Every point's vector (N, dim) and its label (None where unlabelled)."""
    vectors: list[np.ndarray] = []
    labels: list[str | None] = []
    for point in store.scroll(collection, with_vectors=True, batch_size=1024):
        if point.vector is None:
            continue
        vectors.append(point.vector)
        value = point.payload.get(label_field)
        labels.append(str(value) if value not in (None, "") else None)
    dim = store.collection_space(collection).dim
    matrix = np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    return matrix.astype(np.float32, copy=False), labels


def train_collection_probe(
    store: VectorStore,
    collection: str,
    *,
    name: str = DEFAULT_PROBE,
    label_field: str = "label",
    holdout: float = 0.2,
    min_per_class: int = 5,
    min_confidence: float | None = None,
    seed: int = 0,
) -> ProbeTrainingResult:
    """Train a probe on the collection's labelled points and store it under ``name``."""
    from dinoseek.probe.training import train_probe

    space = store.collection_space(collection)
    vectors, labels = labelled_vectors(store, collection, label_field)
    result = train_probe(
        vectors,
        labels,
        name=name,
        model_id=space.model_id,
        dim=space.dim,
        fingerprint=space.fingerprint,
        holdout=holdout,
        min_per_class=min_per_class,
        min_confidence=min_confidence,
        label_field=label_field,
        seed=seed,
    )
    info = {**result.probe.metadata(), "report": result.report.to_dict()}
    store.probes.save(collection, name, result.probe.to_bytes(), info)
    return result


def load_probe(
    probes: ProbeStore, collection: str, name: str, space: EmbeddingSpace
) -> LinearProbe:
    """A stored probe, refused (``ProbeMismatchError``) unless it fits ``space``."""
    probe = LinearProbe.from_bytes(probes.load(collection, name))
    probe.check_compatible(space.model_id, space.dim, space.fingerprint)
    return probe


def evaluate_probe(
    probe: LinearProbe, vectors: np.ndarray, labels: Sequence[str | None]
) -> dict[str, Any]:
    """How ``probe`` does on labelled vectors, overall and per class: ``coverage``, the share
    it answers (its top probability reaches ``min_confidence``; all without one), the
    ``accuracy`` of those answers (None when it answers none), and the accuracy it would
    have if it answered all (``accuracy_if_all_answered``). Classes the probe does not know
    count as errors."""
    rows = [i for i, label in enumerate(labels) if label is not None]
    summary: dict[str, Any] = {"min_confidence": probe.min_confidence}
    if not rows:
        return {**summary, **_scores(np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)),
                "per_class": {}, "unknown_classes": []}  # fmt: skip
    probabilities = probe.predict_proba(vectors[rows])
    truth = np.array([str(labels[i]) for i in rows], dtype=object)
    predicted = np.array(probe.classes, dtype=object)[probabilities.argmax(axis=1)]
    correct = predicted == truth
    floor = probe.min_confidence
    answered = probabilities.max(axis=1) >= floor if floor is not None else np.ones_like(correct)
    return {
        **summary,
        **_scores(answered, correct),
        "per_class": {
            label: _scores(answered[truth == label], correct[truth == label])
            for label in sorted(set(truth.tolist()))
        },
        "unknown_classes": sorted(set(truth.tolist()) - set(probe.classes)),
    }


def _scores(answered: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Points, answered, coverage, accuracy of the answers, accuracy answering all."""
    points, count = len(correct), int(answered.sum())
    return {
        "points": points,
        "answered": count,
        "coverage": round(count / points, 4) if points else None,
        "accuracy": round(float(correct[answered].mean()), 4) if count else None,
        "accuracy_if_all_answered": round(float(correct.mean()), 4) if points else None,
    }


def probe_summary(stored: StoredProbe) -> dict[str, Any]:
    """What lists of probes show of one (the CLI and ``GET /probes``): its name, classes,
    held-out accuracy, training time and size, label field, model and confidence floor."""
    info = stored.info
    return {
        "name": stored.name,
        "classes": [str(c) for c in info.get("classes", [])],
        "accuracy": info.get("accuracy"),
        "trained_at": info.get("trained_at"),
        "train_size": info.get("train_size"),
        "label_field": info.get("label_field"),
        "model_id": info.get("model_id"),
        "min_confidence": info.get("min_confidence"),
    }


def choose_probe(probes: Sequence[StoredProbe]) -> str | None:
    """The probe used when none is named: ``default`` if present, else the newest."""
    if not probes:
        return None
    names = {p.name for p in probes}
    if DEFAULT_PROBE in names:
        return DEFAULT_PROBE
    return max(probes, key=lambda p: str(p.info.get("trained_at", ""))).name


class ProbeCache:
    """The probes of each collection that fit one model, loaded once, listed every ``ttl_s``."""

    def __init__(self, probes: ProbeStore, space: EmbeddingSpace, *, ttl_s: float = 10.0) -> None:
        self.probes = probes
        self.space = space
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._listed: dict[str, tuple[float, list[StoredProbe]]] = {}
        self._loaded: dict[tuple[str, str, str], LinearProbe] = {}

    def list(self, collection: str) -> list[StoredProbe]:
        """The stored probes of ``collection`` (cached for ``ttl_s``)."""
        now = time.monotonic()
        with self._lock:
            cached = self._listed.get(collection)
            if cached is not None and now - cached[0] < self.ttl_s:
                return cached[1]
        probes = self.probes.list(collection)
        with self._lock:
            self._listed[collection] = (now, probes)
        return probes

    def get(self, collection: str, name: str | None) -> LinearProbe | None:
        """The named probe, or the default one; None when ``name`` is None and there is none.

        Raises ``ProbeNotFoundError`` for a named probe that does not exist, and
        ``ProbeMismatchError`` for one trained on another model.
        """
        probes = self.list(collection)
        chosen = name or choose_probe(probes)
        if chosen is None:
            return None
        stored = next((p for p in probes if p.name == chosen), None)
        if stored is None:
            self.invalidate(collection)
            stored = next((p for p in self.list(collection) if p.name == chosen), None)
        if stored is None:
            raise ProbeNotFoundError(
                f"no probe {chosen!r} for collection {collection!r}; see GET /probes"
            )
        key = (collection, chosen, str(stored.info.get("trained_at", "")))
        with self._lock:
            probe = self._loaded.get(key)
        if probe is None:
            probe = load_probe(self.probes, collection, chosen, self.space)
            with self._lock:
                self._loaded[key] = probe
        return probe

    def invalidate(self, collection: str) -> None:
        """Forget the cached list of ``collection``."""
        with self._lock:
            self._listed.pop(collection, None)
