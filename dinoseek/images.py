"""Image decoding and preprocessing: the one path that index time and query time share.

``decode_image`` turns untrusted bytes into an RGB ``PIL.Image`` or raises an ``ImageError``
whose ``code`` says why. ``Preprocessing.to_pixels`` turns that image into the fixed-size
uint8 array the model's processor would produce before normalisation; normalisation itself
runs batched on the model's device (see ``embedder``).

This module needs neither torch nor transformers, so decode workers start fast.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dinoseek.errors import ImageError, ImageErrorCode

# Formats decoded by Pillow itself. (Multi-picture JPEGs from cameras open through JPEG, as MPO.)
BASE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats accepted only when a plugin (pillow's AVIF support, pillow-heif) is installed.
PLUGIN_FORMATS: tuple[str, ...] = ("AVIF", "HEIF")

# Transparent pixels are composited onto this colour, so that a PNG with alpha and the same
# picture flattened onto white give the same embedding.
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)

_SNIFF_BYTES = 32
# An image is resized whole (as transformers does) while that takes at most this many times
# the pixels of the model input; beyond, only its crop window is resized.
MAX_RESIZE_FACTOR = 16
_BLOCK_PIXELS = 1 << 20  # high-depth images are scaled to 8 bits this many pixels at a time

# Pillow warns about recoverable oddities (corrupt EXIF, palette transparency) and about images
# between 1x and 2x its own pixel limit. dinoseek checks sizes itself and reports real failures
# as ImageError, so these warnings would only be noise in the logs of a large indexing run.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


# File extensions of each format: how a folder's images are found before they are read.
EXTENSIONS_BY_FORMAT: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "BMP": (".bmp", ".dib"),
    "TIFF": (".tif", ".tiff"),
    "AVIF": (".avif",),
    "HEIF": (".heic", ".heif"),
}


def allowed_formats() -> tuple[str, ...]:
    """The Pillow format names dinoseek decodes in this process (plugins included)."""
    Image.init()
    return tuple(name for name in BASE_FORMATS + PLUGIN_FORMATS if name in Image.OPEN)


def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of the formats this process can decode."""
    formats = allowed_formats()
    return frozenset(ext for fmt in formats for ext in EXTENSIONS_BY_FORMAT.get(fmt, ()))


def sniff_format(head: bytes) -> str | None:
    """Name the image format from the first bytes of a file, or None if unrecognised.

    Recognises the allowed formats and a few common ones that are not (so that the error can
    say "unsupported format" rather than "not an image").
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIF"
        return None
    known_other = {
        b"%PDF": "PDF",
        b"8BPS": "PSD",
        b"\x00\x00\x01\x00": "ICO",
        b"\xff\x0a": "JPEG XL",
        b"\x00\x00\x00\x0cjXL ": "JPEG XL",
        b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
        b"\xff\x4f\xff\x51": "JPEG 2000",
        b"qoif": "QOI",
    }
    for magic, name in known_other.items():
        if head.startswith(magic):
            return name
    stripped = head.lstrip()
    if stripped.startswith((b"<svg", b"<?xml")):
        return "SVG"
    return None


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for preprocessing: RGB, EXIF orientation applied, first frame only."""

    image: Image.Image
    width: int
    height: int
    format: str


def read_image_bytes(path: Path, *, max_bytes: int | None = None) -> bytes:
    """Read a file's bytes, raising ``ImageError`` (never ``OSError``) when it cannot be read."""
    try:
        if max_bytes is not None:
            size = path.stat().st_size
            if size > max_bytes:
                raise ImageError(
                    f"{path}: file is {size:,} bytes, more than the limit of {max_bytes:,}",
                    code=ImageErrorCode.FILE_TOO_LARGE,
                )
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(
            f"{path}: file not found (was it moved or deleted?)",
            code=ImageErrorCode.FILE_NOT_FOUND,
        ) from None
    except IsADirectoryError:
        raise ImageError(
            f"{path}: is a directory, not an image file", code=ImageErrorCode.FILE_UNREADABLE
        ) from None
    except OSError as exc:
        raise ImageError(
            f"{path}: cannot be read ({exc.strerror or exc}); check its permissions",
            code=ImageErrorCode.FILE_UNREADABLE,
        ) from None


def load_image(path: Path, *, max_pixels: int, max_bytes: int | None = None) -> DecodedImage:
    """Read and decode an image file. See ``decode_image``."""
    return decode_image(
        read_image_bytes(path, max_bytes=max_bytes), max_pixels=max_pixels, name=str(path)
    )


