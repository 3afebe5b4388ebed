"""GPU decoding without a GPU: everything but nvJPEG itself runs here.

No GPU exists on this machine, and PyPI's torchvision does not import beside the CPU torch
build, so nvJPEG is replaced by a stand-in that decodes with Pillow and returns the same
CHW uint8 tensor. Orientation, resize, crop, batching, per-image fallback and the pipeline's
use of the stage are the real code.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.gpu_decode import GpuJpegDecoder, JpegJob, center_crop, load_decode_jpeg, orient
from dinoseek.images import decode_image
from dinoseek.scan import ScannedFile, ScanOptions, scan
from dinoseek.store import EdgeStore
from indexer.pipeline import IndexOptions, IndexRun
from indexer.stages.gpu import GpuDecodePool
from indexer.workers import DecodedFile, FailedFile, WorkerConfig
from tests.helpers import encode, photo

TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def pillow_decode(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """Stand-in for nvJPEG (no GPU here): JPEG bytes -> CHW uint8 tensors, one error per
    batch if any image is bad, as torchvision's batched decode_jpeg does."""
    images = []
    for tensor in data:
        image = Image.open(io.BytesIO(tensor.numpy().tobytes()))
        image.load()
        images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
    return images


@pytest.fixture
def decoder(embedder: ImageEmbedder) -> GpuJpegDecoder:
    return GpuJpegDecoder(embedder.preprocessing, torch.device("cpu"), pillow_decode)


@pytest.mark.parametrize("orientation", sorted(TRANSPOSES))
def test_orientation_matches_pillow(orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).transpose(TRANSPOSES[orientation]))
    got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0)
    assert np.array_equal(got.numpy(), expected)


def test_center_crop_pads_small_images() -> None:
    image = torch.full((3, 10, 300), 7, dtype=torch.uint8)
    cropped = center_crop(image, (224, 224))
    assert cropped.shape == (3, 224, 224)
    assert int(cropped[0, 0, 0]) == 0
    assert int(cropped[0, 112, 112]) == 7


@pytest.mark.model
def test_gpu_preprocessing_stays_close_to_pillow(
    decoder: GpuJpegDecoder, tiny_embedder: ImageEmbedder
) -> None:
    sizes = [(500, 375), (375, 500), (1200, 800), (230, 230)]
    datas = [encode(photo(seed, size), "JPEG", quality=92) for seed, size in enumerate(sizes)]
    ours = decoder.decode_batch([JpegJob(data) for data in datas])
    assert all(p is not None and p.shape == (224, 224, 3) for p in ours)
    gpu_path = tiny_embedder.embed_pixels(torch.stack([p for p in ours if p is not None]))
    pillow = [
        tiny_embedder.preprocessing.to_pixels(decode_image(data, max_pixels=10**8).image)
        for data in datas
    ]
    reference = tiny_embedder.embed_pixels(np.stack(pillow))
    assert (gpu_path * reference).sum(axis=1).min() >= 0.999


