"""A numpy-only stand-in for DINOv2, for tests and demos that are not about the model.

``FakeEmbedder`` implements ``ImageEmbedder`` without torch or transformers: it starts
instantly and embeds thousands of images a second on one core. Its vector of an image is a
fixed random projection (seeded) of the image's pixels average-pooled to a small grid, then
L2-normalised:

- deterministic: the same pixels give the same vector, in any process;
- content-sensitive: different images give different vectors, and similar images (a
  re-encoded copy, a slight resize) give close ones;
- a different ``seed`` is a different model (its fingerprint differs), so the collection's
  model checks behave as with real weights.

It is not DINOv2: its neighbours mean "similar colours in similar places", nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import cached_property
from typing import Any

import numpy as np

from dinoseek.embedder_protocol import (
    PatchEmbeddings,
    Pixels,
    PooledOrError,
    VectorOrError,
    check_pooling,
    fingerprint_pixels,
    non_finite_rows,
    pooled_or_error,
)
from dinoseek.errors import EmbeddingError
from dinoseek.preprocessing import DINOV2_PREPROCESSING, Preprocessing
from dinoseek.space import EmbeddingSpace

POOL = 8  # the image is pooled to POOL x POOL cells before the projection
PATCH = 14


class FakeEmbedder:
    """A deterministic, content-sensitive ``ImageEmbedder`` in numpy (see the module doc)."""

    def __init__(
        self,
        *,
        dim: int = 32,
        seed: int = 0,
        model_id: str = "fake/embedder",
        preprocessing: Preprocessing = DINOV2_PREPROCESSING,
    ) -> None:
        self.model_id = model_id
        self.dim = dim
        self.seed = seed
        self.preprocessing = preprocessing
        self.compile_mode = "off"
        rng = np.random.default_rng(seed)
        self._projection = rng.standard_normal((POOL * POOL * 3, dim)).astype(np.float32)
        self._patch_projection = rng.standard_normal((3, dim)).astype(np.float32)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-model")

    @property
    def executor(self) -> Executor:
        """A thread of its own, as the real embedder has."""
        return self._thread

    @property
    def device(self) -> str:
        """Always the CPU."""
        return "cpu"

    @property
    def device_type(self) -> str:
        """Always ``cpu``."""
        return "cpu"

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.preprocessing.output_size

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns): one token per 14-pixel patch of the input."""
        height, width = self.input_size
        return height // PATCH, width // PATCH

    @cached_property
    def space(self) -> EmbeddingSpace:
        """The embedding space, fingerprinted like a real model's."""
        fingerprint = self.embed_pixels(fingerprint_pixels(self.input_size)[None])[0]
        return EmbeddingSpace(
            model_id=self.model_id,
            dim=self.dim,
            preprocessing=self.preprocessing.describe(),
            fingerprint=tuple(float(v) for v in fingerprint),
        )

    def describe(self) -> dict[str, Any]:
        """Model id, dim, device, dtype and preprocessing."""
        return {
            "model_id": self.model_id,
            "dim": self.dim,
            "device": "cpu",
            "dtype": "float32",
            "preprocessing": self.preprocessing.describe(),
        }

    def default_batch_size(self) -> int:
        """As the real embedder on a CPU."""
        return 16

    def embed_pixels(self, pixels: Pixels) -> np.ndarray:
        """Pooled pixels through a fixed projection, L2-normalised, float32 (N, dim)."""
        batch = _check_pixels(pixels)
        features = _pool(batch, POOL).reshape(len(batch), -1)
        vectors = (features - 0.5) @ self._projection
        bad = non_finite_rows(vectors)
        if bad:
            raise EmbeddingError(f"{self.model_id} produced non-finite embeddings for rows {bad}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        """One vector per image (nothing here runs out of memory)."""
        return list(self.embed_pixels(pixels))

    def embed_with_patches(self, pixels: Pixels) -> PatchEmbeddings:
        """CLS vectors, and one token per 14-pixel patch (its mean colour, projected)."""
        batch = _check_pixels(pixels)
        height, width = batch.shape[1] // PATCH, batch.shape[2] // PATCH
        cropped = batch[:, : height * PATCH, : width * PATCH]
        means = cropped.reshape(len(batch), height, PATCH, width, PATCH, 3).mean(axis=(2, 4))
        tokens = (means.reshape(len(batch), height * width, 3) / 255.0 - 0.5) @ (
            self._patch_projection
        )
        return PatchEmbeddings(
            cls=self.embed_pixels(batch),
            patch_tokens=tokens.astype(np.float32),
            grid=(height, width),
        )

    def embed_each_pooled(self, pixels: Pixels, pooling: np.ndarray) -> list[PooledOrError]:
        """CLS vectors, and the patch tokens of ``embed_with_patches`` pooled by
        ``pooling``."""
        matrix = check_pooling(pooling, self.patch_grid)
        embedded = self.embed_with_patches(pixels)
        pooled = np.einsum("rp,npd->nrd", matrix, embedded.patch_tokens)
        return pooled_or_error(self.model_id, embedded.cls, pooled)

    def stack(self, pixels: Sequence[Pixels]) -> Pixels:
        """``np.stack``."""
        return np.stack(pixels)

    def compile(self, mode: str = "default", *, max_batch: int | None = None) -> None:
        """Nothing to compile; remembers the mode."""
        self.compile_mode = mode

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Nothing to warm up."""

    def close(self) -> None:
        """Stop its thread."""
        self._thread.shutdown(wait=True)


def _check_pixels(pixels: Pixels) -> np.ndarray:
    batch = np.asarray(pixels)
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels (N, H, W, 3), got {batch.shape}")
    return batch


def _pool(batch: np.ndarray, cells: int) -> np.ndarray:
    """Mean of each of ``cells`` x ``cells`` regions, scaled to [0, 1]: (N, cells, cells, 3)."""
    _, height, width, _ = batch.shape
    rows = np.linspace(0, height, cells + 1).astype(int)
    columns = np.linspace(0, width, cells + 1).astype(int)
    by_rows = np.add.reduceat(batch, rows[:-1], axis=1, dtype=np.float64)
    summed = np.add.reduceat(by_rows, columns[:-1], axis=2)
    areas = np.outer(np.diff(rows), np.diff(columns))[None, :, :, None]
    return np.asarray(summed / areas / 255.0, dtype=np.float32)