def decode_image(data: bytes, *, max_pixels: int, name: str = "image") -> DecodedImage:
    """Decode untrusted image bytes into an RGB image, or raise ``ImageError``.

    - Only the allowed formats are opened (``allowed_formats``); others are refused by name.
    - ``width * height`` is checked against ``max_pixels`` from the header, before any pixel
      is decoded.
    - EXIF orientation is applied (a malformed EXIF block is ignored, not fatal).
    - Alpha and palette transparency are composited onto ``BACKGROUND_RGB``; 16-bit, 32-bit
      and float images are scaled to 8 bits (not clipped); CMYK, 1-bit, greyscale and other
      modes are converted; animated images give their first frame.

    ``name`` (a path or an upload's file name) is used in error messages.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes)", code=ImageErrorCode.EMPTY_FILE)
    image = _open(data, max_pixels=max_pixels, name=name)
    fmt = str(image.format or "unknown")
    _load_pixels(image, max_pixels=max_pixels, name=name)
    image = _apply_orientation(image)
    try:
        rgb = to_rgb(image)
    except MemoryError:
        raise ImageError(
            f"{name}: not enough memory to convert this image", code=ImageErrorCode.TOO_MANY_PIXELS
        ) from None
    except Exception as exc:  # noqa: BLE001 - a mode or layout Pillow cannot convert
        raise ImageError(
            f"{name}: cannot be converted to RGB ({type(exc).__name__}: {exc})",
            code=ImageErrorCode.CORRUPT_IMAGE,
        ) from None
    return DecodedImage(image=rgb, width=rgb.width, height=rgb.height, format=fmt)


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the model: its uint8 pixels (H, W, 3) and what the file was."""

    pixels: np.ndarray
    width: int
    height: int
    format: str


def prepare_image(
    data: bytes, preprocessing: Preprocessing, *, max_pixels: int, name: str = "image"
) -> PreparedImage:
    """Untrusted bytes to model-ready pixels: the one path of the indexer, the CLI and the
    service. Raises ``ImageError`` for anything that cannot become pixels."""
    decoded = decode_image(data, max_pixels=max_pixels, name=name)
    try:
        pixels = preprocessing.to_pixels(decoded.image)
    except MemoryError:
        raise ImageError(
            f"{name}: not enough memory to preprocess this image",
            code=ImageErrorCode.TOO_MANY_PIXELS,
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, the image is the cause
        raise ImageError(
            f"{name}: cannot be preprocessed ({type(exc).__name__}: {exc})",
            code=ImageErrorCode.CORRUPT_IMAGE,
        ) from None
    return PreparedImage(pixels, decoded.width, decoded.height, decoded.format)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, without decoding pixels. ``orientation`` is the EXIF tag (1-8)."""

    format: str
    width: int
    height: int
    orientation: int


def inspect_image(data: bytes, *, max_pixels: int, name: str = "image") -> ImageHeader:
    """Check format and pixel limit and read the EXIF orientation, decoding no pixels.

    For decoders other than Pillow (nvJPEG): the same refusals as ``decode_image`` for
    everything a header can tell.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes)", code=ImageErrorCode.EMPTY_FILE)
    image = _open(data, max_pixels=max_pixels, name=name)
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF: no orientation, as in decode_image
        orientation = 1
    return ImageHeader(
        format=str(image.format or "unknown"),
        width=image.width,
        height=image.height,
        orientation=orientation if 1 <= orientation <= 8 else 1,
    )


