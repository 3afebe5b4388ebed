"""The linear probe itself: a calibrated classification head on stored vectors, applied,
checked against a model, and serialised to safetensors.

The calibrated probabilities are ``softmax((x @ weight.T + bias) / temperature)`` on raw
L2-normalised vectors (the training's standardisation is folded into ``weight`` and
``bias``). Training is ``dinoseek.probe.training``; temperature scaling
``dinoseek.probe.calibration``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseek.errors import ConfigError, InvalidProbeError, ProbeMismatchError
from dinoseek.labels import UNKNOWN_LABEL, PredictedLabel, check_top_k
from dinoseek.space import FINGERPRINT_MIN_COSINE, fingerprint_cosine

FORMAT_NAME = "dinoseek.linear_probe"
FORMAT_VERSION = 1


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
        check_min_confidence(self.min_confidence)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "fingerprint", tuple(float(v) for v in self.fingerprint))

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, float64 (N, C) in the order of ``classes``."""
        logits = self._logits(vectors) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True))

    def predict(self, vectors: np.ndarray, top_k: int = 5) -> list[list[PredictedLabel]]:
        """The ``top_k`` most probable labels of each vector, most probable first.

        Where ``min_confidence`` is set and a vector's top probability is below it, the probe
        abstains: that vector gets the single label ``unknown`` with the top probability.
        """
        check_top_k(top_k)
        probabilities = self.predict_proba(vectors)
        k = min(top_k, len(self.classes))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        results: list[list[PredictedLabel]] = []
        for row, indices in zip(probabilities, order, strict=True):
            top = float(row[indices[0]])
            if self.min_confidence is not None and top < self.min_confidence:
                results.append([self._label(UNKNOWN_LABEL, top)])
            else:
                results.append([self._label(self.classes[i], float(row[i])) for i in indices])
        return results

    def _label(self, label: str, probability: float) -> PredictedLabel:
        return PredictedLabel(label, round(probability, 6), "probe", self.name)

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


def check_min_confidence(min_confidence: float | None) -> None:
    """``ConfigError`` unless ``min_confidence`` is None or a probability."""
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_confidence must be between 0 and 1, got {min_confidence}")


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
