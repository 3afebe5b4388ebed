"""Region boxes, windows and the geometry of the model input; correspondences of patch
tokens (numpy only: the stand-in model where a model is needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dinoseek.correspondence import correspond, mutual_neighbours
from dinoseek.errors import InvalidRegionError, RegionsNotIndexedError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.input_geometry import InputGeometry
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek.regions import Box, RegionSpec, parse_box, pooling_rows

GRID = (16, 16)


@pytest.mark.parametrize(
    "text",
    [
        "0.1,0.1,0.5",  # three values
        "0.1,0.1,0.5,0.5,0.1",
        "a,b,c,d",
        "nan,0,0.5,0.5",
        "0,inf,0.5,0.5",
        "0,0,0,0.5",  # no width
        "0,0,0.5,-0.1",
        "-0.1,0,0.5,0.5",
        "0.8,0,0.5,0.5",  # past the right edge
        "0,0.6,0.5,0.5",
        "1e308,0,1e308,1",
        "",
    ],
)
def test_malformed_boxes_are_refused_by_name(text: str) -> None:
    with pytest.raises(InvalidRegionError, match="region"):
        parse_box(text)


def test_a_box_on_the_edge_is_kept_within_the_image() -> None:
    box = parse_box("0.5,0.25,0.5000000001,0.75")
    assert box == Box(0.5, 0.25, 0.5, 0.75)
    assert parse_box(" 0 , 0 , 1 , 1 ") == Box.whole()


def test_windows_and_their_pooling() -> None:
    spec = RegionSpec(GRID)
    assert spec.count == 29
    windows = spec.windows()
    assert windows[0] == Box(0.0, 0.0, 0.5, 0.5)
    assert windows[3] == Box(0.5, 0.5, 0.5, 0.5)
    assert windows[4].w == pytest.approx(1 / 3)
    matrix = spec.pooling_matrix()
    assert matrix.shape == (29, 256)
    assert np.allclose(matrix.sum(axis=1), 1.0)
    top_left = matrix[0].reshape(GRID)
    assert np.allclose(top_left[:8, :8], 1 / 64)
    assert top_left[8:, :].sum() == 0
    # 3x3 on 16 patches: the first window covers 5 patches and a third of the sixth.
    first = matrix[4].reshape(GRID)
    assert first[0, 5] == pytest.approx(first[0, 0] / 3)
    assert first[0, 6] == 0
    assert RegionSpec.from_metadata(spec.to_metadata()) == spec


def test_a_box_weighs_the_patches_it_covers() -> None:
    (row,) = pooling_rows([Box(0.25, 0.5, 0.25, 0.25)], GRID)
    weights = row.reshape(GRID)
    assert np.allclose(weights[8:12, 4:8], 1 / 16)
    assert weights.sum() == pytest.approx(1.0)
    assert np.count_nonzero(weights) == 16


def test_an_unknown_layout_is_refused_clearly() -> None:
    with pytest.raises(RegionsNotIndexedError, match="cannot read"):
        RegionSpec.from_metadata({"grids": "2x2"})
    with pytest.raises(RegionsNotIndexedError, match="pooled as"):
        RegionSpec.from_metadata({"grids": [2], "patch_grid": [16, 16], "pooling": "max"})


def test_the_geometry_of_a_wide_image() -> None:
    """A 600 x 300 image becomes 512 x 256, of which the model sees x 144..368, y 16..240."""
    geometry = InputGeometry.of(DINOV2_PREPROCESSING, 600, 300)
    assert (geometry.resized, geometry.left, geometry.top) == ((512, 256), 144, 16)
    seen = geometry.visible()
    assert (seen.x, seen.w) == pytest.approx((144 / 512, 224 / 512))
    assert (seen.y, seen.h) == pytest.approx((16 / 256, 224 / 256))
    top_left = geometry.to_original(Box(0.0, 0.0, 0.5, 0.5))
    assert top_left is not None
    assert (top_left.x, top_left.y, top_left.w, top_left.h) == pytest.approx(
        (144 / 512, 16 / 256, 112 / 512, 112 / 256)
    )
    # Back again: the part of an original box the model sees, as fractions of the input.
    inside = geometry.to_input(top_left, GRID)
    assert (inside.x, inside.y, inside.w, inside.h) == pytest.approx((0, 0, 0.5, 0.5))
    clipped = geometry.to_input(Box(0.0, 0.0, 0.5, 1.0), GRID)  # its left end is cut off
    assert (clipped.x, clipped.w) == pytest.approx((0.0, (256 - 144) / 224))
    assert (clipped.y, clipped.h) == pytest.approx((0.0, 1.0))
    x, y = geometry.point_to_original(0.5, 0.5)
    assert (x, y) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(
    "box",
    [
        Box(0.0, 0.0, 0.2, 1.0),  # wholly in the cropped-off left end
        Box(0.8, 0.2, 0.2, 0.5),  # the right end
        Box(0.5, 0.5, 0.01, 0.01),  # less than a patch
        Box(0.27, 0.2, 0.02, 0.5),  # mostly cut off: 0.01 of the width is seen
    ],
)
def test_a_box_the_model_does_not_see_is_refused(box: Box) -> None:
    geometry = InputGeometry.of(DINOV2_PREPROCESSING, 600, 300)
    with pytest.raises(InvalidRegionError, match="the model sees"):
        geometry.to_input(box, GRID)


def test_mutual_neighbours_find_a_shifted_grid() -> None:
    """Tokens of b are those of a three columns to the right: every patch whose match lies
    on the grid corresponds to it, at the right place in each original image."""
    rng = np.random.default_rng(0)
    tokens_a = rng.standard_normal((256, 24)).astype(np.float32)
    grid_a = tokens_a.reshape(16, 16, 24)
    grid_b = rng.standard_normal((16, 16, 24)).astype(np.float32)
    grid_b[:, 3:] = grid_a[:, :13]
    tokens_b = grid_b.reshape(256, 24)
    pairs = mutual_neighbours(tokens_a, tokens_b, max_pairs=1000)
    unit_a = tokens_a / np.linalg.norm(tokens_a, axis=1, keepdims=True)
    unit_b = tokens_b / np.linalg.norm(tokens_b, axis=1, keepdims=True)
    similarity = unit_a @ unit_b.T
    for a, b, _ in pairs:  # each is the other's nearest neighbour
        assert similarity[a].argmax() == b
        assert similarity[:, b].argmax() == a
    shifted = [(a, b) for a, b, score in pairs if score > 0.999]
    assert len(shifted) == 16 * 13
    assert all(b == a + 3 for a, b in shifted)
    scores = [score for _, _, score in pairs]
    assert scores == sorted(scores, reverse=True)
    assert len(mutual_neighbours(tokens_a, tokens_b, max_pairs=5)) == 5

    square = InputGeometry.of(DINOV2_PREPROCESSING, 256, 256)  # the model sees 16..240
    found = correspond(tokens_a, grid_b.reshape(256, 24), GRID, square, square, max_pairs=20)
    assert len(found.pairs) == 20
    for pair in found.pairs:
        assert pair.score > 0.999
        assert pair.b.y == pytest.approx(pair.a.y)
        assert pair.b.x == pytest.approx(pair.a.x + 3 * 14 / 256, abs=1e-4)
        column = round((pair.a.x * 256 - 16) / 14 - 0.5)
        assert pair.a.x == pytest.approx(((column + 0.5) * 14 + 16) / 256, abs=1e-4)
    assert found.region_a is not None
    assert found.region_b is not None
    assert 0 < found.region_score <= 1


def test_the_stand_in_pools_its_own_patch_tokens() -> None:
    model = FakeEmbedder(dim=16)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    spec = RegionSpec(model.patch_grid)
    pooled = model.embed_each_pooled(pixels, spec.pooling_matrix())
    tokens = model.embed_with_patches(pixels).patch_tokens
    for image, result in enumerate(pooled):
        assert not isinstance(result, Exception)
        expected = spec.pooling_matrix() @ tokens[image]
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert np.allclose(result.pooled, expected, atol=1e-5)
        assert np.allclose(result.cls, model.embed_pixels(pixels)[image], atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        model.embed_each_pooled(pixels, np.ones((1, 10), dtype=np.float32))
    assert math.isclose(float(np.linalg.norm(pooled[0].pooled[0])), 1.0, rel_tol=1e-5)  # type: ignore[union-attr]
