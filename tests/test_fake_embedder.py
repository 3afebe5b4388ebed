"""The stand-in model: it must behave like one where the tests rely on it (deterministic,
content-sensitive, a different seed is a different model), and speak the interface."""

from __future__ import annotations

import numpy as np
import pytest

from dinoseek.errors import CollectionMismatchError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.images import decode_image
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from tests.helpers import encode, photo


def pixels(data: bytes) -> np.ndarray:
    return DINOV2_PREPROCESSING.to_pixels(decode_image(data, max_pixels=10**8).image)


def test_deterministic_and_content_sensitive() -> None:
    original = encode(photo(3, (400, 300)), "JPEG", quality=95)
    recompressed = encode(decode_image(original, max_pixels=10**8).image, "JPEG", quality=60)
    other = encode(photo(4, (400, 300), kind="stripes"), "JPEG", quality=95)
    batch = np.stack([pixels(original), pixels(recompressed), pixels(other)])
    first, again = (
        FakeEmbedder(seed=7).embed_pixels(batch),
        FakeEmbedder(seed=7).embed_pixels(batch),
    )
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    assert float(first[0] @ first[1]) > 0.99  # a re-encoded copy stays close
    assert float(first[0] @ first[2]) < 0.95  # another picture does not


def test_another_seed_is_another_model() -> None:
    one, two = FakeEmbedder(seed=1), FakeEmbedder(seed=2)
    one.space.check_compatible(FakeEmbedder(seed=1).space, "images")
    with pytest.raises(CollectionMismatchError, match="different model"):
        two.space.check_compatible(one.space, "images")


def test_patch_tokens_follow_the_patch_grid() -> None:
    result = FakeEmbedder(dim=16).embed_with_patches(np.stack([pixels(encode(photo(1)))] * 2))
    assert result.grid == (16, 16)
    assert result.patch_tokens.shape == (2, 256, 16)
    assert result.cls.shape == (2, 16)
