"""Decoding untrusted images: every bad input gets its code, every odd mode a sane RGB image."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoseek.errors import ImageError, ImageErrorCode
from dinoseek.images import (
    BACKGROUND_RGB,
    ImageHeader,
    allowed_formats,
    decode_image,
    image_extensions,
    inspect_image,
    load_image,
    prepare_image,
    read_image_bytes,
    sniff_format,
    to_rgb,
)
from dinoseek.preprocessing import (
    DINOV2_PREPROCESSING,
    Preprocessing,
    preprocessing_from_processor_config,
)
from dinoseek.synthetic import DINOV2_PROCESSOR
from tests.helpers import bad_image_samples, encode, photo, png_chunk, png_header_only

MAX_PIXELS = 40_000_000


@pytest.mark.parametrize(("name", "sample"), sorted(bad_image_samples().items()))
def test_bad_input_is_rejected_with_its_code(name: str, sample: tuple[bytes, str]) -> None:
    data, expected_code = sample
    started = time.thread_time()  # this thread's CPU time: the work, not the machine's load
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=MAX_PIXELS, name=name)
    assert caught.value.code == expected_code
    assert name in caught.value.message
    assert time.thread_time() - started < 2.0, "rejecting a bad file must not decode it"


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
    none (memory per decode is what docs/security.md states)."""
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


# -- exact messages, limits at their boundary, values against a plain reference ------------


def message_of(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> tuple[str, str]:
    """(code, message) of the ``ImageError`` that decoding ``data`` raises."""
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=max_pixels, name=name)
    return caught.value.code, caught.value.message


def test_each_bad_input_gets_its_exact_message() -> None:
    samples = bad_image_samples()
    supported = ", ".join(allowed_formats())
    expected = {
        "empty.jpg": "empty.jpg: the file is empty (0 bytes)",
        "noise.png": "noise.png: not an image file (no known image signature)",
        "notes.jpg": "notes.jpg: not an image file (no known image signature)",
        "document.jpg": (
            f"document.jpg: PDF files are not supported; supported image formats: {supported}"
        ),
        "drawing.png": (
            f"drawing.png: SVG files are not supported; supported image formats: {supported}"
        ),
        "bomb.png": "bomb.png: image is larger than Pillow's decompression-bomb limit; refused",
        "huge.png": (
            "huge.png: image is 8000x6000 = 48,000,000 pixels, more than the limit of "
            "40,000,000 (raise DINOSEEK_MAX_IMAGE_PIXELS to accept larger images)"
        ),
    }
    for name, message in expected.items():
        data, code = samples[name]
        assert message_of(data, name) == (code, message)
    # Pillow's own words vary with its version; ours around them do not.
    patterns = {
        "garbage.jpg": r"garbage\.jpg: corrupt image header \(OSError: .+\)",
        "truncated.jpg": r"truncated\.jpg: image data ends early; the file is truncated "
        r"\(.*trunc.*\)",
        "truncated.png": r"truncated\.png: image data ends early; the file is truncated "
        r"\(.*trunc.*\)",
    }
    for name, pattern in patterns.items():
        data, code = samples[name]
        got_code, message = message_of(data, name)
        assert got_code == code
        assert re.fullmatch(pattern, message), message


