"""What DINOv2 sees: an image's patch features on their first three principal components.

The picture the DINOv2 paper is known for. The patch tokens of one image are centred and
projected on their first three principal components, which become red, green and blue. The
first component separates the foreground from the background: thresholded at zero it is the
foreground mask. Its sign is arbitrary, so it is chosen to make the border of the image
background. With ``mask``, the components are computed again on the foreground patches only
and the background is black, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Each component is stretched between these percentiles, so a few extreme patches do not
# turn the rest grey.
LOW_PERCENTILE = 2.0
HIGH_PERCENTILE = 98.0


@dataclass(frozen=True)
class PatchPicture:
    """The colours (rows, columns, 3) as uint8, and the foreground mask (rows, columns)."""

    rgb: np.ndarray
    foreground: np.ndarray

    def upscaled(self, factor: int) -> np.ndarray:
        """The colours with each patch ``factor`` x ``factor`` pixels (nearest neighbour)."""
        return np.repeat(np.repeat(self.rgb, factor, axis=0), factor, axis=1)


def patch_picture(tokens: np.ndarray, grid: tuple[int, int], *, mask: bool = False) -> PatchPicture:
    """The PCA picture of one image's patch tokens ``(rows * columns, dim)``."""
    rows, columns = grid
    if tokens.ndim != 2 or tokens.shape[0] != rows * columns:
        raise ValueError(f"expected {rows * columns} patch tokens, got shape {tokens.shape}")
    features = np.asarray(tokens, dtype=np.float64)
    first = _components(features, 1)[:, 0].reshape(rows, columns)
    foreground = _foreground(first)
    if not mask:
        rgb = _to_colours(_components(features, 3))
    else:
        rgb = np.zeros((rows * columns, 3), dtype=np.uint8)
        chosen = foreground.reshape(-1)
        if chosen.sum() >= 3:
            rgb[chosen] = _to_colours(_components(features[chosen], 3))
    return PatchPicture(rgb=rgb.reshape(rows, columns, 3), foreground=foreground)


def _components(features: np.ndarray, count: int) -> np.ndarray:
    """``features`` centred and projected on their first ``count`` principal components
    (zeros where there are fewer)."""
    centred = features - features.mean(axis=0)
    _, _, directions = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ directions[:count].T
    missing = count - projected.shape[1]
    return np.pad(projected, ((0, 0), (0, missing))) if missing > 0 else projected


def _foreground(first: np.ndarray) -> np.ndarray:
    """The first component above zero, its sign chosen so that the border is background."""
    border = np.concatenate([first[0], first[-1], first[1:-1, 0], first[1:-1, -1]])
    if np.mean(border > 0) > 0.5:
        first = -first
    foreground: np.ndarray = first > 0
    return foreground


def _to_colours(projected: np.ndarray) -> np.ndarray:
    """Each column stretched to 0..255 between its percentiles."""
    low = np.percentile(projected, LOW_PERCENTILE, axis=0)
    high = np.percentile(projected, HIGH_PERCENTILE, axis=0)
    span = np.where(high > low, high - low, 1.0)
    scaled = np.clip((projected - low) / span, 0.0, 1.0)
    colours: np.ndarray = np.round(scaled * 255).astype(np.uint8)
    return colours
