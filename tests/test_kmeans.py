"""k-means' cluster sums (``index_add_`` in float32 blocks) are those of ``np.add.at``, for
the vector dtypes the store and the curation code hand it."""

from __future__ import annotations

import numpy as np
import pytest

from dinoseek import kmeans as kmeans_module
from dinoseek.kmeans import fit_centroids


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cluster_sums_match_add_at_whatever_the_dtype(
    dtype: type[np.floating], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kmeans_module, "SUM_BLOCK_ROWS", 7)  # several blocks, one partial
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(dtype)
    labels = rng.integers(0, 4, size=50)
    expected = np.zeros((4, 8), dtype=np.float32)
    np.add.at(expected, labels, vectors.astype(np.float32))

    sums = kmeans_module._cluster_sums(vectors, labels, 4)

    assert sums.dtype == np.float32
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-5)


def test_centroids_of_half_precision_vectors() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    centroids = fit_centroids(vectors.astype(np.float16), 3, plus_plus=False)
    assert centroids.shape == (3, 8)
    assert centroids.dtype == np.float32
