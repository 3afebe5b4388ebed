"""A bounded fuzz of the decode path (``prepare_image``: the one path of the indexer, the CLI
and the service). Hypothesis mutates seed images of every allowed format, made here: bytes
flipped, overwritten with extreme integers (most often in the header, where the sizes are),
inserted, deleted, truncated. A fixed number of cases, derandomized: the same run every time.

Every case must end in model-ready pixels or an ``ImageError`` with a known code, within a
time bound, and the whole run within a memory bound. The run has a process of its own
(``python -m tests.hostile.test_decode_fuzz``), so that its peak memory is its own.
"""

from __future__ import annotations

import io
import json
import resource
import struct
import subprocess
import sys
import time
import warnings
from collections import Counter
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from dinoseek.errors import ImageError, ImageErrorCode
from dinoseek.images import PreparedImage, allowed_formats, prepare_image
from dinoseek.preprocessing import DINOV2_PREPROCESSING

IMAGE_ERROR_CODES = {
    value for key, value in vars(ImageErrorCode).items() if key.isupper() and isinstance(value, str)
}
CASES = 2000
MAX_PIXELS = 40_000_000  # the service's default
CASE_TIME_LIMIT_S = 5.0
RUN_MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024  # a decode at the pixel limit takes ~400 MB
RUN_TIME_LIMIT_S = 240
MAGIC_BYTES = 8
HEADER_BYTES = 64
OUTCOMES: Counter[str] = Counter()  # how the cases ended: "pixels" or an error code
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy edge cases are bugs
REPO = __file__.rsplit("/tests/", 1)[0]
EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def premultiplied_tiff(grey_alpha: Image.Image) -> bytes:
    """A TIFF whose alpha is marked associated (ExtraSamples = 1): Pillow opens it as "La",
    a mode it converts only to LA."""
    data = _encoded(grey_alpha, "TIFF")
    extra_samples = struct.pack("<HHIH", 338, 3, 1, 2)  # tag, SHORT, count 1, unassociated
    at = data.index(extra_samples) + 8
    return data[:at] + struct.pack("<H", 1) + data[at + 2 :]


