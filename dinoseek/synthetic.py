"""Synthetic models and images for tests, demos and benchmarks.

Real DINOv2 weights come from the Hugging Face hub, which is not always reachable. Speed does
not depend on the weights, and the code path does not either: ``save_random_dinov2`` writes a
random-weight DINOv2 of a real architecture (or a tiny one) with the real
``preprocessor_config.json`` through ``save_pretrained``, and dinoseek loads it with the same
``from_pretrained`` call as a real checkpoint.

Run as ``python -m dinoseek.synthetic model DIR [--size tiny]``,
``python -m dinoseek.synthetic images DIR [--count N]`` or
``python -m dinoseek.synthetic colours DIR [--per-class N]``.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from dinoseek.preprocessing import DINOV2_PROCESSOR

# Architectures of the DINOv2 checkpoints (ViT-S/B/L/g, patch 14), plus a tiny one for tests.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "giant": {
        "hidden_size": 1536,
        "num_hidden_layers": 40,
        "num_attention_heads": 24,
        "intermediate_size": 6144,
        "use_swiglu_ffn": True,
    },
}

CLASS_NAMES = ("circles", "stripes", "squares", "triangles", "dots", "waves", "rings", "grid")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars off, for the block."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def save_random_dinov2(directory: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight DINOv2 and its image processor config to ``directory``."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    torch.manual_seed(seed)
    config = Dinov2Config(image_size=518, patch_size=14, **MODEL_SIZES[size])
    model = Dinov2Model(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    with quiet_transformers():
        from transformers import BitImageProcessor  # warns here when torchvision is absent

        BitImageProcessor(**DINOV2_PROCESSOR).save_pretrained(directory)
    return directory


def draw_image(
    rng: random.Random, class_name: str, size: tuple[int, int] = (500, 375)
) -> Image.Image:
    """A photo-like synthetic picture: a soft background and shapes typical of ``class_name``."""
    width, height = size
    base = tuple(rng.randrange(40, 216) for _ in range(3))
    image = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(2, 5)):  # background blobs
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randrange(width // 8, width // 2)
        colour = tuple(min(255, max(0, c + rng.randrange(-50, 50))) for c in base)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=width // 25))
    draw = ImageDraw.Draw(image)
    index = CLASS_NAMES.index(class_name) if class_name in CLASS_NAMES else hash(class_name) % 8
    _draw_class_shapes(draw, rng, index, width, height)
    return image.filter(ImageFilter.GaussianBlur(radius=0.8))


def _draw_class_shapes(
    draw: ImageDraw.ImageDraw, rng: random.Random, index: int, width: int, height: int
) -> None:
    colour = tuple(rng.randrange(0, 256) for _ in range(3))
    if index == 0:
        for _ in range(rng.randrange(3, 7)):
            x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(20, 80)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif index == 1:
        step = rng.randrange(18, 40)
        for x in range(-height, width, step * 2):
            draw.polygon(
                [(x, 0), (x + step, 0), (x + step + height, height), (x + height, height)],
                fill=colour,
            )
    elif index == 2:
        for _ in range(rng.randrange(3, 7)):
            x, y, s = rng.randrange(width), rng.randrange(height), rng.randrange(30, 90)
            draw.rectangle((x, y, x + s, y + s), fill=colour)
    elif index == 3:
        for _ in range(rng.randrange(3, 6)):
            x, y, s = rng.randrange(width), rng.randrange(height), rng.randrange(40, 110)
            draw.polygon([(x, y), (x + s, y), (x + s // 2, y - s)], fill=colour)
    elif index == 4:
        for _ in range(rng.randrange(40, 90)):
            x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(3, 8)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif index == 5:
        for offset in range(0, height, rng.randrange(25, 45)):
            points = [(x, offset + 12 * ((x // 20) % 2)) for x in range(0, width + 20, 20)]
            draw.line(points, fill=colour, width=6)
    elif index == 6:
        x, y = rng.randrange(width), rng.randrange(height)
        for r in range(10, 260, rng.randrange(18, 30)):
            draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=5)
    else:
        step = rng.randrange(25, 50)
        for x in range(0, width, step):
            draw.line([(x, 0), (x, height)], fill=colour, width=3)
        for y in range(0, height, step):
            draw.line([(0, y), (width, y)], fill=colour, width=3)


def write_image_folder(
    directory: Path,
    *,
    count: int,
    classes: Sequence[str] = CLASS_NAMES[:4],
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
    quality: int = 90,
) -> list[Path]:
    """Write ``count`` JPEGs into one sub-folder per class (labels come from folder names)."""
    rng = random.Random(seed)
    paths: list[Path] = []
    for i in range(count):
        class_name = classes[i % len(classes)]
        folder = directory / class_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{class_name}_{i:06d}.jpg"
        draw_image(rng, class_name, size).save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


# Hue families far apart, so that the recipe's hue jitter (a tenth of a turn) keeps them apart.
COLOUR_CLASSES = {"red": 0.0, "green": 0.3, "cyan": 0.5, "purple": 0.78}


def write_colour_folder(
    directory: Path, *, per_class: int, seed: int = 0, size: int = 128
) -> list[Path]:
    """Write PNGs of distinct visual classes (one sub-folder per hue family) under nuisances
    that DINOv2's augmentations vary from view to view: brightness and saturation over a
    wide range, and grey blobs of any brightness at random places. A random-weight model's
    features follow the nuisances; self-distillation learns to ignore them (the adapt tests).
    """
    rng = random.Random(seed)
    paths: list[Path] = []
    for name, centre in COLOUR_CLASSES.items():
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            hue = (centre + rng.uniform(-0.04, 0.04)) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 1.0), rng.uniform(0.15, 1.0))
            image = Image.new("RGB", (size, size), tuple(round(255 * c) for c in rgb))
            draw = ImageDraw.Draw(image)
            for _ in range(rng.randrange(8, 16)):
                grey = rng.randrange(256)
                x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(8, 36)
                draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, grey))
            path = folder / f"{name}_{i:04d}.png"
            image.filter(ImageFilter.GaussianBlur(1)).save(path)
            paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write a random model or a folder of synthetic images."""
    parser = argparse.ArgumentParser(prog="python -m dinoseek.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="write a random-weight DINOv2")
    model.add_argument("directory", type=Path)
    model.add_argument("--size", default="tiny", choices=sorted(MODEL_SIZES))
    model.add_argument("--seed", type=int, default=0)
    images = commands.add_parser("images", help="write a folder of labelled synthetic JPEGs")
    images.add_argument("directory", type=Path)
    images.add_argument("--count", type=int, default=200)
    images.add_argument("--classes", type=int, default=4, help="number of classes (1-8)")
    images.add_argument("--seed", type=int, default=0)
    colours = commands.add_parser(
        "colours", help="write a folder of hue classes under brightness and clutter (PNGs)"
    )
    colours.add_argument("directory", type=Path)
    colours.add_argument("--per-class", type=int, default=40)
    colours.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "colours":
        paths = write_colour_folder(args.directory, per_class=args.per_class, seed=args.seed)
        print(f"wrote {len(paths)} images in {len(COLOUR_CLASSES)} classes to {args.directory}")
    elif args.command == "model":
        save_random_dinov2(args.directory, size=args.size, seed=args.seed)
        print(f"wrote a random-weight DINOv2-{args.size} to {args.directory}")
    else:
        classes = CLASS_NAMES[: max(1, min(len(CLASS_NAMES), args.classes))]
        paths = write_image_folder(
            args.directory, count=args.count, classes=classes, seed=args.seed
        )
        print(f"wrote {len(paths)} images in {len(classes)} classes to {args.directory}")


if __name__ == "__main__":
    main()
