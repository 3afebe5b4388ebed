"""What dinoseek needs from an image embedder, without importing torch.

``ImageEmbedder`` is the interface that the runtime, the search path, the indexer and the
service use. ``dinoseek.torch_embedder.Embedder`` (DINOv2 through transformers and torch) is
the real one; ``dinoseek.fake_embedder.FakeEmbedder`` (numpy only) stands in where a test is
not about the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from dinoseek.errors import EmbeddingError
from dinoseek.preprocessing import Preprocessing
from dinoseek.space import EmbeddingSpace

# Model-ready uint8 pixels (N, H, W, 3): a numpy array on the host, or a tensor already on the
# model's device (GPU decoding). Typed loosely so that this module needs no torch.
Pixels = Any

# One image's vector (dim,), or the reason it could not be embedded.
VectorOrError = np.ndarray | EmbeddingError

# The default batch (images per forward pass), by device: the embedder picks it, help texts
# say it. On a GPU with LARGE_GPU_BYTES of memory or more, the large one.
CPU_BATCH_SIZE = 16
GPU_BATCH_SIZE = 128
LARGE_GPU_BATCH_SIZE = 256
LARGE_GPU_BYTES = 40 * 1024**3


@dataclass(frozen=True)
class PatchEmbeddings:
    """CLS vectors (N, dim), L2-normalised, and raw patch tokens (N, rows * columns, dim);
    ``grid`` is (rows, columns) of the patch grid."""

    cls: np.ndarray
    patch_tokens: np.ndarray
    grid: tuple[int, int]


@dataclass(frozen=True)
class PooledEmbedding:
    """One image's CLS vector (dim,) and its patch tokens pooled by the rows of a pooling
    matrix (rows, dim), every vector L2-normalised, from one forward pass."""

    cls: np.ndarray
    pooled: np.ndarray


# One image's pooled embedding, or the reason it could not be embedded.
PooledOrError = PooledEmbedding | EmbeddingError

Item = TypeVar("Item")
Result = TypeVar("Result")


def split_embedded(
    items: Sequence[Item], results: Sequence[Result | EmbeddingError]
) -> tuple[list[tuple[Item, Result]], list[tuple[Item, EmbeddingError]]]:
    """Pair each item with its result from ``embed_each`` or ``embed_each_pooled`` (in
    order): those that were embedded, and those with the reason they were not."""
    embedded: list[tuple[Item, Result]] = []
    failed: list[tuple[Item, EmbeddingError]] = []
    for item, result in zip(items, results, strict=True):
        if isinstance(result, EmbeddingError):
            failed.append((item, result))
        else:
            embedded.append((item, result))
    return embedded, failed


@runtime_checkable
class ImageEmbedder(Protocol):
    """A frozen image model on one device, turning preprocessed pixels into unit vectors."""

    model_id: str
    dim: int
    preprocessing: Preprocessing
    compile_mode: str

    @property
    def executor(self) -> Executor:
        """The model's own thread. Work submitted here (``embed_each``, ...) runs there
        directly, with no further hop; an async caller awaits it with ``run_in_executor``."""
        ...

    @property
    def device(self) -> str:
        """Where the model runs, e.g. ``cpu`` or ``cuda:0``."""
        ...

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``."""
        ...

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        ...

    @property
    def space(self) -> EmbeddingSpace:
        """The embedding space of this model, with its fingerprint."""
        ...

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch tokens of one model input."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model id, dim, device, dtype and preprocessing, for logs and ``info``."""
        ...

    def default_batch_size(self) -> int:
        """A batch size that keeps the device busy without exhausting its memory."""
        ...

    def embed_pixels(self, pixels: Pixels) -> np.ndarray:
        """Float32 (N, dim) L2-normalised vectors of (N, H, W, 3) uint8 pixels, in one pass.
        Raises ``EmbeddingError`` if any output is not finite."""
        ...

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        """A vector or an ``EmbeddingError`` per image: a batch that runs out of memory is
        split and retried; an image that cannot be embedded gets its error alone."""
        ...

    def embed_with_patches(self, pixels: Pixels) -> PatchEmbeddings:
        """Like ``embed_pixels``, plus the raw patch tokens."""
        ...

    def embed_each_pooled(self, pixels: Pixels, pooling: np.ndarray) -> list[PooledOrError]:
        """Per image, its CLS vector and its patch tokens pooled by ``pooling`` (float32,
        (rows, patches): each row weighs the ``patch_grid`` patches in row-major order), or
        its ``EmbeddingError``; a batch that runs out of memory is split as in
        ``embed_each``. The pooling runs where the model does: only (rows, dim) per image
        leaves the device."""
        ...

    def stack(self, pixels: Sequence[Pixels]) -> Pixels:
        """One (N, H, W, 3) batch from single images (host arrays or device tensors)."""
        ...

    def compile(self, mode: str = "default", *, max_batch: int | None = None) -> None:
        """Compile the model (``off`` does nothing)."""
        ...

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run each batch size once (compiles, captures graphs, fills caches)."""
        ...

    def close(self) -> None:
        """Stop the model's thread once the work submitted to it is done."""
        ...


def fingerprint_pixels(size: tuple[int, int]) -> np.ndarray:
    """A fixed, structured synthetic image (uint8, H x W x 3) whose embedding identifies a model."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 127.5 + 127.5 * np.sin(x / 9.0) * np.cos(y / 13.0)
    green = 255.0 * (x + y) / (height + width)
    blue = np.where(((x // 28) + (y // 28)) % 2 == 0, 230.0, 25.0)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def check_pooling(pooling: np.ndarray, patch_grid: tuple[int, int]) -> np.ndarray:
    """``pooling`` as float32 (rows, rows * columns of ``patch_grid``), or ``ValueError``."""
    matrix = np.asarray(pooling, dtype=np.float32)
    patches = patch_grid[0] * patch_grid[1]
    if matrix.ndim != 2 or matrix.shape[1] != patches or matrix.shape[0] < 1:
        raise ValueError(f"pooling must be (rows, {patches}), got {matrix.shape}")
    return matrix


def pooled_or_error(model_id: str, cls: np.ndarray, pooled: np.ndarray) -> list[PooledOrError]:
    """Per image, its normalised CLS and pooled vectors, or an ``EmbeddingError`` for an
    image with a non-finite value in either."""
    results: list[PooledOrError] = []
    for one_cls, one_pooled in zip(cls, pooled, strict=True):
        if not (np.isfinite(one_cls).all() and np.isfinite(one_pooled).all()):
            results.append(EmbeddingError(f"{model_id} produced a non-finite embedding"))
            continue
        results.append(PooledEmbedding(_unit(one_cls), _unit(one_pooled)))
    return results


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def non_finite_rows(vectors: np.ndarray) -> list[int]:
    """Rows of ``vectors`` that hold NaN or infinity."""
    return [int(i) for i in np.flatnonzero(~np.isfinite(vectors).all(axis=1))]


def recorded_model_id(model_id: str) -> str:
    """The id a model is recorded under: a local directory as an absolute path (it works from
    any directory), a hub id as it is."""
    return os.path.abspath(model_id) if os.path.isdir(model_id) else model_id


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity and container CPU sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
