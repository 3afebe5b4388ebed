"""Hostile inputs, made at test time (never committed): tiny files that claim, or decode to,
far more than they weigh."""

from __future__ import annotations

import struct
import zlib

from tests.helpers import png_chunk


def strip_png(width: int, height: int = 1) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` black pixels: a few hundred bytes for a
    40,000,000 x 1 image (zlib squeezes the zero rows)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )
