"""Why two images match: corresponding patches, from the patch tokens of one forward pass.

Two patches correspond when each is the other's nearest neighbour among the other image's
patch tokens (cosine): mutual nearest neighbours, the matching DINOv2's paper shows. The
strongest pairs come first, at most ``max_pairs`` of them, with their positions as fractions
of each *original* image (the centre of the patch, mapped back through the resize and the
centre crop). The best pair of region windows (``dinoseek.regions``) says which part of each
image matches best as a whole.

The work is bounded by the model input: two grids of rows x columns patches (256 for
DINOv2 at 224 pixels), one (256 x 256) similarity matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.images import PreparedImage
from dinoseek.input_geometry import InputGeometry
from dinoseek.regions import Box, RegionSpec, normalised

MAX_PAIRS = 100


@dataclass(frozen=True)
class Position:
    """A point as fractions of an original image's width and height."""

    x: float
    y: float


@dataclass(frozen=True)
class PatchPair:
    """Patch ``a`` of the first image and patch ``b`` of the second, and their cosine."""

    a: Position
    b: Position
    score: float


@dataclass(frozen=True)
class Correspondence:
    """The corresponding patches of two images, strongest first, and the pair of region
    windows that match best (as boxes of each original image, None if not visible)."""

    pairs: list[PatchPair]
    region_a: Box | None
    region_b: Box | None
    region_score: float


def mutual_neighbours(
    tokens_a: np.ndarray, tokens_b: np.ndarray, max_pairs: int
) -> list[tuple[int, int, float]]:
    """(index in a, index in b, cosine) of the patches that are each other's nearest
    neighbour, strongest first, at most ``max_pairs``."""
    similarity = normalised(tokens_a) @ normalised(tokens_b).T
    best_b = similarity.argmax(axis=1)
    best_a = similarity.argmax(axis=0)
    mutual = np.flatnonzero(best_a[best_b] == np.arange(len(tokens_a)))
    scores = similarity[mutual, best_b[mutual]]
    order = np.argsort(-scores, kind="stable")[: max(0, max_pairs)]
    return [(int(mutual[i]), int(best_b[mutual[i]]), float(scores[i])) for i in order]


def correspond(
    tokens_a: np.ndarray,
    tokens_b: np.ndarray,
    patch_grid: tuple[int, int],
    geometry_a: InputGeometry,
    geometry_b: InputGeometry,
    *,
    max_pairs: int,
    spec: RegionSpec | None = None,
) -> Correspondence:
    """Corresponding patches of two images' tokens ``(rows * columns, dim)`` on the same
    ``patch_grid``, their positions mapped to each original image by its geometry; and the
    best pair of windows of ``spec`` (default: the default grids)."""
    rows, columns = patch_grid
    expected = rows * columns
    if tokens_a.shape[0] != expected or tokens_b.shape[0] != expected:
        raise ValueError(f"expected {expected} patch tokens per image")
    pairs = []
    for index_a, index_b, score in mutual_neighbours(tokens_a, tokens_b, max_pairs):
        pairs.append(
            PatchPair(
                a=_centre(index_a, patch_grid, geometry_a),
                b=_centre(index_b, patch_grid, geometry_b),
                score=round(score, 4),
            )
        )
    spec = spec or RegionSpec(patch_grid)
    windows = spec.windows()
    pooling = spec.pooling_matrix()
    similarity = normalised(pooling @ tokens_a) @ normalised(pooling @ tokens_b).T
    best_a, best_b = np.unravel_index(int(similarity.argmax()), similarity.shape)
    return Correspondence(
        pairs=pairs,
        region_a=_rounded(geometry_a.to_original(windows[int(best_a)])),
        region_b=_rounded(geometry_b.to_original(windows[int(best_b)])),
        region_score=round(float(similarity[best_a, best_b]), 4),
    )


def _rounded(box: Box | None) -> Box | None:
    return None if box is None else box.rounded()


def _centre(index: int, patch_grid: tuple[int, int], geometry: InputGeometry) -> Position:
    rows, columns = patch_grid
    row, column = divmod(index, columns)
    x, y = geometry.point_to_original((column + 0.5) / columns, (row + 0.5) / rows)
    return Position(round(x, 4), round(y, 4))


def match_images(
    embedder: ImageEmbedder, a: PreparedImage, b: PreparedImage, *, max_pairs: int
) -> Correspondence:
    """The corresponding patches of two prepared images, from one forward pass of both."""
    embedded = embedder.embed_with_patches(embedder.stack([a.pixels, b.pixels]))
    return correspond(
        embedded.patch_tokens[0],
        embedded.patch_tokens[1],
        embedded.grid,
        InputGeometry.of(embedder.preprocessing, a.width, a.height),
        InputGeometry.of(embedder.preprocessing, b.width, b.height),
        max_pairs=min(max_pairs, MAX_PAIRS),
    )
