"""The DINOv2 embedder: CLS vectors (L2-normalised, float32) for batches of images, in torch.

Loaded with ``transformers`` ``from_pretrained`` from a hub id or a local directory, so it
works offline (``HF_HUB_OFFLINE=1``) when the model is cached or local. Geometric
preprocessing (resize, crop) follows the model's own ``preprocessor_config.json`` and runs with
Pillow wherever the image is decoded (see ``preprocessing.Preprocessing``); rescaling and
normalisation run batched on the model's device.

Only ``dinoseek.runtime`` loads an embedder (``load_embedder``); everything else receives one
through the ``ImageEmbedder`` interface (``dinoseek.embedder_protocol``) and never sees torch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import torch

from dinoseek.embedder_protocol import (
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    LARGE_GPU_BATCH_SIZE,
    LARGE_GPU_BYTES,
    PatchEmbeddings,
    Pixels,
    PooledOrError,
    VectorOrError,
    available_cores,
    check_pooling,
    fingerprint_pixels,
    non_finite_rows,
    pooled_or_error,
    recorded_model_id,
)
from dinoseek.errors import ConfigError, EmbeddingError, ModelLoadError
from dinoseek.hub import ModelSource, hub_client_mode, model_source
from dinoseek.preprocessing import Preprocessing, preprocessing_from_processor_config
from dinoseek.space import EmbeddingSpace

log = logging.getLogger(__name__)
T = TypeVar("T")

SUPPORTED_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# What ``dinoseek adapt`` records in the config.json of a model it wrote: {"id", "base"}.
ADAPTATION_KEY = "dinoseek_adaptation"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# torch.compile modes. "reduce-overhead" captures CUDA graphs: one per batch size, so batches
# are padded up to one of BATCH_BUCKETS and each bucket is captured once (at warm-up).
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def resolve_device(name: str) -> torch.device:
    """``auto`` means cuda when available, else cpu. Asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` means bfloat16 on cuda and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def share_cpu_with_workers(workers: int) -> int:
    """Leave cores to ``workers`` decode processes (none when ``workers`` is 0): torch's
    intra-op threads busy-wait between operations and would starve them. Returns the torch
    thread count; an explicit OMP_NUM_THREADS is left alone."""
    if "OMP_NUM_THREADS" in os.environ or workers <= 0:
        return torch.get_num_threads()
    threads = max(1, available_cores() - workers)
    torch.set_num_threads(threads)
    return threads


def use_cpu_threads(threads: int) -> int:
    """Run torch's CPU operations on ``threads`` threads (a Ray actor is given one CPU by
    Ray's accounting, and torch would follow its OMP_NUM_THREADS=1). Returns the count."""
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size`` images (the largest bucket if none does)."""
    for bucket in buckets:
        if bucket >= size:
            return bucket
    return buckets[-1]


class Embedder:
    """A frozen DINOv2 on one device (an ``ImageEmbedder``).

    All torch work runs on one thread of its own, whichever thread calls: torch on a second
    calling thread gets its own OpenMP team and runs slower, and CUDA graphs must be replayed
    on the thread that captured them. Calls are therefore also serialised: thread-safe.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        *,
        model_id: str,
        dim: int,
        device: torch.device,
        dtype: torch.dtype,
        num_register_tokens: int = 0,
        patch_size: int = 14,
        adaptation: str | None = None,
    ) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.model_id = model_id
        self.dim = dim
        self.torch_device = device
        self.dtype = dtype
        self.num_register_tokens = num_register_tokens
        self.patch_size = patch_size
        self.adaptation = adaptation
        self._mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)
        self._run: Any = model  # the module, or its torch.compile'd version
        self.compile_mode = "off"
        self.buckets: tuple[int, ...] | None = None
        self._pinned: torch.Tensor | None = None  # host staging buffer for GPU copies
        self._torch_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="torch", initializer=self._record_torch_thread
        )
        self._torch_thread_id: int | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        source: ModelSource | None = None,
    ) -> Embedder:
        """Load a DINOv2 checkpoint (hub id or local directory) and its processor config;
        ``source``: where from, when the caller decided it (``dinoseek.hub``)."""
        model_id = recorded_model_id(model_id)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        checkpoint = load_dinov2(model_id, torch_dtype, source=source)
        model, config, preprocessing = checkpoint.model, checkpoint.config, checkpoint.preprocessing
        model.eval().requires_grad_(False).to(torch_device)
        return cls(
            model,
            preprocessing,
            model_id=model_id,
            dim=int(config.hidden_size),
            device=torch_device,
            dtype=torch_dtype,
            num_register_tokens=int(getattr(config, "num_register_tokens", 0) or 0),
            patch_size=int(getattr(config, "patch_size", 14) or 14),
            adaptation=adaptation_of(config),
        )

    # -- what the rest of dinoseek sees (ImageEmbedder) ------------------------------------

    @property
    def executor(self) -> Executor:
        """The torch thread (calls submitted here run without another hop)."""
        return self._torch_thread

    @property
    def device(self) -> str:
        """E.g. ``cpu`` or ``cuda:0``."""
        return str(self.torch_device)

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``."""
        return self.torch_device.type

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.preprocessing.output_size

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patch tokens: the input size in patches."""
        height, width = self.input_size
        return height // self.patch_size, width // self.patch_size

    @cached_property
    def space(self) -> EmbeddingSpace:
        """The embedding space of this model, with its fingerprint (one forward pass)."""
        fingerprint = self.embed_pixels(fingerprint_pixels(self.input_size)[None])[0]
        return EmbeddingSpace(
            model_id=self.model_id,
            dim=self.dim,
            preprocessing=self.preprocessing.describe(),
            fingerprint=tuple(float(v) for v in fingerprint),
            adaptation=self.adaptation,
        )

    def describe(self) -> dict[str, Any]:
        """Model id, dim, device, dtype and preprocessing, for logs and ``info``."""
        return {
            "model_id": self.model_id,
            "dim": self.dim,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocessing": self.preprocessing.describe(),
        }

    def default_batch_size(self) -> int:
        """``CPU_BATCH_SIZE`` on a CPU (throughput is flat from 8 to 32); on a GPU the large
        batch with ``LARGE_GPU_BYTES`` or more of memory, else ``GPU_BATCH_SIZE``."""
        if self.torch_device.type != "cuda":
            return CPU_BATCH_SIZE
        total = torch.cuda.get_device_properties(self.torch_device).total_memory
        return LARGE_GPU_BATCH_SIZE if total >= LARGE_GPU_BYTES else GPU_BATCH_SIZE

    def embed_pixels(self, pixels: Pixels) -> np.ndarray:
        """Embed preprocessed uint8 pixels (N, H, W, 3) in one forward pass.

        Returns float32 (N, dim), each row L2-normalised. Raises ``EmbeddingError`` if any
        output is not finite, so such a vector is never stored.
        """
        return self._on_torch_thread(self._embed_cls, pixels)

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        """A vector or an ``EmbeddingError`` per image (see ``ImageEmbedder.embed_each``)."""
        return self._on_torch_thread(self._embed_each, pixels)

    def embed_with_patches(self, pixels: Pixels) -> PatchEmbeddings:
        """Like ``embed_pixels``, plus the raw patch tokens (N, patches, dim), float32."""
        return self._on_torch_thread(self._embed_with_patches, pixels)

    def embed_each_pooled(self, pixels: Pixels, pooling: np.ndarray) -> list[PooledOrError]:
        """CLS and pooled patch tokens per image (see ``ImageEmbedder.embed_each_pooled``);
        the pooling is one matrix product on the model's device."""
        matrix = check_pooling(pooling, self.patch_grid)
        return self._on_torch_thread(self._embed_each_pooled, pixels, matrix)

    def stack(self, pixels: Sequence[Pixels]) -> Pixels:
        """One (N, H, W, 3) batch: numpy on the host, or a tensor on the device when any image
        was decoded there (the others are copied to it)."""
        devices = [p.device for p in pixels if isinstance(p, torch.Tensor)]
        if not devices:
            return np.stack(pixels)
        return torch.stack([torch.as_tensor(p).to(devices[0]) for p in pixels])

    def compile(self, mode: str = "default", *, max_batch: int | None = None) -> None:
        """torch.compile the model (``COMPILE_MODES``). With ``reduce-overhead`` (CUDA
        graphs, for low-latency queries) batches are padded to ``BATCH_BUCKETS`` up to
        ``max_batch``; call ``warm_up`` afterwards so that every bucket is captured before
        the first real request."""
        if mode not in COMPILE_MODES:
            raise ConfigError(f"unknown compile mode {mode!r}; use one of {COMPILE_MODES}")
        if mode == "off":
            return
        self._run = self._on_torch_thread(
            lambda: torch.compile(self.model, mode=mode, dynamic=False)
        )
        self.compile_mode = mode
        if mode == "reduce-overhead":
            limit = max_batch or self.default_batch_size()
            self.buckets = tuple(b for b in BATCH_BUCKETS if b <= limit) or (1,)

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run each batch size once (compiles and captures graphs; fills the caches)."""
        height, width = self.input_size
        sizes = sorted({bucket_for(n, self.buckets) if self.buckets else n for n in batch_sizes})
        for size in sizes:
            self.embed_pixels(np.zeros((size, height, width, 3), dtype=np.uint8))

    def close(self) -> None:
        """Stop the torch thread once the work submitted to it is done."""
        self._torch_thread.shutdown(wait=True)

    # -- on the torch thread -----------------------------------------------------------------

    def _on_torch_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function`` on the embedder's own thread (directly when already there)."""
        if threading.get_ident() == self._torch_thread_id:
            return function(*args)
        return self._torch_thread.submit(function, *args).result()

    def _record_torch_thread(self) -> None:
        self._torch_thread_id = threading.get_ident()

    def _embed_cls(self, pixels: Pixels) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._normalised_cls(self._forward(pixels))

    def _embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        return self._in_halves(
            pixels, lambda part: list(self._embed_cls(part)), isolate_failures=True
        )

    def _in_halves(
        self, pixels: Pixels, run: Callable[[Pixels], list[T]], *, isolate_failures: bool
    ) -> list[T | EmbeddingError]:
        """``run(pixels)``; when it runs out of memory (or, with ``isolate_failures``, raises
        an ``EmbeddingError``) on more than one image, each half again, so that an image that
        cannot be embedded fails alone."""
        count = len(pixels)
        if count == 0:
            return []
        try:
            return list(run(pixels))
        except EmbeddingError as exc:
            if not isolate_failures:
                raise
            if count == 1:
                return [exc]
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            if count == 1:
                message = f"not enough memory to embed this image on {self.device}"
                return [EmbeddingError(message, code="out_of_memory")]
            log.warning("out of memory at batch size %d; retrying in halves", count)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        middle = count // 2
        return self._in_halves(pixels[:middle], run, isolate_failures=isolate_failures) + (
            self._in_halves(pixels[middle:], run, isolate_failures=isolate_failures)
        )

    def _embed_with_patches(self, pixels: Pixels) -> PatchEmbeddings:
        hidden = self._forward(pixels)
        patches = hidden[:, 1 + self.num_register_tokens :].float().cpu().numpy()
        return PatchEmbeddings(
            cls=self._normalised_cls(hidden), patch_tokens=patches, grid=self.patch_grid
        )

    def _embed_each_pooled(self, pixels: Pixels, matrix: np.ndarray) -> list[PooledOrError]:
        def pooled(part: Pixels) -> list[PooledOrError]:
            hidden = self._forward(part)
            patches = hidden[:, 1 + self.num_register_tokens :].float()
            weights = torch.as_tensor(matrix, device=patches.device)
            windows = torch.einsum("rp,npd->nrd", weights, patches)
            cls = hidden[:, 0].float()
            return pooled_or_error(self.model_id, cls.cpu().numpy(), windows.cpu().numpy())

        return self._in_halves(pixels, pooled, isolate_failures=False)

    def _forward(self, pixels: Pixels) -> torch.Tensor:
        batch = torch.as_tensor(pixels)
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected uint8 pixels (N, H, W, 3), got {tuple(batch.shape)}")
        count = int(batch.shape[0])
        if self.buckets is not None and count > self.buckets[-1]:
            step = self.buckets[-1]
            return torch.cat([self._forward(batch[i : i + step]) for i in range(0, count, step)])
        # A compiled model must not run under inference_mode (its tensors cannot be saved
        # for graph capture); no_grad is enough for a frozen model.
        context = torch.no_grad() if self.compile_mode != "off" else torch.inference_mode()
        with context:
            batch = self._to_device(batch)
            if self.buckets is not None:
                padded = bucket_for(count, self.buckets)
                if padded > count:
                    filler = batch.new_zeros((padded - count, *batch.shape[1:]))
                    batch = torch.cat([batch, filler])
            batch = batch.permute(0, 3, 1, 2).float()
            batch = (batch * self.preprocessing.rescale_factor - self._mean) / self._std
            output = self._run(pixel_values=batch.to(self.dtype))
            hidden: torch.Tensor = output.last_hidden_state[:count]
        return hidden

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Host uint8 pixels go to a GPU through pinned memory (a non-blocking DMA copy);
        on the CPU, or for pixels already on the device, this is a no-op."""
        if self.torch_device.type != "cuda" or batch.device.type == "cuda":
            return batch.to(self.torch_device)
        if self._pinned is None or self._pinned.numel() < batch.numel():
            self._pinned = torch.empty(batch.numel(), dtype=torch.uint8, pin_memory=True)
        staging = self._pinned[: batch.numel()].view(batch.shape)
        staging.copy_(batch)
        # The forward pass that follows, and its .cpu(), synchronise before the buffer is
        # reused by the next batch.
        return staging.to(self.torch_device, non_blocking=True)

    def _normalised_cls(self, hidden: torch.Tensor) -> np.ndarray:
        cls = hidden[:, 0].float().cpu().numpy()
        bad = non_finite_rows(cls)
        if bad:
            raise EmbeddingError(
                f"{self.model_id} produced non-finite embeddings for batch rows {bad} "
                f"(dtype {self.dtype}); try --dtype float32"
            )
        norms = np.linalg.norm(cls, axis=1, keepdims=True)
        return np.asarray(cls / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class Dinov2Checkpoint:
    """A loaded DINOv2: the model (train mode as transformers leaves it), its config, its
    preprocessing and the processor config it came from."""

    model: torch.nn.Module
    config: Any
    preprocessing: Preprocessing
    processor_config: dict[str, Any]


def load_dinov2(
    model_id: str,
    dtype: torch.dtype = torch.float32,
    *,
    source: ModelSource | None = None,
) -> Dinov2Checkpoint:
    """Load a DINOv2 checkpoint (hub id or local directory) and its processor config, or
    raise ``ModelLoadError`` saying why (not found, offline and not cached, not DINOv2,
    unusable processor config). ``source``: where from (``dinoseek.hub``; decided here when
    not given)."""
    source = source or model_source(model_id)
    with hub_client_mode(source):
        return _load_dinov2(model_id, dtype, source)


def _load_dinov2(model_id: str, dtype: torch.dtype, source: ModelSource) -> Dinov2Checkpoint:
    from transformers import AutoConfig, AutoModel, ImageProcessingMixin

    where = {"local_files_only": source.local_files_only, "cache_dir": source.cache_dir}
    try:
        config = AutoConfig.from_pretrained(model_id, **where)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(_load_failure_message(model_id, exc)) from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{model_id} is a {config.model_type!r} model; dinoseek needs a DINOv2 "
            f"checkpoint ({', '.join(SUPPORTED_MODEL_TYPES)}), e.g. facebook/dinov2-base"
        )
    try:
        processor_config, _ = ImageProcessingMixin.get_image_processor_dict(model_id, **where)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(_load_failure_message(model_id, exc)) from None
    try:
        preprocessing = preprocessing_from_processor_config(processor_config)
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"{model_id}: unusable preprocessor_config.json: {exc}") from None
    try:
        model = AutoModel.from_pretrained(
            model_id, dtype=dtype, attn_implementation="sdpa", **where
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(_load_failure_message(model_id, exc)) from None
    return Dinov2Checkpoint(model, config, preprocessing, dict(processor_config))


def adaptation_of(config: Any) -> str | None:
    """The id ``dinoseek adapt`` wrote into a model's config (None for other models)."""
    recorded = getattr(config, ADAPTATION_KEY, None)
    return str(recorded["id"]) if isinstance(recorded, dict) and "id" in recorded else None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a torch error means the device (or the host) ran out of memory."""
    text = str(exc).lower()
    return (
        isinstance(exc, torch.cuda.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def _load_failure_message(model_id: str, exc: Exception) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if os.path.isdir(model_id):
        expected = (
            "a directory written by save_pretrained holds config.json, "
            "preprocessor_config.json and the weights"
        )
    else:
        expected = f"is {model_id} a DINOv2 model on the hub, complete in the cache?"
    return f"cannot load model {model_id!r}: {first_line.rstrip('.')} ({expected})"
