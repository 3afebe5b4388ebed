"""A resize bomb: a tiny image of extreme aspect ratio passes the pixel limit, and resizing
its short edge to 256 before cropping would make it enormous (a 4000 x 1 PNG of 84 bytes once
took 2.76 GB and 12 s; 20000 x 1 ran out of memory; 40,000,000 x 1 raised OverflowError).
An image that big after the resize has only its crop window resized now, so the cost is that
of the output."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.images import prepare_image
from dinoseek.preprocessing import DINOV2_PREPROCESSING, MAX_RESIZE_FACTOR
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from indexer.pipeline import IndexOptions, index_folders
from search_api.app import create_app
from tests.hostile.bombs import strip_png

REPO = Path(__file__).resolve().parents[2]
SHAPES = [(4000, 1), (20_000, 1), (1, 20_000), (40_000_000, 1)]

# Decode and preprocess each bomb in a process whose address space is capped at 1.5 GiB: the
# old geometry needed 2.76 GB for the smallest of them.
UNDER_A_MEMORY_CAP = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
    from dinoseek.images import prepare_image
    from dinoseek.preprocessing import DINOV2_PREPROCESSING
    from tests.hostile.bombs import strip_png
    for text in sys.argv[1:]:
        width, height = map(int, text.split("x"))
        prepared = prepare_image(
            strip_png(width, height), DINOV2_PREPROCESSING, max_pixels=40_000_000
        )
        print(text, prepared.pixels.shape, flush=True)
    """
)


def test_bombs_preprocess_within_a_memory_cap() -> None:
    shapes = [f"{w}x{h}" for w, h in SHAPES]
    done = subprocess.run(
        [sys.executable, "-c", UNDER_A_MEMORY_CAP, *shapes],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:-1] == [f"{s} (224, 224, 3)" for s in shapes]


@pytest.mark.parametrize(("width", "height"), SHAPES[:3])
def test_bombs_cost_what_their_output_costs(
    width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work is counted in pixels made, not seconds: every resize of the image makes at
    most ``MAX_RESIZE_FACTOR`` times the model input's pixels (the whole strip resized would
    be 256 x 256,000 pixels for the smallest)."""
    made: list[int] = []
    resize = Image.Image.resize

    def counting_resize(self: Image.Image, size: tuple[int, int], *args: Any, **kw: Any) -> Any:
        made.append(size[0] * size[1])
        return resize(self, size, *args, **kw)

    monkeypatch.setattr(Image.Image, "resize", counting_resize)
    data = strip_png(width, height)
    assert len(data) < 1000
    prepared = prepare_image(data, DINOV2_PREPROCESSING, max_pixels=40_000_000)
    assert prepared.pixels.shape == (224, 224, 3)
    assert (prepared.width, prepared.height) == (width, height)
    assert made, "no resize was made"
    assert max(made) <= MAX_RESIZE_FACTOR * 224 * 224


def test_a_strip_keeps_its_content() -> None:
    """The crop window is the middle of the resized strip, as transformers would cut it."""
    strip = Image.new("RGB", (3000, 2))
    strip.paste((255, 0, 0), (0, 0, 1500, 2))  # red left half, black right half
    pixels = DINOV2_PREPROCESSING.to_pixels(strip)
    assert pixels.shape == (224, 224, 3)
    assert pixels[:, :100, 0].mean() > 200  # left of the middle: red
    assert pixels[:, 124:, 0].mean() < 30  # right of the middle: black


def resized_then_cropped(image: Image.Image) -> np.ndarray:
    """The plain way, as transformers does it: resize everything, then crop (padding an
    image smaller than the crop with zeros)."""
    preprocessing = DINOV2_PREPROCESSING
    new_width, new_height = preprocessing.resized_size(image.width, image.height)
    whole = np.asarray(image.resize((new_width, new_height), resample=preprocessing.resample))
    crop_height, crop_width = preprocessing.crop or (0, 0)
    top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
    expected = np.zeros((crop_height, crop_width, 3), dtype=np.int16)
    y0, y1 = max(top, 0), min(top + crop_height, new_height)
    x0, x1 = max(left, 0), min(left + crop_width, new_width)
    expected[y0 - top : y1 - top, x0 - left : x1 - left] = whole[y0:y1, x0:x1]
    return expected


def noise(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize(
    ("width", "height"),
    [(257, 300), (300, 257), (300, 900), (900, 300), (640, 480), (613, 911), (100, 80)],
)
def test_an_ordinary_image_has_exactly_the_pixels_of_transformers(width: int, height: int) -> None:
    """Resized whole, then cropped: the same pixels, to the level, on noise (where the order
    of Pillow's two passes would show) and at scales near 1, portrait and landscape."""
    assert DINOV2_PREPROCESSING.resizes_whole(width, height)
    image = noise(width, height)
    ours = DINOV2_PREPROCESSING.to_pixels(image).astype(np.int16)
    assert np.array_equal(ours, resized_then_cropped(image))


@pytest.mark.parametrize(("width", "height"), [(2, 2000), (3000, 20), (60, 4000)])
def test_an_extreme_image_has_about_the_pixels_of_transformers(width: int, height: int) -> None:
    """Only the crop window is resized (the whole image would be 16 times the model input,
    or far more): the same pixels but for rounding."""
    assert not DINOV2_PREPROCESSING.resizes_whole(width, height)
    image = noise(width, height)
    ours = DINOV2_PREPROCESSING.to_pixels(image).astype(np.int16)
    difference = np.abs(ours - resized_then_cropped(image))
    assert difference.mean() < 1.0


@pytest.fixture
def client(tmp_path: Path, embedder: ImageEmbedder) -> TestClient:
    settings = Settings(model=embedder.model_id, data_dir=tmp_path / "data")
    with EdgeStore(tmp_path / "data") as store:
        store.ensure_collection("images", embedder.space)
    return TestClient(create_app(settings, embedder=embedder, store=EdgeStore(tmp_path / "data")))


def test_the_service_answers_bombs_and_batches_go_on(client: TestClient) -> None:
    with client:
        for width, height in SHAPES:
            upload = {"image": (f"{width}x{height}.png", strip_png(width, height))}
            assert client.post("/search", files=upload).status_code == 200
        huge_header = {"image": ("huge.png", strip_png(1, 1)[:16] + b"\x00" * 8)}
        assert client.post("/search", files=huge_header).status_code < 500
        batch = [
            ("images", ("a.png", strip_png(20_000, 1))),
            ("images", ("b.png", b"\x89PNG\r\n\x1a\n broken")),
            ("images", ("c.png", strip_png(3, 3))),
        ]
        items = client.post("/search/batch", files=batch).json()["items"]
        assert [item["error"] is None for item in items] == [True, False, True]


def test_the_indexer_embeds_bombs(tmp_path: Path, embedder: ImageEmbedder) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for width, height in SHAPES:
        (photos / f"{width}x{height}.png").write_bytes(strip_png(width, height))
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        workers=0,
        progress="off",
        failures_report=tmp_path / "failures.jsonl",
    )
    with EdgeStore(tmp_path / "data") as store:
        summary = index_folders(embedder, store, options)
    assert summary.failed == 0
    assert summary.embedded == len(SHAPES)  # each size is another content: another point
