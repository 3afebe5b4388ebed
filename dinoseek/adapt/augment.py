"""DINOv2's multi-crop views of one image, drawn with Pillow and a seeded generator.

Two global crops and N local crops, with the recipe's augmentations (DINOv2
``dinov2/data/augmentations.py``): random resized crop (scale 0.32-1 for global crops,
0.05-0.32 for local ones), horizontal flip, colour jitter (brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1; p 0.8), grayscale (p 0.2), Gaussian blur (p 1.0 on the first global
crop, 0.1 on the second, 0.5 on local crops) and solarize (p 0.2 on the second global crop).
torchvision is optional in dinoseek, so the views are drawn here; the crops come out as uint8
and are normalised on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

GLOBAL_SCALE = (0.32, 1.0)
LOCAL_SCALE = (0.05, 0.32)
ASPECT = (3 / 4, 4 / 3)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128


@dataclass(frozen=True)
class CropSpec:
    """Sizes and counts of the views."""

    global_size: int = 224
    local_size: int = 98
    local_crops: int = 8


@dataclass(frozen=True)
class Views:
    """The views of one image: global (2, size, size, 3) and local (N, size, size, 3), uint8."""

    global_crops: np.ndarray
    local_crops: np.ndarray


def multi_crop(image: Image.Image, spec: CropSpec, rng: np.random.Generator) -> Views:
    """The 2 global and ``spec.local_crops`` local views of an RGB image."""
    first = _view(image, spec.global_size, GLOBAL_SCALE, rng, blur_p=1.0, solarize_p=0.0)
    second = _view(image, spec.global_size, GLOBAL_SCALE, rng, blur_p=0.1, solarize_p=0.2)
    local = [
        _view(image, spec.local_size, LOCAL_SCALE, rng, blur_p=0.5, solarize_p=0.0)
        for _ in range(spec.local_crops)
    ]
    empty = np.zeros((0, spec.local_size, spec.local_size, 3), dtype=np.uint8)
    return Views(np.stack([first, second]), np.stack(local) if local else empty)


def _view(
    image: Image.Image,
    size: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    *,
    blur_p: float,
    solarize_p: float,
) -> np.ndarray:
    view = random_resized_crop(image, size, scale, rng)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    if rng.random() < JITTER_P:
        view = colour_jitter(view, rng)
    if rng.random() < GRAYSCALE_P:
        view = ImageOps.grayscale(view).convert("RGB")
    if rng.random() < blur_p:
        view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*BLUR_SIGMA))))
    if rng.random() < solarize_p:
        view = ImageOps.solarize(view, threshold=SOLARIZE_THRESHOLD)
    return np.asarray(view, dtype=np.uint8)


def random_resized_crop(
    image: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator
) -> Image.Image:
    """A crop of a random share of the area and aspect ratio, resized to size x size
    (bicubic), as torchvision's ``RandomResizedCrop``: ten tries, then the central crop."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            return image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation (factors in 1 +- 0.4, 0.4, 0.2) and hue (+- 0.1 of a
    turn), in a random order."""
    steps = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(0.6, 1.4)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.6, 1.4)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(0.8, 1.2)),
        lambda im: shift_hue(im, rng.uniform(-0.1, 0.1)),
    ]
    for index in rng.permutation(len(steps)):
        image = steps[int(index)](image)
    return image


def shift_hue(image: Image.Image, turn: float) -> Image.Image:
    """Rotate the hue by ``turn`` of a full turn."""
    hue, saturation, value = image.convert("HSV").split()
    shift = round(turn * 256)
    hue = hue.point([(level + shift) % 256 for level in range(256)])
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")