@pytest.mark.parametrize(
    ("fmt", "head"),
    [
        ("JPEG", b"\xff\xd8\xff"),
        ("PNG", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
        ("GIF", b"GIF89a" + b"\x00" * 3),
        ("TIFF", b"II*\x00" + b"\xff" * 40),
        ("WEBP", b"RIFF\x00\x00\x00\x00WEBPjunk" + b"\x00" * 20),
    ],
)
def test_a_known_signature_with_a_broken_header_is_corrupt(fmt: str, head: bytes) -> None:
    assert message_of(head, "photo") == (
        ImageErrorCode.CORRUPT_IMAGE,
        f"photo: looks like a {fmt} file but its header cannot be read; the file is corrupt",
    )


def test_a_signature_of_a_format_not_allowed_is_named() -> None:
    """ICO is a real image format Pillow reads, but not one dinoseek accepts."""
    code, message = message_of(encode(photo(0, (32, 32)), "ICO"), "favicon.ico")
    assert code == ImageErrorCode.UNSUPPORTED_FORMAT
    assert message == (
        "favicon.ico: ICO files are not supported; supported image formats: "
        f"{', '.join(allowed_formats())}"
    )


def test_the_pixel_limit_at_its_boundary() -> None:
    """``width * height`` equal to the limit is decoded; one pixel over is refused, from the
    header alone, by ``decode_image`` and ``inspect_image`` alike."""
    data = encode(photo(0, (200, 100)), "PNG")
    assert decode_image(data, max_pixels=20_000).width == 200
    assert inspect_image(data, max_pixels=20_000).width == 200
    message = (
        "p.png: image is 200x100 = 20,000 pixels, more than the limit of 19,999 "
        "(raise DINOSEEK_MAX_IMAGE_PIXELS to accept larger images)"
    )
    assert message_of(data, "p.png", max_pixels=19_999) == (
        ImageErrorCode.TOO_MANY_PIXELS,
        message,
    )
    with pytest.raises(ImageError) as caught:
        inspect_image(data, max_pixels=19_999, name="p.png")
    assert (caught.value.code, caught.value.message) == (ImageErrorCode.TOO_MANY_PIXELS, message)
    header_only = png_header_only(10_000, 5_000)  # 5e7 pixels: refused before decoding
    with pytest.raises(ImageError) as big:
        inspect_image(header_only, max_pixels=49_999_999, name="h.png")
    assert big.value.message.startswith("h.png: image is 10000x5000 = 50,000,000 pixels")


def test_the_file_size_limit_at_its_boundary(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    data = encode(photo(0, (40, 30)), "PNG")
    path.write_bytes(data)
    assert read_image_bytes(path, max_bytes=len(data)) == data
    assert load_image(path, max_pixels=MAX_PIXELS, max_bytes=len(data)).width == 40
    with pytest.raises(ImageError) as caught:
        read_image_bytes(path, max_bytes=len(data) - 1)
    assert caught.value.code == ImageErrorCode.FILE_TOO_LARGE
    assert caught.value.message == (
        f"{path}: file is {len(data):,} bytes, more than the limit of {len(data) - 1:,}"
    )


def test_unreadable_paths_get_their_exact_messages(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    cases = [
        (
            tmp_path / "gone.jpg",
            ImageErrorCode.FILE_NOT_FOUND,
            "file not found (was it moved or deleted?)",
        ),
        (tmp_path, ImageErrorCode.FILE_UNREADABLE, "is a directory, not an image file"),
        (  # a file where a folder is expected: ENOTDIR, an OSError of its own
            plain / "inside.jpg",
            ImageErrorCode.FILE_UNREADABLE,
            "cannot be read (Not a directory); check its permissions",
        ),
    ]
    for path, code, text in cases:
        for max_bytes in (None, 10**9):  # with a limit, the size is read first
            with pytest.raises(ImageError) as caught:
                load_image(path, max_pixels=MAX_PIXELS, max_bytes=max_bytes)
            assert (caught.value.code, caught.value.message) == (code, f"{path}: {text}")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\xff\xd8\xfe", None),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"\x89PNG\r\n\x1a", None),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"GIF90a", None),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"XIFF\x10\x00\x00\x00WEBPVP8 ", None),
        (b"BM\x00\x00", "BMP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"II+\x00", "TIFF"),
        (b"MM\x00+", "TIFF"),
        (b"II*\x01", None),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "AVIF"),  # the brand is 4 bytes
        (b"\x00\x00\x00\x1cftypavis\x00\x00\x00\x00", "AVIF"),
        *[
            (b"\x00\x00\x00\x18ftyp" + brand + b"\x00\x00\x00\x00", "HEIF")
            for brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis")
        ],
        (b"\x00\x00\x00\x18ftypisom", None),  # an MP4 video
        (b"\x00\x00\x00\x18ftyp%PDF", None),  # ftyp decides, whatever follows
        (b"%PDF-1.7", "PDF"),
        (b"8BPS\x00\x01", "PSD"),
        (b"\x00\x00\x01\x00\x01\x00", "ICO"),
        (b"\xff\x0a\xfa", "JPEG XL"),
        (b"\x00\x00\x00\x0cjXL \r\n\x87\n", "JPEG XL"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"qoif\x00\x00", "QOI"),
        (b"  \n<svg xmlns=", "SVG"),
        (b'<?xml version="1.0"?>', "SVG"),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_sniffing_each_signature(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_allowed_formats_and_their_extensions() -> None:
    """The base formats always, in order; a plugin format only where Pillow can open it."""
    Image.init()
    allowed = allowed_formats()
    plugins = tuple(name for name in ("AVIF", "HEIF") if name in Image.OPEN)
    assert allowed == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", *plugins)
    base = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib"}
    extra = {"AVIF": {".avif"}, "HEIF": {".heic", ".heif"}}
    expected = base | {".tif", ".tiff"} | {ext for name in plugins for ext in extra[name]}
    assert image_extensions() == expected


def jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(0, (40, 30)), "JPEG", exif=exif.tobytes())


def test_inspecting_reads_the_header_and_the_orientation() -> None:
    for orientation in range(1, 9):
        header = inspect_image(jpeg_with_orientation(orientation), max_pixels=1200)
        assert header == ImageHeader(format="JPEG", width=40, height=30, orientation=orientation)
    for invalid in (0, 9, 300):
        assert inspect_image(jpeg_with_orientation(invalid), max_pixels=1200).orientation == 1
    malformed = encode(
        photo(1, (40, 30)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"
    )
    assert inspect_image(malformed, max_pixels=1200).orientation == 1
    png = inspect_image(encode(photo(0, (40, 30)), "PNG"), max_pixels=1200)
    assert png == ImageHeader(format="PNG", width=40, height=30, orientation=1)
    with pytest.raises(ImageError) as empty:
        inspect_image(b"", max_pixels=1200, name="e.jpg")
    assert (empty.value.code, empty.value.message) == (
        ImageErrorCode.EMPTY_FILE,
        "e.jpg: the file is empty (0 bytes)",
    )


def test_a_rotated_image_reports_its_displayed_size() -> None:
    decoded = decode_image(jpeg_with_orientation(8), max_pixels=1200)
    assert (decoded.width, decoded.height, decoded.format) == (30, 40, "JPEG")
    assert decoded.image.size == (30, 40)


def reference_scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The 8-bit scaling done plainly: rint((v - low) * 255 / (high - low)), clipped."""
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    span = high - low if high > low else 1.0
    return np.clip(np.rint((finite - low) * 255.0 / span), 0, 255).astype(np.uint8)


def red_channel(image: Image.Image) -> np.ndarray:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    pixels = np.asarray(rgb)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    return pixels[..., 0]


def test_16_bit_values_scale_exactly_as_rint() -> None:
    values = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    for mode in ("I;16", "I;16B"):
        image = Image.fromarray(values).convert("I").convert(mode) if mode != "I;16" else None
        image = Image.fromarray(values) if image is None else image
        assert image.mode == mode
        assert np.array_equal(red_channel(image), expected)


def test_32_bit_integers_scale_over_16_bits_or_their_range() -> None:
    within = np.array([[0, 1, 257, 32768, 65535]], dtype=np.int32)
    assert red_channel(Image.fromarray(within, mode="I")).tolist() == [[0, 0, 1, 128, 255]]
    small = np.array([[3, 100, 500]], dtype=np.int32)  # within 0..65535: not stretched
    assert red_channel(Image.fromarray(small, mode="I")).tolist() == [
        reference_scale(small, 0, 65535).tolist()[0]
    ]
    wide = np.array([[-5, 0, 1000, 100_000]], dtype=np.int32)
    assert np.array_equal(
        red_channel(Image.fromarray(wide, mode="I")), reference_scale(wide, -5, 100_000)
    )
    negative = np.array([[-10, -5, 0]], dtype=np.int32)
    assert red_channel(Image.fromarray(negative, mode="I")).tolist() == [[0, 128, 255]]
    # the bounds of 0..65535 belong to it
    low_edge = np.array([[0, 500]], dtype=np.int32)
    assert red_channel(Image.fromarray(low_edge, mode="I")).tolist() == [[0, 2]]
    high_edge = np.array([[30000, 65535]], dtype=np.int32)
    assert red_channel(Image.fromarray(high_edge, mode="I")).tolist() == [[117, 255]]
    over = np.array([[0, 65536]], dtype=np.int32)
    assert red_channel(Image.fromarray(over, mode="I")).tolist() == [[0, 255]]


def test_floats_scale_over_0_1_or_their_range() -> None:
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    assert red_channel(Image.fromarray(unit, mode="F")).tolist() == [[0, 64, 128, 255]]
    inside = np.array([[0.2, 0.4]], dtype=np.float32)  # within 0..1: not stretched
    assert red_channel(Image.fromarray(inside, mode="F")).tolist() == [[51, 102]]
    wide = np.array([[-1.0, 0.0, 3.0]], dtype=np.float32)
    assert red_channel(Image.fromarray(wide, mode="F")).tolist() == [[0, 64, 255]]
    above = np.array([[0.5, 2.0]], dtype=np.float32)
    assert red_channel(Image.fromarray(above, mode="F")).tolist() == [[0, 255]]
    # the bounds of 0..1 belong to it
    assert red_channel(Image.fromarray(np.array([[0.0, 0.5]], "f4"), mode="F")).tolist() == [
        [0, 128]
    ]
    assert red_channel(Image.fromarray(np.array([[0.5, 1.0]], "f4"), mode="F")).tolist() == [
        [128, 255]
    ]
    odd = np.array([[np.nan, np.inf, -np.inf, 2.0, 4.0]], dtype=np.float32)
    assert red_channel(Image.fromarray(odd, mode="F")).tolist() == [[0, 0, 0, 128, 255]]
    flat = np.full((2, 3), 7.0, dtype=np.float32)  # one value: no range to stretch
    assert red_channel(Image.fromarray(flat, mode="F")).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_scaling_goes_block_by_block_over_large_images() -> None:
    """Over 2**20 pixels the values are read in blocks of rows, or of parts of one row when
    a row is longer: the result is that of the whole image scaled at once."""
    rng = np.random.default_rng(3)
    for height, width in ((1100, 1000), (2, 1_100_000), (3, 700_000)):
        values = rng.integers(-1000, 200_000, (height, width), dtype=np.int32)
        values[-1, -1] = 250_000  # the maximum in the last block
        expected = reference_scale(values, float(values.min()), 250_000.0)
        assert np.array_equal(red_channel(Image.fromarray(values, mode="I")), expected)
    wide16 = rng.integers(0, 65536, (2, 1_100_000), dtype=np.uint16)
    expected16 = np.rint(wide16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(red_channel(Image.fromarray(wide16)), expected16)


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("RGBA", (10, 20, 30, 0), BACKGROUND_RGB),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("LA", (40, 0), BACKGROUND_RGB),
        ("LA", (40, 255), (40, 40, 40)),
        ("La", (40, 255), (40, 40, 40)),
        ("La", (0, 0), BACKGROUND_RGB),
        ("RGBa", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBa", (0, 0, 0, 0), BACKGROUND_RGB),
        ("L", 77, (77, 77, 77)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ],
)
def test_each_mode_becomes_the_rgb_it_shows(
    mode: str, pixel: tuple[int, ...] | int, expected: tuple[int, int, int]
) -> None:
    image = Image.new(mode, (3, 2), pixel)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.size == (3, 2)
    assert rgb.getpixel((2, 1)) == expected


def test_palette_images_with_and_without_transparency() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.putpixel((1, 0), 1)
    assert [to_rgb(image).getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), (0, 0, 255)]
    image.info["transparency"] = 1
    assert [to_rgb(image).getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), BACKGROUND_RGB]
    pa = Image.new("PA", (1, 1))
    pa.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    pa.putpixel((0, 0), (0, 255))
    assert to_rgb(pa).getpixel((0, 0)) == (0, 255, 0)
    pa.putpixel((0, 0), (0, 0))
    assert to_rgb(pa).getpixel((0, 0)) == BACKGROUND_RGB


def test_an_rgb_image_is_returned_as_it_is() -> None:
    image = photo(0, (8, 8))
    assert to_rgb(image) is image


def test_the_dinov2_preprocessing_describes_itself() -> None:
    assert DINOV2_PREPROCESSING.describe() == {
        "resize_shortest_edge": 256,
        "resize_to": None,
        "resample": "bicubic",
        "crop": [224, 224],
        "rescale_factor": 0.0039215686,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    fixed = preprocessing_from_processor_config(
        {
            **DINOV2_PROCESSOR,
            "size": {"height": 300, "width": 200},
            "do_center_crop": False,
            "resample": "bilinear",
            "image_mean": [0.1234567, 0.5, 0.75],
            "image_std": [0.2, 0.3, 0.7654321],
            "rescale_factor": 0.5,
        }
    )
    assert fixed.describe() == {
        "resize_shortest_edge": None,
        "resize_to": [300, 200],
        "resample": "bilinear",
        "crop": None,
        "rescale_factor": 0.5,
        "mean": [0.123457, 0.5, 0.75],
        "std": [0.2, 0.3, 0.765432],
    }
    assert fixed.output_size == (300, 200)


def test_resized_sizes_follow_transformers() -> None:
    """The short edge becomes 256 and the long one ``int(256 * long / short)``."""
    p = DINOV2_PREPROCESSING
    assert p.resized_size(500, 375) == (341, 256)
    assert p.resized_size(375, 500) == (256, 341)
    assert p.resized_size(300, 300) == (256, 256)
    assert p.resized_size(100, 299) == (256, 765)  # 765.44 truncated
    fixed = preprocessing_from_processor_config(
        {**DINOV2_PROCESSOR, "size": {"height": 30, "width": 20}}
    )
    assert fixed.resized_size(500, 375) == (20, 30)
    none = preprocessing_from_processor_config({**DINOV2_PROCESSOR, "do_resize": False})
    assert none.resized_size(500, 375) == (500, 375)


def test_an_image_is_resized_whole_up_to_16_times_the_input() -> None:
    """224 x 224 x 16 = 802,816 pixels: a 256 x 3136 resize is exactly that, one more row
    of the original is not."""
    p = DINOV2_PREPROCESSING
    assert p.resized_size(100, 1225) == (256, 3136)
    assert 256 * 3136 == 16 * 224 * 224
    assert p.resizes_whole(100, 1225)
    assert p.resizes_whole(1225, 100)
    assert p.resized_size(100, 1226) == (256, 3138)
    assert not p.resizes_whole(100, 1226)
    assert not p.resizes_whole(1226, 100)


def test_output_size_needs_a_crop_or_a_fixed_resize() -> None:
    shortest_only = Preprocessing(
        resize_shortest_edge=256,
        resize_to=None,
        resample=3,
        crop=None,
        rescale_factor=1 / 255,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    message = "preprocessing without a crop or a fixed resize has no fixed size"
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        _ = shortest_only.output_size
    assert str(caught.value) == message
    # to_pixels still resizes it, to the shortest edge
    assert shortest_only.to_pixels(photo(0, (40, 20))).shape == (256, 512, 3)


def noise(width: int, height: int) -> Image.Image:
    """Random RGB pixels: where resampling filters differ."""
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def test_a_fixed_resize_without_a_crop_matches_a_plain_resize() -> None:
    p = preprocessing_from_processor_config(  # bilinear: not Pillow's default filter
        {
            **DINOV2_PROCESSOR,
            "size": {"height": 30, "width": 20},
            "do_center_crop": False,
            "resample": 2,
        }
    )
    image = noise(64, 48)
    expected = np.asarray(image.resize((20, 30), resample=Image.Resampling.BILINEAR))
    assert not np.array_equal(expected, np.asarray(image.resize((20, 30))))
    assert np.array_equal(p.to_pixels(image), expected)
    same = photo(2, (20, 30))  # already that size: untouched
    assert np.array_equal(p.to_pixels(same), np.asarray(same))


def test_an_image_smaller_than_the_crop_is_centred_on_zeros() -> None:
    p = preprocessing_from_processor_config({**DINOV2_PROCESSOR, "do_resize": False})
    image = photo(5, (101, 50))
    expected = np.zeros((224, 224, 3), dtype=np.uint8)
    top, left = math.ceil((224 - 50) / 2), math.ceil((224 - 101) / 2)  # as transformers pads
    assert (top, left) == (87, 62)
    expected[top : top + 50, left : left + 101] = np.asarray(image)
    pixels = p.to_pixels(image)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, expected)
    wide = photo(6, (300, 50))  # wider than the crop, lower than it
    expected = np.zeros((224, 224, 3), dtype=np.uint8)
    top, left = math.ceil((224 - 50) / 2), (300 - 224) // 2
    expected[top : top + 50] = np.asarray(wide)[:, left : left + 224]
    assert np.array_equal(p.to_pixels(wide), expected)


def test_an_extreme_image_resizes_only_its_crop_window() -> None:
    """Beyond 16 times the input, the crop window is resized from the matching box of the
    original: compared with Pillow's own box resize of that window."""
    p = dataclasses.replace(DINOV2_PREPROCESSING, resample=Image.Resampling.BILINEAR)
    image = noise(2000, 20)
    assert not p.resizes_whole(2000, 20)
    new_width, new_height = p.resized_size(2000, 20)
    left = (new_width - 224) // 2
    scale_x, scale_y = 2000 / new_width, 20 / new_height
    box = (left * scale_x, 16 * scale_y, (left + 224) * scale_x, 240 * scale_y)
    expected = np.asarray(image.resize((224, 224), resample=p.resample, box=box))
    assert not np.array_equal(expected, np.asarray(image.resize((224, 224), box=box)))
    assert np.array_equal(p.to_pixels(image), expected)


def test_processor_configs_and_their_refusals() -> None:
    base = DINOV2_PROCESSOR
    plain = preprocessing_from_processor_config(
        {**base, "do_rescale": False, "do_normalize": False, "resample": 2}
    )
    assert (plain.rescale_factor, plain.mean, plain.std) == (1.0, (0.0,) * 3, (1.0,) * 3)
    assert plain.resample == Image.Resampling.BILINEAR
    defaults = preprocessing_from_processor_config(
        {
            "size": {"shortest_edge": 10},
            "crop_size": {"height": 8, "width": 6},
            "image_mean": [0.5] * 3,
            "image_std": [0.25] * 3,
        }
    )
    assert defaults == Preprocessing(
        resize_shortest_edge=10,
        resize_to=None,
        resample=Image.Resampling.BICUBIC,
        crop=(8, 6),
        rescale_factor=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )

    class Mode:  # torchvision's InterpolationMode: an enum named like Pillow's filters
        name = "nearest"

    assert preprocessing_from_processor_config({**base, "resample": Mode()}).resample == 0
    refusals = [
        (
            {**base, "size": {"shortest_edge": 10, "longest_edge": 20}},
            "unsupported resize setting in the image processor: "
            "{'shortest_edge': 10, 'longest_edge': 20}",
        ),
        (
            {**base, "size": {"height": 10}},
            "unsupported resize setting in the image processor: {'height': 10}",
        ),
        (
            {**base, "crop_size": {"height": 10}},
            "unsupported crop setting in the image processor: {'height': 10}",
        ),
        (
            {**base, "crop_size": None},
            "unsupported crop setting in the image processor: {}",
        ),
        (
            {**base, "do_center_crop": False},
            "the image processor neither crops nor resizes to a fixed size",
        ),
        (
            {**base, "image_mean": [0.5, 0.5]},
            "image_mean and image_std must have three values",
        ),
        (
            {**base, "image_std": [0.5] * 4},
            "image_mean and image_std must have three values",
        ),
    ]
    for config, message in refusals:
        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            preprocessing_from_processor_config(config)
        assert str(caught.value) == message
    no_resize = preprocessing_from_processor_config({**base, "do_resize": False, "size": None})
    assert (no_resize.resize_shortest_edge, no_resize.resize_to) == (None, None)


def test_prepare_image_reports_the_file_and_a_preprocessing_failure() -> None:
    data = encode(photo(0, (40, 30)), "PNG")
    prepared = prepare_image(data, DINOV2_PREPROCESSING, max_pixels=1200)
    assert (prepared.width, prepared.height, prepared.format) == (40, 30, "PNG")
    assert np.array_equal(
        prepared.pixels, DINOV2_PREPROCESSING.to_pixels(decode_image(data, max_pixels=1200).image)
    )
    broken = dataclasses.replace(DINOV2_PREPROCESSING, resample=99)  # no such filter
    with pytest.raises(ImageError) as caught:
        prepare_image(data, broken, max_pixels=1200, name="x.png")
    assert caught.value.code == ImageErrorCode.CORRUPT_IMAGE
    assert caught.value.message.startswith(
        "x.png: cannot be preprocessed (ValueError: Unknown resampling filter (99)."
    )
    with pytest.raises(ImageError) as limited:
        prepare_image(data, DINOV2_PREPROCESSING, max_pixels=1199, name="x.png")
    assert limited.value.code == ImageErrorCode.TOO_MANY_PIXELS


def test_errors_name_the_file_or_image_by_default(tmp_path: Path) -> None:
    """``load_image`` names the path; ``prepare_image`` the name it is given; without a name,
    "image"."""
    path = tmp_path / "cut.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageError) as loaded:
        load_image(path, max_pixels=MAX_PIXELS)
    assert loaded.value.message.startswith(f"{path}: looks like a PNG file")
    with pytest.raises(ImageError) as prepared:
        prepare_image(b"", DINOV2_PREPROCESSING, max_pixels=MAX_PIXELS, name="up.jpg")
    assert prepared.value.message == "up.jpg: the file is empty (0 bytes)"
    for call in (
        lambda: decode_image(b"", max_pixels=MAX_PIXELS),
        lambda: inspect_image(b"", max_pixels=MAX_PIXELS),
        lambda: prepare_image(b"", DINOV2_PREPROCESSING, max_pixels=MAX_PIXELS),
    ):
        with pytest.raises(ImageError) as caught:
            call()
        assert caught.value.message == "image: the file is empty (0 bytes)"


def png_with_damaged_pixels() -> bytes:
    """A PNG whose compressed pixel data is damaged (its chunk checksum recomputed)."""
    png = encode(photo(0, (64, 48)), "PNG")
    start = png.index(b"IDAT")
    length = int.from_bytes(png[start - 4 : start], "big")
    data = bytearray(png[start + 4 : start + 4 + length])
    for k in range(10, len(data), 7):
        data[k] ^= 0x55
    return png[: start - 4] + png_chunk(b"IDAT", bytes(data)) + png[start + 8 + length :]


def test_damaged_pixel_data_is_truncated_or_corrupt() -> None:
    """Pillow's "broken data stream" reads as a file cut short; another decoder failure
    (here among damaged JPEGs) is corrupt data, with the exception's type and words."""
    assert message_of(png_with_damaged_pixels(), "d.png") == (
        ImageErrorCode.TRUNCATED_IMAGE,
        "d.png: image data ends early; the file is truncated (broken data stream when "
        "reading image file)",
    )
    jpeg = encode(photo(0, (64, 48)), "JPEG")
    corrupt = []
    for seed in range(30):
        rng = random.Random(seed)
        data = bytearray(jpeg)
        for _ in range(20):
            data[rng.randrange(len(jpeg) // 3, len(jpeg))] = rng.randrange(256)
        with contextlib.suppress(ImageError):
            decode_image(bytes(data), max_pixels=MAX_PIXELS, name="x.jpg")
            continue
        code, message = message_of(bytes(data), "x.jpg")
        if message.startswith("x.jpg: image data is corrupt"):
            assert code == ImageErrorCode.CORRUPT_IMAGE
            corrupt.append(message)
    assert corrupt, "no damaged JPEG failed in its pixel data"
    assert all(re.fullmatch(r"x\.jpg: image data is corrupt \(OSError: .+\)", m) for m in corrupt)


def test_an_orientation_that_is_not_a_number_reads_as_upright() -> None:
    exif = (  # one IFD entry: Orientation (0x0112) as the ASCII string "abc"
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x02\x00\x04\x00\x00\x00abc\x00"
        b"\x00\x00\x00\x00"
    )
    data = encode(photo(0, (40, 30)), "JPEG", exif=exif)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == "abc"
    assert inspect_image(data, max_pixels=1200).orientation == 1
    assert decode_image(data, max_pixels=1200).image.size == (40, 30)


def test_16_bit_values_are_not_stretched_over_their_range() -> None:
    """A dark 16-bit image stays dark: the scale is that of 16 bits, not of its values."""
    values = np.array([[0, 1000, 2000]], dtype=np.uint16)
    assert red_channel(Image.fromarray(values)).tolist() == [[0, 4, 8]]


def test_32_bit_integers_near_65535_scale_as_rint() -> None:
    """Every value of 0..65535 on the 16-bit scale, every value of 0..65536 on its range."""
    within = np.arange(0, 65536, dtype=np.int32).reshape(256, 256)
    assert np.array_equal(
        red_channel(Image.fromarray(within, mode="I")), reference_scale(within, 0, 65535)
    )
    beyond = np.arange(0, 65537, dtype=np.int32).reshape(1, 65537)
    assert np.array_equal(
        red_channel(Image.fromarray(beyond, mode="I")), reference_scale(beyond, 0, 65536)
    )


def test_a_signalling_nan_becomes_0_without_a_warning() -> None:
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    values.view(np.uint32)[0, 0] = 0x7FA00000  # a signalling NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert red_channel(Image.fromarray(values, mode="F")).tolist() == [[0, 170, 255]]
