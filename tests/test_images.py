"""Decoding untrusted images: every bad input gets its code, every odd mode a sane RGB image."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoseek.errors import ImageError, ImageErrorCode
from dinoseek.images import (
    BACKGROUND_RGB,
    allowed_formats,
    decode_image,
    load_image,
    preprocessing_from_processor_config,
    sniff_format,
)
from dinoseek.synthetic import DINOV2_PROCESSOR
from tests.helpers import bad_image_samples, encode, photo

MAX_PIXELS = 40_000_000


@pytest.mark.parametrize(("name", "sample"), sorted(bad_image_samples().items()))
def test_bad_input_is_rejected_with_its_code(name: str, sample: tuple[bytes, str]) -> None:
    data, expected_code = sample
    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, name=name)
    assert caught.value.code == expected_code
    assert name in caught.value.message
    assert time.perf_counter() - started < 2.0, "rejecting a bad file must be quick"


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(photo(0, (200, 100)), "PNG")
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=200 * 100 - 1)
    assert caught.value.code == ImageErrorCode.TOO_MANY_PIXELS
    assert "200x100" in caught.value.message
    assert decode_image(data, max_pixels=200 * 100).width == 200


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    decoded = decode_image(encode(photo(3, (64, 48)), fmt), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (64, 48)
    assert decoded.format == fmt


def test_unsupported_but_real_image_format_is_named() -> None:
    data = encode(photo(0, (32, 32)), "ICO")
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, name="favicon.ico")
    assert caught.value.code == ImageErrorCode.UNSUPPORTED_FORMAT
    assert "ICO" in caught.value.message


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()), max_pixels=MAX_PIXELS)
    assert (decoded.width, decoded.height) == (20, 40)


def test_an_upright_image_is_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each full copy of a decoded image is as large as the image: an upright RGB one takes
    none (memory per decode is what the README states)."""
    copies: list[tuple[int, int]] = []
    copy = Image.Image.copy

    def counted_copy(image: Image.Image) -> Image.Image:
        copies.append(image.size)
        return copy(image)

    monkeypatch.setattr(Image.Image, "copy", counted_copy)
    for fmt in ("PNG", "JPEG"):
        decode_image(encode(photo(1, (64, 48)), fmt), max_pixels=MAX_PIXELS)
    assert copies == []


def test_malformed_exif_is_ignored_not_fatal() -> None:
    data = encode(photo(1, (40, 30)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert decoded.image.size == (40, 30)


def test_palette_transparency_is_composited_onto_background() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([255, 0, 0] * 256)
    image.info["transparency"] = 0
    decoded = decode_image(encode(image, "PNG", transparency=0), max_pixels=MAX_PIXELS)
    assert decoded.image.getpixel((5, 5)) == BACKGROUND_RGB


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_onto_background(mode: str) -> None:
    image = Image.new(mode, (10, 10))
    image.putpixel((0, 0), (0, 0, 0, 255) if mode == "RGBA" else (0, 255))
    decoded = decode_image(encode(image, "PNG"), max_pixels=MAX_PIXELS)
    assert decoded.image.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.image.getpixel((5, 5)) == BACKGROUND_RGB


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    reds = [decoded.image.getpixel((x, 0))[0] for x in range(4)]
    assert reds == [0, 64, 128, 255]


def test_float_image_is_scaled_over_its_range() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, "TIFF")
    decoded = decode_image(buffer.getvalue(), max_pixels=MAX_PIXELS)
    assert [decoded.image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize(("mode", "fmt"), [("CMYK", "JPEG"), ("1", "BMP"), ("L", "PNG")])
def test_other_modes_are_converted(mode: str, fmt: str) -> None:
    image = photo(4, (30, 20)).convert(mode)
    decoded = decode_image(encode(image, fmt), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (30, 20)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(buffer.getvalue(), max_pixels=MAX_PIXELS)
    red, _, blue = decoded.image.getpixel((8, 8))
    assert red > 200
    assert blue < 50


def test_missing_file_and_directory_get_clear_codes(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as missing:
        load_image(tmp_path / "gone.jpg", max_pixels=MAX_PIXELS)
    assert missing.value.code == ImageErrorCode.FILE_NOT_FOUND
    with pytest.raises(ImageError) as directory:
        load_image(tmp_path, max_pixels=MAX_PIXELS)
    assert directory.value.code == ImageErrorCode.FILE_UNREADABLE


def test_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encode(photo(0, (100, 100)), "PNG"))
    with pytest.raises(ImageError) as caught:
        load_image(path, max_pixels=MAX_PIXELS, max_bytes=100)
    assert caught.value.code == ImageErrorCode.FILE_TOO_LARGE


def test_sniffing_names_formats() -> None:
    assert sniff_format(encode(photo(0, (8, 8)), "JPEG")[:32]) == "JPEG"
    assert sniff_format(encode(photo(0, (8, 8)), "WEBP")[:32]) == "WEBP"
    assert sniff_format(b"%PDF-1.4") == "PDF"
    assert sniff_format(b"hello") is None
    assert "JPEG" in allowed_formats()


def test_preprocessing_reads_the_processor_config() -> None:
    preprocessing = preprocessing_from_processor_config(DINOV2_PROCESSOR)
    assert preprocessing.output_size == (224, 224)
    assert preprocessing.resized_size(500, 375) == (341, 256)
    pixels = preprocessing.to_pixels(photo(0, (500, 375)))
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8
    # An image smaller than the crop after resizing is padded, as transformers does.
    no_resize = preprocessing_from_processor_config({**DINOV2_PROCESSOR, "do_resize": False})
    assert no_resize.to_pixels(photo(0, (100, 50))).shape == (224, 224, 3)


def test_preprocessing_refuses_configs_it_cannot_reproduce() -> None:
    with pytest.raises(ValueError, match="resize"):
        preprocessing_from_processor_config({**DINOV2_PROCESSOR, "size": {"longest_edge": 10}})
