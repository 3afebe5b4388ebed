"""The vectors of the images in a folder, embedded on the fly (nothing is stored).

For sets that are compared with a collection but not indexed: ``dinoseek dedup --against
FOLDER``. Files are listed by extension, decoded by the one decode path and embedded in
batches; a file that cannot be used is counted, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinoseek.embedder_protocol import ImageEmbedder, split_embedded
from dinoseek.errors import ConfigError, DinoseekError
from dinoseek.images import prepare_image, read_image_bytes
from dinoseek.scan import ScannedFile, ScanOptions, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderVectors:
    """The images that could be used, their vectors (N, dim), and the ones that could not."""

    paths: list[Path]
    vectors: np.ndarray
    failed: dict[Path, str]


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` as `dinoseek index` lists them (the same excludes,
    links not followed), in name order (``ConfigError`` when there are none)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    options = ScanOptions()
    found = []
    for item in scan([folder], options):
        if isinstance(item, ScannedFile):
            found.append(Path(item.path))
        else:
            log.warning("%s: %s", item.path, item.message)
    if not found:
        suffixes = ", ".join(sorted(options.extensions))
        raise ConfigError(
            f"{folder}: no image files ({suffixes}) under it, hidden folders and links aside"
        )
    return sorted(found)


def embed_folder(
    folder: Path,
    embedder: ImageEmbedder,
    *,
    max_pixels: int,
    max_bytes: int,
    batch_size: int,
    on_images: Callable[[int], None] | None = None,
) -> FolderVectors:
    """Embed every image under ``folder`` (``ConfigError`` when none can be used)."""
    files = image_files(folder)
    found = embed_files(files, embedder, max_pixels=max_pixels, max_bytes=max_bytes,
                        batch_size=batch_size, on_images=on_images)  # fmt: skip
    if not found.paths:
        raise ConfigError(f"{folder}: none of its {len(files)} image files could be used")
    return found


def embed_files(
    files: Sequence[Path],
    embedder: ImageEmbedder,
    *,
    max_pixels: int,
    max_bytes: int,
    batch_size: int,
    on_images: Callable[[int], None] | None = None,
) -> FolderVectors:
    """Embed ``files`` in batches; the ones that cannot be used are listed, not fatal."""
    paths: list[Path] = []
    vectors: list[np.ndarray] = []
    failed: dict[Path, str] = {}
    for start in range(0, len(files), batch_size):
        ready = []
        for path in files[start : start + batch_size]:
            try:
                data = read_image_bytes(path, max_bytes=max_bytes)
                prepared = prepare_image(
                    data, embedder.preprocessing, max_pixels=max_pixels, name=str(path)
                )
            except DinoseekError as error:
                failed[path] = error.code
                continue
            ready.append((path, prepared.pixels))
        if ready:
            stacked = embedder.stack([pixels for _, pixels in ready])
            embedded, not_embedded = split_embedded(
                [path for path, _ in ready], embedder.embed_each(stacked)
            )
            for path, reason in not_embedded:
                failed[path] = reason.code
            for path, vector in embedded:
                paths.append(path)
                vectors.append(np.asarray(vector, dtype=np.float32))
        if on_images is not None:
            on_images(min(batch_size, len(files) - start))
    dim = embedder.dim
    stacked_vectors = np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    return FolderVectors(paths, stacked_vectors, failed)
