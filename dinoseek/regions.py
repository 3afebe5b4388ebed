"""Region vectors: an image's patch tokens mean-pooled over the windows of a few grids.

A collection with regions stores, beside each image's CLS vector, one vector per window of
``RegionSpec.grids`` (2x2, 3x3 and 4x4 by default: 29 windows), all from the forward pass that made
the CLS vector. A region query is the query's own patch tokens pooled over a box (the whole
query by default), and an image matches as well as its best window does (Qdrant's MaxSim
over the image's windows). Which window won says where in the image the match lies.

Positions here are fractions of the *model input* (the centre crop the model sees);
``dinoseek.input_geometry`` maps them to and from fractions of the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseek.errors import InvalidRegionError, RegionsNotIndexedError

# Windows of 1/2, 1/3 and 1/4 of the side: 29 vectors per image (bench/regions.py compares
# other layouts). 1x1 (the whole input) is left out: its pooled tokens say about what the CLS
# vector says.
DEFAULT_GRIDS: tuple[int, ...] = (2, 3, 4)
REGION_VECTOR = "regions"  # the name of the multivector in the store
POOLING = "mean"
# A box must cover at least this many patches of the model input in each direction.
MIN_BOX_PATCHES = 1.0
_EDGE_TOLERANCE = 1e-6  # rounding in a client's fractions (x + w = 1.0000001)


@dataclass(frozen=True)
class Box:
    """A rectangle as fractions of an image's width and height: left, top, width, height."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def whole(cls) -> Box:
        """The whole image."""
        return cls(0.0, 0.0, 1.0, 1.0)

    def rounded(self, digits: int = 4) -> Box:
        """The box with its values rounded (what the API and ``--json`` show)."""
        return Box(*(round(v, digits) for v in (self.x, self.y, self.w, self.h)))

    def intersect(self, other: Box) -> Box | None:
        """The overlap of two boxes (None when they do not overlap)."""
        left, top = max(self.x, other.x), max(self.y, other.y)
        right = min(self.x + self.w, other.x + other.w)
        bottom = min(self.y + self.h, other.y + other.h)
        if right <= left or bottom <= top:
            return None
        return Box(left, top, right - left, bottom - top)


def parse_box(text: str) -> Box:
    """``"X,Y,W,H"`` (fractions of the original image) as a checked ``Box``, or
    ``InvalidRegionError`` saying what is wrong with it."""
    parts = str(text).split(",")
    if len(parts) != 4:
        raise InvalidRegionError(
            f"region {text!r}: expected X,Y,W,H (four fractions of the image's width and "
            "height, e.g. 0.25,0.25,0.5,0.5)"
        )
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise InvalidRegionError(f"region {text!r}: X,Y,W,H must be numbers") from None
    return checked_box(Box(*values))


def checked_box(box: Box) -> Box:
    """``box`` if it is finite, inside [0, 1] and not empty (clipped by rounding), else
    ``InvalidRegionError``."""
    values = (box.x, box.y, box.w, box.h)
    if not all(math.isfinite(v) for v in values):
        raise InvalidRegionError(f"region {_show(box)}: every value must be finite")
    if box.w <= 0 or box.h <= 0:
        raise InvalidRegionError(f"region {_show(box)}: width and height must be positive")
    if box.x < 0 or box.y < 0 or box.x > 1 or box.y > 1:
        raise InvalidRegionError(f"region {_show(box)}: X and Y must lie within 0..1")
    if box.x + box.w > 1 + _EDGE_TOLERANCE or box.y + box.h > 1 + _EDGE_TOLERANCE:
        raise InvalidRegionError(
            f"region {_show(box)}: X + W and Y + H must be at most 1 (the box must lie "
            "inside the image)"
        )
    return Box(box.x, box.y, min(box.w, 1 - box.x), min(box.h, 1 - box.y))


def _show(box: Box) -> str:
    return f"{box.x:g},{box.y:g},{box.w:g},{box.h:g}"