def test_bad_jpegs_fall_back_one_by_one(decoder: GpuJpegDecoder) -> None:
    good = encode(photo(1, (120, 90)))
    truncated = good[: len(good) // 2]
    garbage = b"\xff\xd8\xff\xe0" + b"\x00" * 50 + b"\xff\xd9"
    results = decoder.decode_batch([JpegJob(good), JpegJob(truncated), JpegJob(garbage)])
    assert results[0] is not None
    assert results[1] is None  # no end marker: left to Pillow, which reports it truncated
    assert results[2] is None  # nvJPEG (the stand-in) refused it: the CPU path decides


def test_torchvision_missing_is_reported_not_fatal(embedder: ImageEmbedder) -> None:
    decode, reason = load_decode_jpeg()
    if decode is None:
        assert "torchvision" in reason
    assert GpuJpegDecoder.create(embedder.preprocessing, "cpu") is None


def scanned(folder: Path) -> list[ScannedFile]:
    return [f for f in scan([folder], ScanOptions()) if isinstance(f, ScannedFile)]


def test_stage_mixes_gpu_jpegs_pillow_others_and_failures(
    decoder: GpuJpegDecoder, embedder: ImageEmbedder, tmp_path: Path
) -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "rotated.jpg").write_bytes(encode(image, "JPEG", exif=exif.tobytes()))
    (tmp_path / "plain.png").write_bytes(encode(photo(2, (64, 48)), "PNG"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    (tmp_path / "huge.jpg").write_bytes(encode(photo(3, (300, 200))))
    config = WorkerConfig(embedder.preprocessing, max_image_pixels=50_000)
    stage = GpuDecodePool(decoder, config, threads=2, batch=4)
    results = {Path(f.path).name: r for f, r in stage.results(scanned(tmp_path), threading.Event())}
    rotated = results["rotated.jpg"]
    assert isinstance(rotated, DecodedFile)
    assert isinstance(rotated.pixels, torch.Tensor)
    assert (rotated.width, rotated.height) == (20, 40)
    plain = results["plain.png"]
    assert isinstance(plain, DecodedFile)
    assert isinstance(plain.pixels, np.ndarray)
    assert isinstance(results["broken.jpg"], FailedFile)
    huge = results["huge.jpg"]
    assert isinstance(huge, FailedFile)
    assert huge.code == "too_many_pixels"


def test_pipeline_with_gpu_decode_stores_the_same_vectors(
    decoder: GpuJpegDecoder,
    embedder: ImageEmbedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(6):
        (photos / f"{seed}.jpg").write_bytes(encode(photo(seed, (320, 240))))
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        batch_size=4,
        workers=0,
        progress="off",
        failures_report=tmp_path / "f.jsonl",
    )
    with EdgeStore(tmp_path / "cpu") as store:
        IndexRun(embedder, store, options).run()
        cpu = {p.id: p.vector for p in store.scroll("images", with_vectors=True)}
        assert len(cpu) == 6
    # Stand-in for a CUDA device: the stage gets the Pillow-backed decoder above.
    monkeypatch.setattr(GpuJpegDecoder, "create", classmethod(lambda cls, *_: decoder))
    gpu_options = IndexOptions(**{**options.__dict__, "gpu_decode": True})
    with EdgeStore(tmp_path / "gpu") as store:
        summary = IndexRun(embedder, store, gpu_options).run()
        gpu = {p.id: p.vector for p in store.scroll("images", with_vectors=True)}
    assert summary.embedded == 6
    assert summary.warnings == []
    assert set(gpu) == set(cpu)
    assert min(float(gpu[i] @ cpu[i]) for i in cpu) >= 0.999


def test_without_a_gpu_the_flag_falls_back_with_a_warning(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(encode(photo(1)))
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        workers=0,
        progress="off",
        failures_report=tmp_path / "f.jsonl",
        gpu_decode=True,
    )
    with EdgeStore(tmp_path / "d") as store:
        summary = IndexRun(embedder, store, options).run()
    assert summary.embedded == 1
    assert "--gpu-decode unavailable" in summary.warnings[0]


def test_an_extreme_aspect_ratio_goes_to_the_cpu_path(decoder: GpuJpegDecoder) -> None:
    """Resizing a 4000 x 1 strip whole would make it 1,024,000 x 256 on the GPU: the CPU
    path, which resizes only the crop window, takes it instead."""
    strip = encode(Image.new("RGB", (4000, 1), (200, 10, 10)))
    sideways = encode(Image.new("RGB", (1, 4000), (200, 10, 10)))
    normal = encode(photo(1, (400, 300)))
    results = decoder.decode_batch([JpegJob(strip), JpegJob(sideways, 6), JpegJob(normal)])
    assert results[0] is None
    assert results[1] is None
    assert results[2] is not None


def test_stage_reports_a_read_past_its_deadline_and_stops_at_once(
    decoder: GpuJpegDecoder, embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """A file whose read never ends (a hung mount, say; here a read that waits on a gate) is
    reported as ``decode_timeout`` and the others go on; a stop does not wait for it."""
    for name in ("a.jpg", "stuck.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(encode(photo(len(name), (64, 48))))
    config = WorkerConfig(embedder.preprocessing, max_image_pixels=10**7, decode_timeout_s=2)
    gate = threading.Event()
    expired: list[str] = []  # reads the gate held to its end: nobody stopped waiting for them

    class Stuck(GpuDecodePool):
        def _read(self, path: str) -> object:  # type: ignore[override]
            if path.endswith("stuck.jpg") and not gate.wait(timeout=120):
                expired.append(path)
            return super()._read(path)

    stage = Stuck(decoder, config, threads=2, batch=1)
    results = {Path(f.path).name: r for f, r in stage.results(scanned(tmp_path), threading.Event())}
    stuck = results.pop("stuck.jpg")
    assert isinstance(stuck, FailedFile)
    assert stuck.code == "decode_timeout"
    assert all(isinstance(r, DecodedFile) for r in results.values())

    stop = threading.Event()
    no_deadline_near = WorkerConfig(embedder.preprocessing, max_image_pixels=10**7)
    waiting = Stuck(decoder, no_deadline_near, threads=2, batch=1)
    stopper = threading.Timer(0.3, stop.set)
    stopper.start()
    list(waiting.results(scanned(tmp_path), stop))  # "stuck.jpg" holds with no deadline near
    assert not expired, "the stage waited for the stuck read instead of stopping"
    gate.set()
