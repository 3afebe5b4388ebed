"""Helpers for building test inputs."""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dinoseek.synthetic import draw_image


def photo(seed: int = 0, size: tuple[int, int] = (320, 240), kind: str = "circles") -> Image.Image:
    """A photo-like synthetic RGB image."""
    return draw_image(random.Random(seed), kind, size)


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """Encode an image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random L2-normalised float32 vectors."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels and which has no pixel data."""
    import struct

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def bad_image_samples() -> dict[str, tuple[bytes, str]]:
    """Files that must be rejected, by name, with the error code each must get."""
    from dinoseek.errors import ImageErrorCode as Code

    jpeg = encode(photo(1, (400, 300)), "JPEG", quality=90)
    png = encode(photo(2, (400, 300)), "PNG")
    noise = random.Random(7).randbytes(4000)
    return {
        "empty.jpg": (b"", Code.EMPTY_FILE),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Code.TRUNCATED_IMAGE),
        "truncated.png": (png[: len(png) // 2], Code.TRUNCATED_IMAGE),
        "garbage.jpg": (b"\xff\xd8\xff\xe0" + noise, Code.CORRUPT_IMAGE),
        "noise.png": (noise, Code.NOT_AN_IMAGE),
        "notes.jpg": (b"these are my holiday notes, not a picture\n" * 20, Code.NOT_AN_IMAGE),
        "document.jpg": (
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + noise,
            Code.UNSUPPORTED_FORMAT,
        ),
        "drawing.png": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
            Code.UNSUPPORTED_FORMAT,
        ),
        "bomb.png": (png_header_only(50_000, 50_000), Code.TOO_MANY_PIXELS),
        "huge.png": (png_header_only(8_000, 6_000), Code.TOO_MANY_PIXELS),
    }


def write_tree(
    root: Path, *, per_class: int = 4, classes: tuple[str, ...] = ("cats", "dogs")
) -> list[Path]:
    """Write ``per_class`` distinct JPEGs into one folder per class; return their paths."""
    paths = []
    for class_index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{name}_{i}.jpg"
            seed = zlib.crc32(f"{name}/{i}".encode())
            kind = ("circles", "stripes", "squares")[class_index % 3]
            path.write_bytes(encode(photo(seed, (160, 120), kind=kind)))
            paths.append(path)
    return paths


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write every bad sample into ``folder``; return file name -> expected error code."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, code) in bad_image_samples().items():
        (folder / name).write_bytes(data)
        expected[name] = code
    return expected


def refuse_to_wait(seconds: float) -> None:
    """A ``time.sleep`` that fails: "at once" shown by what the code does (it never waits),
    not by how fast the machine ran it (the ``no_waiting`` fixture)."""
    raise AssertionError(f"waited {seconds} s where an answer was due at once")


def admits(admitted: Any, method: str, path: str) -> bool:
    """Whether ``admitted`` (``search_api.admission.AdmittedRoutes``) takes ``method path``."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return bool(admitted.matches(scope))
