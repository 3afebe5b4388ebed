"""Region vectors of the tiny random DINOv2 (through ``from_pretrained``): the pooling on the
model's side is the pooling of its raw patch tokens, and region search finds the images that
contain a crop where the CLS vector does not."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from dinoseek.embedder_protocol import EmbeddingError, ImageEmbedder
from dinoseek.region_search import search_image_regions
from dinoseek.regions import RegionSpec
from dinoseek.search import Searcher
from dinoseek.search_types import LabelRequest, NeighbourQuery
from dinoseek.store import EdgeStore
from dinoseek.synthetic import CLASS_NAMES, draw_image
from indexer.pipeline import IndexOptions, index_folders
from tests.helpers import encode

pytestmark = pytest.mark.model


def test_pooled_tokens_are_the_raw_tokens_pooled(tiny_embedder: ImageEmbedder) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    assert tiny_embedder.patch_grid == (16, 16)
    spec = RegionSpec(tiny_embedder.patch_grid)
    raw = tiny_embedder.embed_with_patches(pixels)
    assert raw.grid == tiny_embedder.patch_grid
    results = tiny_embedder.embed_each_pooled(pixels, spec.pooling_matrix())
    for image, result in enumerate(results):
        assert not isinstance(result, EmbeddingError)
        expected = spec.pooling_matrix() @ raw.patch_tokens[image]
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        assert np.allclose(result.pooled, expected, atol=1e-5)
        assert np.allclose(result.cls, raw.cls[image], atol=1e-5)


def crop_and_hosts(root: Path, count: int) -> list[tuple[bytes, str]]:
    """``count`` host images under ``root``, host i holding a crop (5-20% of the area) of
    another image at a random place; the crops as queries, query i belonging to host i."""
    rng = random.Random(3)
    queries = []
    for i in range(count):
        source = draw_image(rng, CLASS_NAMES[i % 8])
        host = draw_image(rng, CLASS_NAMES[(i + 3) % 8])
        area = rng.uniform(0.05, 0.20)
        width, height = int(source.width * area**0.5), int(source.height * area**0.5)
        x, y = rng.randrange(source.width - width), rng.randrange(source.height - height)
        crop = source.crop((x, y, x + width, y + height))
        host.paste(crop, (rng.randrange(host.width - width), rng.randrange(host.height - height)))
        (root / f"host_{i:03d}.jpg").write_bytes(encode(host, quality=92))
        queries.append((encode(crop, quality=92), str(root / f"host_{i:03d}.jpg")))
    return queries


def test_region_search_finds_pasted_crops_that_cls_misses(
    tiny_embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos = tmp_path / "hosts"
    photos.mkdir()
    queries = crop_and_hosts(photos, 40)
    options = IndexOptions(
        roots=(photos,),
        collection="hosts",
        failures_report=tmp_path / "failures.jsonl",
        workers=0,
        progress="off",
        regions=True,
    )
    with EdgeStore(tmp_path / "data") as store:
        summary = index_folders(tiny_embedder, store, options)
        assert summary.embedded == 40
        searcher = Searcher(store, tiny_embedder, max_image_pixels=10**8, keep=["hosts"])
        query = NeighbourQuery(top_k=5)
        by_region, by_cls = 0, 0
        for data, host in queries:
            found = search_image_regions(
                searcher, "hosts", (data, "crop.jpg"), None, query, LabelRequest()
            )
            by_region += host in [n.path for n in found.neighbours]
            assert all(n.region is not None for n in found.neighbours)
            (whole,) = searcher.search_images("hosts", [(data, "crop.jpg")], query, LabelRequest())
            assert not isinstance(whole, Exception)
            by_cls += host in [n.path for n in whole.neighbours]
    # Recall@5 of the host among 40: region vectors against the CLS vector alone.
    print(f"host in the top 5 of 40: by region {by_region}, by CLS {by_cls}")
    assert by_region >= 2 * by_cls + 4, (by_region, by_cls)
