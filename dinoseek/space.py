"""The embedding space of a collection: which model, size and preprocessing made its vectors.

A collection records its ``EmbeddingSpace`` when it is created. Whoever opens it later with an
embedder must present a compatible space, so that vectors of two models never mix.

Model ids alone are a weak identity (``facebook/dinov2-base`` and a local copy of it are the
same model; two random-weight test models saved under the same name are not), so the space
also carries a *fingerprint*: the embedding of a fixed synthetic image. Two embedders are the
same model when their fingerprints point the same way (cosine >= ``FINGERPRINT_MIN_COSINE``),
which holds across devices and dtypes (fp32 on CPU, bf16 on CUDA) but not across weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinoseek.errors import CollectionMismatchError

FINGERPRINT_MIN_COSINE = 0.99


@dataclass(frozen=True)
class EmbeddingSpace:
    """Identity of the vectors in a collection."""

    model_id: str
    dim: int
    preprocessing: dict[str, Any] = field(compare=False)
    fingerprint: tuple[float, ...] = field(compare=False, repr=False)
    # Set for a model written by ``dinoseek adapt`` (a hash of its weights): an adapted model
    # never shares a collection with its base, however little it moved.
    adaptation: str | None = field(default=None, compare=False)

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-able dict, stored with the collection."""
        metadata: dict[str, Any] = {
            "model_id": self.model_id,
            "dim": self.dim,
            "preprocessing": self.preprocessing,
            "fingerprint": [round(v, 5) for v in self.fingerprint],
        }
        if self.adaptation is not None:
            metadata["adaptation"] = self.adaptation
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> EmbeddingSpace:
        """Inverse of ``to_metadata``."""
        return cls(
            model_id=str(metadata["model_id"]),
            dim=int(metadata["dim"]),
            preprocessing=dict(metadata.get("preprocessing") or {}),
            fingerprint=tuple(float(v) for v in metadata.get("fingerprint") or ()),
            adaptation=metadata.get("adaptation"),
        )

    def check_compatible(self, stored: EmbeddingSpace, collection: str) -> None:
        """Raise ``CollectionMismatchError`` unless vectors of ``self`` may join ``stored``."""
        remedy = (
            f"use --model {stored.model_id} (the model it was built with), "
            "or choose another --collection"
        )
        if self.dim != stored.dim:
            raise CollectionMismatchError(
                f"collection {collection!r} holds {stored.dim}-d vectors of {stored.model_id}, "
                f"but {self.model_id} makes {self.dim}-d vectors: {remedy}"
            )
        if self.preprocessing != stored.preprocessing:
            raise CollectionMismatchError(
                f"collection {collection!r} was built with other preprocessing "
                f"({stored.preprocessing}) than {self.model_id} uses ({self.preprocessing}): "
                f"{remedy}"
            )
        if self.adaptation != stored.adaptation:
            raise CollectionMismatchError(
                f"collection {collection!r} was built with {stored.model_id}, and "
                f"{self.model_id} is a different model ({_lineage(self, stored)}): {remedy}"
            )
        if self.fingerprint and stored.fingerprint:
            similarity = fingerprint_cosine(self.fingerprint, stored.fingerprint)
            if similarity < FINGERPRINT_MIN_COSINE:
                raise CollectionMismatchError(
                    f"collection {collection!r} was built with {stored.model_id}, and "
                    f"{self.model_id} is a different model (its embeddings differ; "
                    f"fingerprint cosine {similarity:.3f}): {remedy}"
                )


def _lineage(new: EmbeddingSpace, stored: EmbeddingSpace) -> str:
    if new.adaptation is None:
        return "the collection holds an adapted model's vectors"
    if stored.adaptation is None:
        return "an adaptation by dinoseek adapt"
    return "another adaptation by dinoseek adapt"


def fingerprint_cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Cosine similarity of two fingerprints (0.0 when their lengths differ)."""
    if len(a) != len(b) or not a:
        return 0.0
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb / denominator) if denominator else 0.0