@cache
def seed_images() -> dict[str, bytes]:
    """Small images of each format and of the modes that take their own path in decoding."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    palette = rgb.quantize(16)
    palette.info["transparency"] = 3
    deep = Image.new("I;16", (32, 24))
    deep.frombytes(rng.integers(0, 65536, (24, 32), dtype="<u2").tobytes())
    floats = Image.fromarray(rng.random((24, 32), dtype=np.float32), mode="F")
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    grey_alpha = rgba.convert("LA")
    seeds = {
        "jpeg": _encoded(rgb, "JPEG", quality=80, exif=exif),
        "jpeg-progressive": _encoded(rgb, "JPEG", progressive=True),
        "jpeg-cmyk": _encoded(rgb.convert("CMYK"), "JPEG"),
        "png": _encoded(rgb, "PNG"),
        "png-rgba": _encoded(rgba, "PNG"),
        "png-la": _encoded(grey_alpha, "PNG"),
        "png-palette": _encoded(palette, "PNG"),
        "png-16bit": _encoded(deep, "PNG"),
        "png-1bit": _encoded(rgb.convert("1"), "PNG"),
        "gif-animated": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _encoded(rgb, "BMP"),
        "tiff": _encoded(rgb, "TIFF"),
        "tiff-float": _encoded(floats, "TIFF"),
        "tiff-16bit": _encoded(deep, "TIFF"),
        "tiff-cmyk": _encoded(rgb.convert("CMYK"), "TIFF"),
        "tiff-1bit": _encoded(rgb.convert("1"), "TIFF"),
        "tiff-la-premultiplied": premultiplied_tiff(grey_alpha),
        "webp": _encoded(rgb, "WEBP", quality=80),
    }
    assert {fmt.split("-")[0].upper() for fmt in seeds} <= set(allowed_formats()) | {"JPEG"}
    return seeds


@st.composite
def mutated_images(draw: st.DrawFn) -> tuple[str, bytes]:
    """(seed name, mutated bytes)."""
    name = draw(st.sampled_from(sorted(seed_images())))
    data = bytearray(seed_images()[name])
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        if size <= MAGIC_BYTES:
            break
        # Mostly past the signature (else most cases stop at "not an image"), often in the
        # header, where the sizes are.
        region = draw(st.sampled_from(("header", "header", "body", "body", "anywhere")))
        low = 0 if region == "anywhere" else MAGIC_BYTES
        high = min(HEADER_BYTES, size) if region == "header" else size
        where = draw(st.integers(low, high - 1))
        kind = draw(st.sampled_from(("flip", "extreme", "insert", "delete", "truncate")))
        if kind == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "extreme":
            layout = draw(st.sampled_from(("<H", ">H", "<I", ">I")))
            value = draw(st.sampled_from(EXTREMES)) & (0xFFFF if layout[1] == "H" else 0xFFFFFFFF)
            packed = struct.pack(layout, value)
            data[where : where + len(packed)] = packed
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[where : where + draw(st.integers(1, 64))]
        else:
            del data[where:]
    return name, bytes(data)


@settings(
    max_examples=CASES,
    derandomize=True,
    database=None,
    deadline=None,  # the time bound is asserted below, with a message
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_images())
def decode_one(case: tuple[str, bytes]) -> None:
    name, data = case
    started = time.thread_time()  # this thread's CPU time: the work, not the machine's load
    try:
        result: PreparedImage | ImageError = prepare_image(
            data, DINOV2_PREPROCESSING, max_pixels=MAX_PIXELS, name=name
        )
    except ImageError as exc:
        result = exc
    if isinstance(result, ImageError):
        assert result.code in IMAGE_ERROR_CODES, result.code
        assert str(result).startswith(f"{name}: "), str(result)
        OUTCOMES[result.code] += 1
    else:
        assert result.pixels.shape == (*DINOV2_PREPROCESSING.output_size, 3)
        assert result.pixels.dtype == np.uint8
        OUTCOMES["pixels"] += 1
    event(name)
    elapsed = time.thread_time() - started
    assert elapsed < CASE_TIME_LIMIT_S, f"{name}: {len(data)} bytes took {elapsed:.1f} s"


def run_fuzz() -> dict[str, object]:
    """Run every case here; how they ended, and this process's peak memory before and after."""
    warnings.filterwarnings("error", category=RuntimeWarning, module=r"dinoseek\.")
    seed_images()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    decode_one()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"outcomes": dict(OUTCOMES), "peak_before": before, "peak_after": after}


def test_every_mutated_image_ends_in_pixels_or_an_image_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tests.hostile.test_decode_fuzz"],
        capture_output=True,
        text=True,
        timeout=RUN_TIME_LIMIT_S,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    outcomes = Counter(report["outcomes"])
    print(report)
    assert outcomes.total() == CASES
    # A fuzz that only ever trips the first check tests little: the cases reach the decoders.
    assert outcomes["pixels"] >= CASES // 10, outcomes
    assert len(outcomes) >= 4, outcomes
    grown = report["peak_after"] - report["peak_before"]
    assert grown < RUN_MEMORY_LIMIT_BYTES, f"decoding took {grown:,} bytes at its peak"


@pytest.mark.parametrize("name", sorted(seed_images()))
def test_every_seed_decodes(name: str) -> None:
    """The seeds themselves are good images (a fuzz of broken seeds tests little)."""
    prepared = prepare_image(
        seed_images()[name], DINOV2_PREPROCESSING, max_pixels=MAX_PIXELS, name=name
    )
    assert prepared.pixels.shape == (*DINOV2_PREPROCESSING.output_size, 3)


if __name__ == "__main__":
    print(json.dumps(run_fuzz()))