def _open(data: bytes, *, max_pixels: int, name: str) -> Image.Image:
    allowed = allowed_formats()
    sniffed = sniff_format(data[:_SNIFF_BYTES])
    try:
        image = Image.open(io.BytesIO(data), formats=list(allowed))
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, None, max_pixels) from None
    except UnidentifiedImageError:
        if sniffed in allowed:
            raise ImageError(
                f"{name}: looks like a {sniffed} file but its header cannot be read; "
                "the file is corrupt",
                code=ImageErrorCode.CORRUPT_IMAGE,
            ) from None
        if sniffed is not None:
            raise ImageError(
                f"{name}: {sniffed} files are not supported; supported image formats: "
                f"{', '.join(allowed)}",
                code=ImageErrorCode.UNSUPPORTED_FORMAT,
            ) from None
        raise ImageError(
            f"{name}: not an image file (no known image signature)",
            code=ImageErrorCode.NOT_AN_IMAGE,
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on bad headers
        raise ImageError(
            f"{name}: corrupt image header ({type(exc).__name__}: {exc})",
            code=ImageErrorCode.CORRUPT_IMAGE,
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(
            f"{name}: image has no pixels ({width}x{height})", code=ImageErrorCode.CORRUPT_IMAGE
        )
    if width * height > max_pixels:
        raise _too_many_pixels(name, (width, height), max_pixels)
    return image


def _too_many_pixels(name: str, size: tuple[int, int] | None, max_pixels: int) -> ImageError:
    remedy = "raise DINOSEEK_MAX_IMAGE_PIXELS to accept larger images"
    if size is None:
        message = f"{name}: image is larger than Pillow's decompression-bomb limit; refused"
    else:
        message = (
            f"{name}: image is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than "
            f"the limit of {max_pixels:,} ({remedy})"
        )
    return ImageError(message, code=ImageErrorCode.TOO_MANY_PIXELS)


def _load_pixels(image: Image.Image, *, max_pixels: int, name: str) -> None:
    try:
        image.load()
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, image.size, max_pixels) from None
    except EOFError:
        raise ImageError(
            f"{name}: image data ends early; the file is truncated",
            code=ImageErrorCode.TRUNCATED_IMAGE,
        ) from None
    except MemoryError:
        raise ImageError(
            f"{name}: not enough memory to decode this image", code=ImageErrorCode.TOO_MANY_PIXELS
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad data
        text = str(exc)
        if "truncated" in text or "broken data stream" in text:
            raise ImageError(
                f"{name}: image data ends early; the file is truncated ({text})",
                code=ImageErrorCode.TRUNCATED_IMAGE,
            ) from None
        raise ImageError(
            f"{name}: image data is corrupt ({type(exc).__name__}: {text})",
            code=ImageErrorCode.CORRUPT_IMAGE,
        ) from None


def _apply_orientation(image: Image.Image) -> Image.Image:
    # In place: without an orientation to apply, exif_transpose would return a full copy.
    # A malformed EXIF block must not reject a good image.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping high-depth data."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scale_to_8bit(image).convert("RGB")
    if mode == "P":
        if "transparency" not in image.info:
            return image.convert("RGB")
        image = image.convert("RGBA")
    elif mode == "La":  # premultiplied: Pillow converts it to LA only
        image = image.convert("LA").convert("RGBA")
    elif mode in ("PA", "LA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND_RGB)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer or float greyscale to 8 bits over its full range
    (non-finite values count as 0), a block at a time: beside the image and its 8-bit
    result, the memory of a few rows, not of a (float64) copy of the whole image."""
    if image.mode.startswith("I;16"):
        return _scale_16bit(image)
    low, high = _value_range(image)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    elif image.mode == "I" and low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    return _scale_rows(image, low, high)


def _blocks(image: Image.Image) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """(where, its values) for consecutive blocks of at most ``_BLOCK_PIXELS``: rows of the
    image, or parts of a row when one row is longer."""
    width, height = image.size
    columns = min(width, _BLOCK_PIXELS)
    rows = max(1, _BLOCK_PIXELS // columns)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        for left in range(0, width, columns):
            right = min(width, left + columns)
            values = np.asarray(image.crop((left, top, right, bottom)))
            yield (slice(top, bottom), slice(left, right)), values


def _scale_16bit(image: Image.Image) -> Image.Image:
    """``rint(v * 255 / 65535)`` in integers (no ``v`` is a tie: ``v * 510`` is even and
    ``65535 * odd`` is not, so the integer rounding equals ``rint``)."""
    scaled = np.empty((image.height, image.width), dtype=np.uint8)
    for where, block in _blocks(image):
        scaled[where] = (block.astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(scaled, mode="L")


def _finite(block: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when cast; they become 0
        return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _value_range(image: Image.Image) -> tuple[float, float]:
    """(min, max) of the values, non-finite ones as 0; (0, 1) for an image without pixels."""
    low, high = np.inf, -np.inf
    for _, block in _blocks(image):
        if block.size:
            values = _finite(block)
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return (low, high) if low <= high else (0.0, 1.0)


def _scale_rows(image: Image.Image, low: float, high: float) -> Image.Image:
    """``rint((v - low) * 255 / (high - low))``, clipped to 0..255, as 8-bit greyscale."""
    span = high - low if high > low else 1.0
    scaled = np.empty((image.height, image.width), dtype=np.uint8)
    for where, block in _blocks(image):
        scaled[where] = np.clip(np.rint((_finite(block) - low) * (255.0 / span)), 0, 255)
    return Image.fromarray(scaled, mode="L")


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
