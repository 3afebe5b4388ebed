"""The training images: checked once, then served a batch per step by decode processes.

A step's batch depends only on (seed, step): the order of each epoch is a seeded permutation
and each image's views are drawn from a generator seeded with (seed, step, row). So a resumed
run sees the batches an uninterrupted one would, whatever the number of workers. Decoding
and augmentation run in DataLoader worker processes, a whole batch per task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dinoseek.adapt.augment import CropSpec, multi_crop
from dinoseek.errors import ConfigError, DinoseekError
from dinoseek.images import load_image, prepare_image, read_image_bytes
from dinoseek.preprocessing import Preprocessing

# The smallest batch a run lowers --batch-size to when the folder holds fewer images: the
# teacher's Sinkhorn-Knopp targets and KoLeo are taken over the batch.
MIN_BATCH = 8


@dataclass(frozen=True)
class TrainingImages:
    """The files training can use, and those it cannot with the reason."""

    paths: tuple[Path, ...]
    failed: dict[Path, str]


@dataclass(frozen=True)
class DecodeLimits:
    """The same limits as indexing (``Settings``)."""

    max_pixels: int
    max_bytes: int


def check_images(
    files: Sequence[Path],
    limits: DecodeLimits,
    preprocessing: Preprocessing,
    *,
    on_file: Callable[[], None] | None = None,
) -> TrainingImages:
    """Keep the files that decode within the limits into the model's input: each is decoded
    and preprocessed once, so that the usable images counted here are the ones training and
    the before/after check use (a whole header can hide truncated pixels, and a decodable
    image can still be refused by the resize)."""
    usable: list[Path] = []
    failed: dict[Path, str] = {}
    for path in files:
        try:
            data = read_image_bytes(path, max_bytes=limits.max_bytes)
            prepare_image(data, preprocessing, max_pixels=limits.max_pixels, name=str(path))
        except DinoseekError as error:
            failed[path] = str(error)
        else:
            usable.append(path)
        if on_file is not None:
            on_file()
    return TrainingImages(tuple(usable), failed)


def fitted_batch_size(usable: int, requested: int, counts: str) -> int:
    """``requested``, or all ``usable`` images when there are fewer, down to ``MIN_BATCH``
    (or ``requested`` when smaller); ``ConfigError`` below that, saying ``counts``."""
    if usable >= requested:
        return requested
    floor = min(requested, MIN_BATCH)
    if usable < floor:
        why = "--batch-size" if floor == requested else "the smallest batch a run lowers to"
        raise ConfigError(f"{counts}: fewer than one batch of {floor} ({why}); add images")
    return usable


class Batch(NamedTuple):
    """Crops as uint8 tensors, view-major: global (2, B, H, W, 3), local (N, B, h, w, 3);
    and the files that failed to decode while the batch was made (replaced by others)."""

    global_crops: torch.Tensor
    local_crops: torch.Tensor
    failed: list[tuple[str, str]]


class StepBatches(Dataset[Batch]):
    """Item ``step`` is the batch of that step."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        batch_size: int,
        spec: CropSpec,
        seed: int,
        limits: DecodeLimits,
    ) -> None:
        self.paths = list(paths)
        self.batch_size = batch_size
        self.spec = spec
        self.seed = seed
        self.limits = limits

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> Batch:
        globals_: list[np.ndarray] = []
        locals_: list[np.ndarray] = []
        failed: list[tuple[str, str]] = []
        for row in range(self.batch_size):
            image = self._image_at(step * self.batch_size + row, failed)
            rng = np.random.default_rng([self.seed, step, row])
            views = multi_crop(image, self.spec, rng)
            globals_.append(views.global_crops)
            locals_.append(views.local_crops)
        return Batch(
            torch.from_numpy(np.stack(globals_, axis=1)),
            torch.from_numpy(np.stack(locals_, axis=1)),
            failed,
        )

    def _image_at(self, position: int, failed: list[tuple[str, str]]) -> Image.Image:
        count = len(self.paths)
        order = epoch_order(self.seed, position // count, count)
        for attempt in range(count):
            path = self.paths[int(order[(position + attempt) % count])]
            try:
                return load_image(
                    path, max_pixels=self.limits.max_pixels, max_bytes=self.limits.max_bytes
                ).image
            except DinoseekError as error:
                failed.append((str(path), str(error)))
        raise ConfigError("none of the training images could be decoded")


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The seeded order of the images in an epoch."""
    return np.random.default_rng([seed, epoch, count]).permutation(count)


def _keep_batch(batch: Any) -> Any:
    return batch


def batches(
    dataset: StepBatches, first_step: int, last_step: int, *, workers: int, pin_memory: bool
) -> Generator[Batch, None, None]:
    """The batches of steps first_step .. last_step - 1, made by ``workers`` processes."""
    loader = DataLoader(
        dataset,
        batch_size=None,
        sampler=range(first_step, last_step),
        num_workers=workers,
        collate_fn=_keep_batch,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    yield from loader
