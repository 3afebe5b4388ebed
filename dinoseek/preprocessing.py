"""The geometric part of a model's image processor (resize, centre-crop), applied with Pillow
wherever an image is decoded, so that index time and query time cannot drift apart.

``Preprocessing.to_pixels`` turns a decoded RGB image into the fixed-size uint8 array the
model's processor would produce before normalisation; rescaling and normalisation run
batched on the model's device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# An image is resized whole (as transformers does) while that takes at most this many times
# the pixels of the model input; beyond, only its crop window is resized.
MAX_RESIZE_FACTOR = 16


@dataclass(frozen=True)
class Preprocessing:
    """The geometric part of a model's image processor, applied with Pillow.

    Mirrors transformers' ``BitImageProcessor`` (the processor of every DINOv2 checkpoint):
    resize so the shortest edge is ``resize_shortest_edge`` (or to ``resize_to``), then
    centre-crop to ``crop``. The result is uint8; rescaling and normalisation with
    ``mean``/``std`` happen batched on the model's device.
    """

    resize_shortest_edge: int | None
    resize_to: tuple[int, int] | None
    resample: int
    crop: tuple[int, int] | None
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every preprocessed image."""
        if self.crop is not None:
            return self.crop
        if self.resize_to is not None:
            return self.resize_to
        raise ValueError("preprocessing without a crop or a fixed resize has no fixed size")

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, recorded with each collection."""
        return {
            "resize_shortest_edge": self.resize_shortest_edge,
            "resize_to": list(self.resize_to) if self.resize_to else None,
            "resample": Image.Resampling(self.resample).name.lower(),
            "crop": list(self.crop) if self.crop else None,
            "rescale_factor": round(self.rescale_factor, 10),
            "mean": [round(v, 6) for v in self.mean],
            "std": [round(v, 6) for v in self.std],
        }

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, computed as transformers does."""
        if self.resize_to is not None:
            return self.resize_to[1], self.resize_to[0]
        if self.resize_shortest_edge is None:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.resize_shortest_edge
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def resizes_whole(self, width: int, height: int) -> bool:
        """Whether an image of this size is resized whole before the crop, as transformers
        does: when that stays within ``MAX_RESIZE_FACTOR`` times the model input. Beyond,
        only the crop window is resized (an extreme aspect ratio: a 1 x 4000 image would
        become 256 x 1,024,000)."""
        new_width, new_height = self.resized_size(width, height)
        out_height, out_width = self.output_size
        return new_width * new_height <= MAX_RESIZE_FACTOR * out_height * out_width

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        """Resize and centre-crop an RGB image: a uint8 array of shape (height, width, 3).

        The pixels transformers computes (the whole image resized, then cropped) for every
        image ``resizes_whole`` accepts; beyond, only the crop window is resized, so the work
        and memory are those of the output however extreme the aspect ratio (the pixels then
        differ by rounding: Pillow may take its two passes in the other order).
        """
        new_width, new_height = self.resized_size(image.width, image.height)
        if self.crop is None:
            if (new_width, new_height) != image.size:
                image = image.resize((new_width, new_height), resample=self.resample)
            return np.array(image, dtype=np.uint8)
        crop_height, crop_width = self.crop
        top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
        # The part of the crop window that lies on the resized image (all of it unless the
        # resized image is smaller than the crop; the rest is zero padding).
        x0, x1 = max(left, 0), min(left + crop_width, new_width)
        y0, y1 = max(top, 0), min(top + crop_height, new_height)
        if self.resizes_whole(image.width, image.height):
            resized = image.resize((new_width, new_height), resample=self.resample)
            region = resized.crop((x0, y0, x1, y1))
        else:
            scale_x, scale_y = image.width / new_width, image.height / new_height
            region = image.resize(
                (x1 - x0, y1 - y0),
                resample=self.resample,
                box=(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y),
            )
        pixels = np.array(region, dtype=np.uint8)  # a writable copy (torch warns otherwise)
        if pixels.shape[:2] == (crop_height, crop_width):
            return pixels
        canvas = np.zeros((crop_height, crop_width, 3), dtype=np.uint8)
        canvas[y0 - top : y1 - top, x0 - left : x1 - left] = pixels
        return canvas


def preprocessing_from_processor_config(config: Mapping[str, Any]) -> Preprocessing:
    """Build ``Preprocessing`` from an image processor's attributes (``to_dict()``).

    Raises ``ValueError`` for configurations dinoseek cannot reproduce exactly.
    """
    size = config.get("size") or {}
    shortest: int | None = None
    resize_to: tuple[int, int] | None = None
    if config.get("do_resize", True):
        if size.get("shortest_edge") and not size.get("longest_edge"):
            shortest = int(size["shortest_edge"])
        elif size.get("height") and size.get("width"):
            resize_to = (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"unsupported resize setting in the image processor: {size}")
    crop: tuple[int, int] | None = None
    if config.get("do_center_crop", True):
        crop_size = config.get("crop_size") or {}
        if not (crop_size.get("height") and crop_size.get("width")):
            raise ValueError(f"unsupported crop setting in the image processor: {crop_size}")
        crop = (int(crop_size["height"]), int(crop_size["width"]))
    if crop is None and resize_to is None:
        raise ValueError("the image processor neither crops nor resizes to a fixed size")
    rescale = (
        float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    )
    if config.get("do_normalize", True):
        mean = tuple(float(v) for v in config["image_mean"])
        std = tuple(float(v) for v in config["image_std"])
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("image_mean and image_std must have three values")
    return Preprocessing(
        resize_shortest_edge=shortest,
        resize_to=resize_to,
        resample=_resample_code(config.get("resample", Image.Resampling.BICUBIC)),
        crop=crop,
        rescale_factor=rescale,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
    )


def _resample_code(value: Any) -> int:
    if isinstance(value, int):
        return int(Image.Resampling(value))
    name = str(getattr(value, "name", value)).upper()
    # torchvision InterpolationMode names map onto Pillow's.
    return int(Image.Resampling[name])


# The preprocessor_config.json of the facebook/dinov2-* checkpoints.
DINOV2_PROCESSOR: dict[str, Any] = {
    "size": {"shortest_edge": 256},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 1 / 255,
}
DINOV2_PREPROCESSING = preprocessing_from_processor_config(DINOV2_PROCESSOR)