@dataclass(frozen=True)
class RegionSpec:
    """How a collection's region vectors were made: the grids of windows over the model's
    patch grid (``rows`` x ``columns`` patches), each window's tokens mean-pooled. Recorded
    with the collection: region vectors of another layout never mix with these."""

    patch_grid: tuple[int, int]
    grids: tuple[int, ...] = DEFAULT_GRIDS
    pooling: str = POOLING

    def __post_init__(self) -> None:
        rows, columns = self.patch_grid
        if rows < 1 or columns < 1:
            raise ValueError(f"patch grid {self.patch_grid} has no patches")
        if not self.grids or any(g < 1 or g > min(rows, columns) for g in self.grids):
            raise ValueError(f"grids {self.grids} do not fit a {rows}x{columns} patch grid")

    @property
    def count(self) -> int:
        """Region vectors per image."""
        return sum(g * g for g in self.grids)

    def windows(self) -> list[Box]:
        """Every window, grid by grid, row by row (the order of the stored vectors)."""
        return [
            Box(column / grid, row / grid, 1 / grid, 1 / grid)
            for grid in self.grids
            for row in range(grid)
            for column in range(grid)
        ]

    def pooling_matrix(self) -> np.ndarray:
        """(``count``, rows * columns) float32: each row averages the patches of a window."""
        return pooling_rows(self.windows(), self.patch_grid)

    def check_same(self, collection: str, recorded: RegionSpec) -> None:
        """``RegionsNotIndexedError`` unless ``recorded`` (the collection's) is this layout:
        windows of two layouts in one collection would make the order of its vectors lie."""
        if recorded != self:
            raise RegionsNotIndexedError(
                f"collection {collection!r} holds region vectors of {list(recorded.grids)} "
                f"grids on a {recorded.patch_grid[0]}x{recorded.patch_grid[1]} patch grid, "
                f"not of {list(self.grids)} on {self.patch_grid[0]}x{self.patch_grid[1]} "
                "(another model?): index into another collection"
            )

    def to_metadata(self) -> dict[str, Any]:
        """What the collection records."""
        return {
            "vector": REGION_VECTOR,
            "grids": list(self.grids),
            "patch_grid": list(self.patch_grid),
            "pooling": self.pooling,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> RegionSpec:
        """Inverse of ``to_metadata`` (``RegionsNotIndexedError`` for one this version of
        dinoseek cannot use)."""
        try:
            rows, columns = (int(v) for v in metadata["patch_grid"])
            spec = cls(
                patch_grid=(rows, columns),
                grids=tuple(int(g) for g in metadata["grids"]),
                pooling=str(metadata.get("pooling", POOLING)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegionsNotIndexedError(
                f"the collection records region vectors this version of dinoseek cannot "
                f"read ({metadata!r}: {exc})"
            ) from None
        if spec.pooling != POOLING or metadata.get("vector", REGION_VECTOR) != REGION_VECTOR:
            raise RegionsNotIndexedError(
                f"the collection's region vectors are pooled as {spec.pooling!r}; this "
                f"version of dinoseek makes {POOLING!r} ones"
            )
        return spec


def pooling_rows(boxes: list[Box], patch_grid: tuple[int, int]) -> np.ndarray:
    """(len(boxes), rows * columns) float32: each row weighs every patch by the share of it
    the box covers, and sums to 1 (a box covering no patch is refused)."""
    rows, columns = patch_grid
    row_edges = np.arange(rows + 1) / rows
    column_edges = np.arange(columns + 1) / columns
    matrix = np.zeros((len(boxes), rows * columns), dtype=np.float64)
    for index, box in enumerate(boxes):
        vertical = _overlaps(row_edges, box.y, box.y + box.h)
        horizontal = _overlaps(column_edges, box.x, box.x + box.w)
        weights = np.outer(vertical, horizontal).ravel()
        total = weights.sum()
        if total <= 0:
            raise InvalidRegionError("the region covers no patch of the model input")
        matrix[index] = weights / total
    return matrix.astype(np.float32)


def _overlaps(edges: np.ndarray, start: float, end: float) -> np.ndarray:
    """How much of each cell between consecutive ``edges`` lies within [start, end]."""
    covered: np.ndarray = np.clip(
        np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0.0, None
    )
    return covered


def best_window(query: np.ndarray, regions: np.ndarray) -> tuple[int, float]:
    """The window whose vector is closest to ``query`` (cosine) and its similarity."""
    unit = regions / np.maximum(np.linalg.norm(regions, axis=1, keepdims=True), 1e-12)
    scores = unit @ (query / max(float(np.linalg.norm(query)), 1e-12))
    best = int(np.argmax(scores))
    return best, float(scores[best])


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: np.ndarray = np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)
    return unit
