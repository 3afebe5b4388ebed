"""Optional JPEG decoding and preprocessing on the GPU (nvJPEG through torchvision).

On a GPU host, decoding JPEGs with Pillow on the CPU can cap indexing below what the model
sustains; nvJPEG decodes on the GPU itself (figures: bench/RESULTS.md). ``GpuJpegDecoder``
decodes a batch of JPEGs on the device, applies the EXIF orientation, resizes the shortest
edge and centre-crops exactly as ``preprocessing.Preprocessing`` does, and returns model-ready uint8
pixels (H, W, 3) on the device.

Deviation from the reference pipeline, hence opt-in (``--gpu-decode``): the resize is torch's
antialiased bicubic instead of Pillow's, and nvJPEG's IDCT differs from libjpeg's; the
embeddings stay within the project's cosine >= 0.999 bound (checked by ``bench/parity.py``).

Anything nvJPEG cannot take (a decoder error, a CMYK JPEG, a truncated file), and any image of
so extreme an aspect ratio that resizing it whole would be huge, is reported per image as
``None``, and the caller decodes it on the CPU, so a bad file never fails a batch.
torchvision is imported lazily: it is an optional dependency (the ``gpu`` extra).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dinoseek.preprocessing import Preprocessing

log = logging.getLogger(__name__)

JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class JpegJob:
    """One JPEG to decode: its bytes and its EXIF orientation (1-8)."""

    data: bytes
    orientation: int = 1


def load_decode_jpeg() -> tuple[Callable[..., Any] | None, str]:
    """torchvision's ``decode_jpeg`` and ``ImageReadMode.RGB``, or None and the reason."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # noqa: BLE001 - a broken torchvision raises RuntimeError too
        return None, f"torchvision is not usable here ({type(exc).__name__}: {exc})"

    def decode(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        decoded: list[torch.Tensor] = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return decoded

    return decode, ""


def looks_complete(data: bytes) -> bool:
    """A JPEG that ends with its end-of-image marker (nvJPEG may accept a truncated file
    silently, where Pillow refuses it; such files go to the CPU path)."""
    return data.rstrip(b"\x00").endswith(JPEG_END)


class GpuJpegDecoder:
    """Batched JPEG decode + preprocessing on a CUDA device."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        device: torch.device,
        decode: Callable[[list[torch.Tensor], str], list[torch.Tensor]],
    ) -> None:
        """``decode`` takes a list of uint8 byte tensors and returns CHW uint8 images on
        ``device`` (``load_decode_jpeg`` gives torchvision's)."""
        self.preprocessing = preprocessing
        self.device = device
        self.decode = decode

    @classmethod
    def create(cls, preprocessing: Preprocessing, device: str) -> GpuJpegDecoder | None:
        """A decoder for the model's ``device`` (e.g. ``cuda:0``), or None (with a logged
        reason) where nvJPEG cannot be used."""
        if torch.device(device).type != "cuda":
            log.warning("GPU decoding needs a CUDA device (the model runs on %s)", device)
            return None
        decode, reason = load_decode_jpeg()
        if decode is None:
            log.warning("GPU decoding is off: %s; install the gpu extra", reason)
            return None
        return cls(preprocessing, torch.device(device), decode)

    def decode_batch(self, jobs: Sequence[JpegJob]) -> list[torch.Tensor | None]:
        """Model-ready pixels (H, W, 3) uint8 on the device per job; None where the CPU must
        take over."""
        results: list[torch.Tensor | None] = [None] * len(jobs)
        usable = [i for i, job in enumerate(jobs) if looks_complete(job.data)]
        if not usable:
            return results
        tensors = [torch.frombuffer(bytearray(jobs[i].data), dtype=torch.uint8) for i in usable]
        images: list[torch.Tensor | None]
        try:
            images = list(self.decode(tensors, str(self.device)))
        except Exception:  # noqa: BLE001 - one bad JPEG fails nvJPEG's whole batch
            images = [self._decode_one(tensor) for tensor in tensors]
        for index, image in zip(usable, images, strict=True):
            if image is not None and self.resizes_within_bounds(image, jobs[index].orientation):
                results[index] = self.preprocess(image, jobs[index].orientation)
        return results

    def resizes_within_bounds(self, image: torch.Tensor, orientation: int = 1) -> bool:
        """Whether the image is resized whole (``Preprocessing.resizes_whole``). The GPU path
        always resizes the whole image before cropping, so an image with an extreme aspect
        ratio (a 1 x 4000 JPEG becomes 256 x 1,024,000) goes to the CPU path, which resizes
        only its crop window."""
        height, width = int(image.shape[1]), int(image.shape[2])
        if orientation >= 5:
            height, width = width, height
        return self.preprocessing.resizes_whole(width, height)

    def _decode_one(self, tensor: torch.Tensor) -> torch.Tensor | None:
        try:
            return self.decode([tensor], str(self.device))[0]
        except Exception:  # noqa: BLE001 - the CPU path reports what is wrong with it
            return None

    def preprocess(self, image: torch.Tensor, orientation: int = 1) -> torch.Tensor:
        """CHW uint8 -> oriented, resized, centre-cropped HWC uint8 (on the image's device)."""
        image = orient(image, orientation)
        height, width = int(image.shape[1]), int(image.shape[2])
        new_width, new_height = self.preprocessing.resized_size(width, height)
        if (new_width, new_height) != (width, height):
            resized = torch.nn.functional.interpolate(
                image[None].float(),
                size=(new_height, new_width),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )[0]
            image = resized.round_().clamp_(0, 255).to(torch.uint8)
        if self.preprocessing.crop is not None:
            image = center_crop(image, self.preprocessing.crop)
        return image.permute(1, 2, 0).contiguous()


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a CHW image, as Pillow's ``exif_transpose`` does."""
    height_axis, width_axis = 1, 2
    if orientation == 2:
        return image.flip(width_axis)
    if orientation == 3:
        return image.flip(height_axis, width_axis)
    if orientation == 4:
        return image.flip(height_axis)
    if orientation == 5:
        return image.transpose(height_axis, width_axis)
    if orientation == 6:
        return image.transpose(height_axis, width_axis).flip(width_axis)
    if orientation == 7:
        return image.transpose(height_axis, width_axis).flip(height_axis, width_axis)
    if orientation == 8:
        return image.transpose(height_axis, width_axis).flip(height_axis)
    return image


def center_crop(image: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Centre-crop a CHW image, zero-padding where it is smaller (as transformers does)."""
    height, width = int(image.shape[1]), int(image.shape[2])
    crop_height, crop_width = crop
    if height < crop_height or width < crop_width:
        padded_height, padded_width = max(height, crop_height), max(width, crop_width)
        top = math.ceil((padded_height - height) / 2)
        left = math.ceil((padded_width - width) / 2)
        padded = image.new_zeros((image.shape[0], padded_height, padded_width))
        padded[:, top : top + height, left : left + width] = image
        image, height, width = padded, padded_height, padded_width
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return image[:, top : top + crop_height, left : left + crop_width]
