"""The DINOv2 embedder (the tiny random model through ``from_pretrained``) against the
reference transformers pipeline, and its failure modes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder, fingerprint_pixels
from dinoseek.errors import ConfigError, EmbeddingError, ModelLoadError
from dinoseek.images import decode_image
from dinoseek.torch_embedder import (
    BATCH_BUCKETS,
    Embedder,
    bucket_for,
    resolve_device,
    resolve_dtype,
)
from tests.helpers import encode, photo

pytestmark = pytest.mark.model

# Varied sizes: landscape, portrait, square, tiny, extreme aspect ratio, larger than the input.
SIZES = [(500, 375), (375, 500), (224, 224), (31, 17), (900, 120), (1200, 800)]


def prepare(embedder: ImageEmbedder, image: Image.Image) -> np.ndarray:
    return embedder.preprocessing.to_pixels(image)


def embed_images(embedder: ImageEmbedder, images: list[Image.Image]) -> np.ndarray:
    if not images:
        return embedder.embed_pixels(np.zeros((0, 224, 224, 3), np.uint8))
    return embedder.embed_pixels(np.stack([prepare(embedder, image) for image in images]))


def reference_embeddings(model_dir: str, images: list[Image.Image]) -> np.ndarray:
    """The plain transformers pipeline: AutoImageProcessor + AutoModel in fp32, CLS token."""
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        inputs = processor(images=images, return_tensors="pt")
        cls = model(**inputs).last_hidden_state[:, 0]
    return torch.nn.functional.normalize(cls, dim=1).numpy()


def test_matches_the_reference_pipeline_on_varied_images(tiny_embedder: Embedder) -> None:
    images = [
        decode_image(encode(photo(seed, size, kind)), max_pixels=10**8).image
        for seed, (size, kind) in enumerate(
            zip(SIZES, ["circles", "stripes", "squares", "triangles", "dots", "waves"], strict=True)
        )
    ]
    ours = embed_images(tiny_embedder, images)
    reference = reference_embeddings(tiny_embedder.model_id, images)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_vectors_are_normalised_float32(tiny_embedder: Embedder) -> None:
    vectors = embed_images(tiny_embedder, [photo(1), photo(2, kind="stripes")])
    assert vectors.shape == (2, tiny_embedder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert embed_images(tiny_embedder, []).shape == (0, tiny_embedder.dim)


def test_batching_does_not_change_vectors(tiny_embedder: Embedder) -> None:
    images = [photo(seed) for seed in range(5)]
    one_by_one = np.concatenate([embed_images(tiny_embedder, [image]) for image in images])
    batched = embed_images(tiny_embedder, images)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)


def test_patch_tokens(tiny_embedder: Embedder) -> None:
    pixels = np.stack([prepare(tiny_embedder, photo(0)), prepare(tiny_embedder, photo(1))])
    result = tiny_embedder.embed_with_patches(pixels)
    assert result.cls.shape == (2, tiny_embedder.dim)
    assert result.patch_tokens.shape == (2, (224 // 14) ** 2, tiny_embedder.dim)
    assert result.grid == (16, 16)
    np.testing.assert_allclose(result.cls, tiny_embedder.embed_pixels(pixels), atol=1e-6)


def test_describes_itself(tiny_embedder: Embedder) -> None:
    description = tiny_embedder.describe()
    assert description["dim"] == 32
    assert description["dtype"] == "float32"
    assert description["preprocessing"]["crop"] == [224, 224]
    assert description["preprocessing"]["resample"] == "bicubic"


def test_space_fingerprint_separates_models(tiny_embedder: Embedder, other_model_dir: Path) -> None:
    other = Embedder.from_pretrained(str(other_model_dir), device="cpu")
    assert tiny_embedder.space.dim == other.space.dim
    with pytest.raises(Exception, match="different model"):
        other.space.check_compatible(tiny_embedder.space, "images")
    same = Embedder.from_pretrained(tiny_embedder.model_id, device="cpu")
    same.space.check_compatible(tiny_embedder.space, "images")
    assert fingerprint_pixels((224, 224)).shape == (224, 224, 3)


def test_non_finite_output_is_an_error(tiny_model_dir: Path) -> None:
    broken = Embedder.from_pretrained(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        broken.model.layernorm.weight.fill_(float("nan"))
    with pytest.raises(EmbeddingError, match="non-finite"):
        embed_images(broken, [photo(0)])
    (alone,) = broken.embed_each(prepare(broken, photo(0))[None])
    assert isinstance(alone, EmbeddingError)


def test_rejects_pixels_of_the_wrong_shape(tiny_embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="uint8"):
        tiny_embedder.embed_pixels(np.zeros((1, 3, 224, 224), dtype=np.float32))


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load model") as caught:
        Embedder.from_pretrained(str(tmp_path / "no-such-model"), device="cpu")
    assert "save_pretrained" in caught.value.message


def test_non_dinov2_model_is_refused(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="needs a DINOv2"):
        Embedder.from_pretrained(str(tmp_path), device="cpu")


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


REAL_MODEL = os.environ.get("DINOSEEK_TEST_REAL_MODEL", "facebook/dinov2-small")


@pytest.mark.real_weights
def test_real_weights_match_the_reference() -> None:
    """Needs real DINOv2 weights: set DINOSEEK_TEST_REAL_MODEL or have dinov2-small cached."""
    try:
        real = Embedder.from_pretrained(REAL_MODEL, device="cpu")
    except ModelLoadError as exc:
        if "DINOSEEK_TEST_REAL_MODEL" in os.environ:
            raise  # asked for: a load error is a failure, not a skip
        pytest.skip(f"real DINOv2 weights are not available here ({REAL_MODEL}): {exc.message}")
    images = [photo(seed, size) for seed, size in enumerate(SIZES[:3])]
    ours = embed_images(real, images)
    cosines = (ours * reference_embeddings(REAL_MODEL, images)).sum(axis=1)
    assert cosines.min() >= 0.9999


def test_batches_are_padded_to_buckets_and_split_above_them(tiny_model_dir: Path) -> None:
    # The padding that CUDA graphs need, checked without compiling (no GPU here).
    bucketed = Embedder.from_pretrained(str(tiny_model_dir), device="cpu")
    pixels = np.stack([prepare(bucketed, photo(seed)) for seed in range(7)])
    reference = bucketed.embed_pixels(pixels)
    bucketed.buckets = (1, 2, 4)
    seen: list[int] = []
    original = bucketed._run
    bucketed._run = lambda **kw: seen.append(len(kw["pixel_values"])) or original(**kw)
    np.testing.assert_allclose(bucketed.embed_pixels(pixels[:3]), reference[:3], atol=1e-5)
    np.testing.assert_allclose(bucketed.embed_pixels(pixels), reference, atol=1e-5)
    assert seen == [4, 4, 4]  # 3 -> 4; 7 -> 4 + (3 -> 4)
    assert bucket_for(5, BATCH_BUCKETS) == 8
    assert bucket_for(1000, BATCH_BUCKETS) == 256


def test_unknown_compile_mode_is_refused(tiny_embedder: Embedder) -> None:
    with pytest.raises(ConfigError, match="compile mode"):
        tiny_embedder.compile("fastest")


@pytest.mark.slow
def test_compiled_model_gives_the_same_vectors(tiny_model_dir: Path) -> None:
    compiled = Embedder.from_pretrained(str(tiny_model_dir), device="cpu")
    pixels = np.stack([prepare(compiled, photo(seed)) for seed in range(2)])
    reference = compiled.embed_pixels(pixels)
    compiled.compile("default")
    compiled.warm_up([2])
    np.testing.assert_allclose(compiled.embed_pixels(pixels), reference, atol=1e-4)


def test_out_of_memory_batches_are_split_and_lone_failures_reported(tiny_model_dir: Path) -> None:
    """A GPU that runs out of memory above ``limit`` images: none here, so torch's real
    OutOfMemoryError is raised by a stand-in for the forward pass."""
    embedder = Embedder.from_pretrained(str(tiny_model_dir), device="cpu")
    pixels = np.stack([prepare(embedder, photo(seed)) for seed in range(8)])
    reference = embedder.embed_pixels(pixels)
    real_forward = embedder._embed_cls
    sizes: list[int] = []
    limit = 2

    def forward(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        if len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(batch)

    embedder._embed_cls = forward  # type: ignore[method-assign]
    vectors = embedder.embed_each(pixels)
    assert sizes == [8, 4, 2, 2, 4, 2, 2]
    np.testing.assert_allclose(np.stack(vectors), reference, atol=1e-5)  # type: ignore[arg-type]
    limit = 0
    failed = embedder.embed_each(pixels[:2])
    assert all(isinstance(f, EmbeddingError) and f.code == "out_of_memory" for f in failed)

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom: a device error that is not about memory")

    embedder._embed_cls = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        embedder.embed_each(pixels[:2])
