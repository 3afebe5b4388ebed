"""Image decoding: the one path that index time and query time share.

``decode_image`` turns untrusted bytes into an RGB ``PIL.Image`` or raises an ``ImageError``
whose ``code`` says why. ``prepare_image`` then applies the model's ``Preprocessing``
(``dinoseek.preprocessing``) to make the fixed-size uint8 array the model's processor would
produce before normalisation; normalisation itself runs batched on the model's device (see
``torch_embedder``).

This module needs neither torch nor transformers, so decode workers start fast.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dinoseek.errors import ImageError, ImageErrorCode
from dinoseek.preprocessing import Preprocessing

# Formats decoded by Pillow itself. (Multi-picture JPEGs from cameras open through JPEG, as MPO.)
BASE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Formats accepted only when a plugin (pillow's AVIF support, pillow-heif) is installed.
PLUGIN_FORMATS: tuple[str, ...] = ("AVIF", "HEIF")

# Transparent pixels are composited onto this colour, so that a PNG with alpha and the same
# picture flattened onto white give the same embedding.
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)

_SNIFF_BYTES = 32
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
