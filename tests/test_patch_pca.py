"""The PCA picture of patch tokens (``dinoseek.patch_pca``), on tokens whose structure is
known: a block of patches unlike the rest."""

from __future__ import annotations

import numpy as np
import pytest

from dinoseek.patch_pca import patch_picture

ROWS, COLUMNS, DIM = 12, 16, 24


def tokens_with_a_block(seed: int = 0, margin: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, block mask): noise around one direction for the background, another for a
    block of patches ``margin`` patches from the border."""
    rng = np.random.default_rng(seed)
    background, thing = rng.standard_normal(DIM), rng.standard_normal(DIM)
    block = np.zeros((ROWS, COLUMNS), dtype=bool)
    block[margin:-margin, margin:-margin] = True
    tokens = np.where(block.reshape(-1, 1), thing, background)
    return tokens + 0.05 * rng.standard_normal(tokens.shape), block


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("margin", [1, 3], ids=["large", "small"])
def test_the_foreground_is_the_block_whatever_its_size_and_sign(sign: float, margin: int) -> None:
    """Whether the block is most of the image or a small part, the border is background."""
    tokens, block = tokens_with_a_block(margin=margin)
    picture = patch_picture(sign * tokens, (ROWS, COLUMNS))
    assert (picture.foreground == block).all()


def test_the_mask_keeps_the_foreground_only() -> None:
    tokens, block = tokens_with_a_block(1)
    masked = patch_picture(tokens, (ROWS, COLUMNS), mask=True)
    assert masked.rgb.shape == (ROWS, COLUMNS, 3)
    assert masked.rgb.dtype == np.uint8
    assert (masked.rgb[~block] == 0).all()
    assert masked.rgb[block].std() > 0
    plain = patch_picture(tokens, (ROWS, COLUMNS))
    assert plain.rgb[~block].any()


def test_colours_span_the_range_and_upscale_by_patches() -> None:
    tokens = np.random.default_rng(2).standard_normal((ROWS * COLUMNS, DIM))
    picture = patch_picture(tokens, (ROWS, COLUMNS))
    for channel in range(3):
        assert picture.rgb[..., channel].min() == 0
        assert picture.rgb[..., channel].max() == 255
    big = picture.upscaled(14)
    assert big.shape == (ROWS * 14, COLUMNS * 14, 3)
    assert (big[::14, ::14] == picture.rgb).all()


def test_degenerate_tokens_give_a_picture_not_an_error() -> None:
    flat = patch_picture(np.ones((ROWS * COLUMNS, DIM)), (ROWS, COLUMNS), mask=True)
    assert flat.rgb.shape == (ROWS, COLUMNS, 3)
    narrow = patch_picture(np.random.default_rng(3).standard_normal((4, 2)), (2, 2))
    assert narrow.rgb.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="expected 6 patch tokens"):
        patch_picture(np.zeros((5, DIM)), (2, 3))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_sign_of_the_first_component_makes_the_border_background(sign: float) -> None:
    """The decomposition may give the first component either sign: the rule picks the one
    that leaves the border in the background."""
    from dinoseek.patch_pca import _foreground

    first = np.full((ROWS, COLUMNS), -1.0)
    first[2:-2, 2:-2] = 2.0
    assert (_foreground(sign * first) == (first > 0)).all()
