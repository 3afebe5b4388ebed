"""Where the model input lies in the original image, for boxes and patch positions.

The model sees an image resized (shortest edge to 256 for DINOv2) and centre-cropped (to
224 x 224): a non-square image loses its two ends along its long side. ``InputGeometry``
maps a box or a point between fractions of the original image (what users and the API
speak) and fractions of the model input (where patch tokens live), the same way
``preprocessing.Preprocessing.to_pixels`` cropped it. A box near the edges of a non-square image may
lie partly or wholly in the part the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from dinoseek.errors import InvalidRegionError
from dinoseek.preprocessing import Preprocessing
from dinoseek.regions import MIN_BOX_PATCHES, Box


@dataclass(frozen=True)
class InputGeometry:
    """The model input as a window on an image of ``width`` x ``height`` pixels: its left
    and top edge and its size, in pixels of the resized image of ``resized`` size."""

    width: int
    height: int
    resized: tuple[int, int]  # (width, height)
    left: int
    top: int
    input_size: tuple[int, int]  # (height, width)

    @classmethod
    def of(cls, preprocessing: Preprocessing, width: int, height: int) -> InputGeometry:
        """The geometry ``preprocessing.to_pixels`` gives an image of this size."""
        if width <= 0 or height <= 0:
            raise InvalidRegionError(f"an image of {width}x{height} pixels has no area")
        new_width, new_height = preprocessing.resized_size(width, height)
        if preprocessing.crop is None:
            return cls(width, height, (new_width, new_height), 0, 0, (new_height, new_width))
        crop_height, crop_width = preprocessing.crop
        top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
        return cls(width, height, (new_width, new_height), left, top, (crop_height, crop_width))

    def to_original(self, box: Box) -> Box | None:
        """A box of the model input as fractions of the original image (clipped to it: the
        part of the input that is padding is not the image); None if none of it is."""
        input_height, input_width = self.input_size
        new_width, new_height = self.resized
        left = (box.x * input_width + self.left) / new_width
        right = ((box.x + box.w) * input_width + self.left) / new_width
        top = (box.y * input_height + self.top) / new_height
        bottom = ((box.y + box.h) * input_height + self.top) / new_height
        return Box(left, top, right - left, bottom - top).intersect(Box.whole())

    def point_to_original(self, x: float, y: float) -> tuple[float, float]:
        """A point of the model input (fractions) as fractions of the original image."""
        input_height, input_width = self.input_size
        new_width, new_height = self.resized
        ox = (x * input_width + self.left) / new_width
        oy = (y * input_height + self.top) / new_height
        return min(max(ox, 0.0), 1.0), min(max(oy, 0.0), 1.0)

    def visible(self) -> Box:
        """The part of the original image the model sees, as fractions of it."""
        seen = self.to_original(Box.whole())
        assert seen is not None, "the crop window always overlaps the resized image"
        return seen

    def to_input(self, box: Box, patch_grid: tuple[int, int]) -> Box:
        """A box of the original image as fractions of the model input: the part of it the
        model sees. ``InvalidRegionError`` when that part is smaller than
        ``MIN_BOX_PATCHES`` patches either way (a box in the cropped-off ends, or a tiny
        one)."""
        input_height, input_width = self.input_size
        new_width, new_height = self.resized
        left = (box.x * new_width - self.left) / input_width
        right = ((box.x + box.w) * new_width - self.left) / input_width
        top = (box.y * new_height - self.top) / input_height
        bottom = ((box.y + box.h) * new_height - self.top) / input_height
        inside = Box(left, top, right - left, bottom - top).intersect(Box.whole())
        rows, columns = patch_grid
        if (
            inside is None
            or inside.w * columns < MIN_BOX_PATCHES
            or inside.h * rows < (MIN_BOX_PATCHES)
        ):
            seen = self.visible()
            raise InvalidRegionError(
                f"region {box.x:.3g},{box.y:.3g},{box.w:.3g},{box.h:.3g}: the model sees "
                f"less than {MIN_BOX_PATCHES:g} patch of it either way. It sees the centre "
                f"of the image (x {seen.x:.3f}-{seen.x + seen.w:.3f}, "
                f"y {seen.y:.3f}-{seen.y + seen.h:.3f} of it), a {columns}x{rows} grid of "
                "patches: draw a larger box, or one nearer the centre"
            )
        return inside
