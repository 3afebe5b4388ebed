"""``dinoseek.adapt``: the recipe's pieces and a few real training steps of the tiny DINOv2
(random weights, through ``from_pretrained``) on the CPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinoseek.adapt.augment import CropSpec, multi_crop
from dinoseek.adapt.compare import held_out_split, knn_agreement, knn_k
from dinoseek.adapt.config import AdaptConfig, RunOptions
from dinoseek.adapt.data import (
    MIN_BATCH,
    DecodeLimits,
    StepBatches,
    check_images,
    fitted_batch_size,
)
from dinoseek.adapt.losses import dino_loss, koleo_loss, sinkhorn_knopp
from dinoseek.adapt.model import HeadSpec, Trainable, build_networks
from dinoseek.adapt.schedules import warmup_cosine
from dinoseek.adapt.training import Trained, TrainingStoppedError, train
from dinoseek.errors import ConfigError
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek.synthetic import write_image_folder
from dinoseek.torch_embedder import load_dinov2

pytestmark = pytest.mark.model

LIMITS = DecodeLimits(max_pixels=50_000_000, max_bytes=50_000_000)
RUN = RunOptions(device="cpu", workers=0, checkpoint_every=1000)
SMALL_CROPS = CropSpec(global_size=56, local_size=28, local_crops=2)
SMALL_HEAD = HeadSpec(prototypes=64, hidden=64, bottleneck=32)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("adapt-images")
    return write_image_folder(folder, count=24, size=(96, 80))


def small_config(model: Path, **changes: object) -> AdaptConfig:
    values: dict[str, object] = {
        "model": str(model), "steps": 4, "batch_size": 8, "crops": SMALL_CROPS,
        "head": SMALL_HEAD, "trainable": Trainable("all"), "lr": 1e-3,
    }  # fmt: skip
    values.update(changes)
    return AdaptConfig(**values)  # type: ignore[arg-type]


def run(config: AdaptConfig, images: list[Path], where: Path, **kwargs: object) -> Trained:
    return train(config, images, where, limits=LIMITS, run=RUN, **kwargs)  # type: ignore[arg-type]


def state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


# -- views, schedules, losses ---------------------------------------------------------------


def test_views_are_seeded_and_of_the_recipe_shapes() -> None:
    image = Image.new("RGB", (120, 90), (10, 200, 30))
    image.paste((250, 20, 20), (30, 20, 80, 70))
    spec = CropSpec(global_size=42, local_size=28, local_crops=3)
    first = multi_crop(image, spec, np.random.default_rng([1, 2]))
    again = multi_crop(image, spec, np.random.default_rng([1, 2]))
    other = multi_crop(image, spec, np.random.default_rng([1, 3]))
    assert first.global_crops.shape == (2, 42, 42, 3)
    assert first.local_crops.shape == (3, 28, 28, 3)
    assert first.global_crops.dtype == np.uint8
    assert np.array_equal(first.global_crops, again.global_crops)
    assert np.array_equal(first.local_crops, again.local_crops)
    assert not np.array_equal(first.global_crops, other.global_crops)
    assert not np.array_equal(first.global_crops[0], first.global_crops[1])


def test_schedules_warm_up_then_follow_a_cosine() -> None:
    assert warmup_cosine(0, 100, 1.0, 0.0, warmup=10) == 0.0
    assert warmup_cosine(5, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 1.0, 0.0, warmup=10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 1.0, 0.0, warmup=10) == pytest.approx(0.0)
    assert warmup_cosine(50, 100, 0.992, 1.0) == pytest.approx(0.996)


def test_sinkhorn_targets_are_distributions_that_use_the_prototypes_equally() -> None:
    logits = torch.randn(64, 16) * 0.3 + torch.linspace(0, 1, 16)  # a bias to prototype 15
    targets = sinkhorn_knopp(logits, temperature=0.05, iterations=20)
    assert torch.allclose(targets.sum(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(targets.sum(dim=0), torch.full((16,), 64 / 16), atol=0.2)
    plain = torch.softmax(logits / 0.05, dim=1).sum(dim=0)
    assert plain[15] > 3 * plain[0]  # without Sinkhorn-Knopp, one prototype dominates


def test_dino_loss_never_matches_a_global_view_with_itself() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2 * 3, 8), torch.softmax(torch.randn(2 * 3, 8), dim=1)
    loss = dino_loss(student, student[:0], teacher)
    log_probs = torch.log_softmax(student / 0.1, dim=1)
    cross = (
        -(teacher[3:] * log_probs[:3]).sum(1).mean() - (teacher[:3] * log_probs[3:]).sum(1).mean()
    )
    assert loss == pytest.approx(float(cross / 2), rel=1e-5)


def test_koleo_rewards_spread_features() -> None:
    torch.manual_seed(0)
    spread = torch.randn(32, 16)
    huddled = torch.randn(1, 16) + 0.01 * torch.randn(32, 16)
    assert koleo_loss(spread) < koleo_loss(huddled)


def test_the_knn_agreement_of_a_set_with_itself_is_one() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert knn_agreement(vectors, vectors) == 1.0
    shuffled = vectors[rng.permutation(50)]
    assert knn_agreement(vectors, shuffled) < 0.5


def test_knn_k_is_what_the_smallest_class_allows() -> None:
    assert knn_k(np.array([0] * 40 + [1] * 30)) == 20
    assert knn_k(np.array([0] * 40 + [1] * 3)) == 2  # a point of class 1 has 2 of its own
    assert knn_k(np.array([0, 0, 1, 1])) == 1


def test_a_batch_is_lowered_to_the_images_there_are_down_to_a_floor() -> None:
    assert fitted_batch_size(100, 32, "100 images") == 32
    assert fitted_batch_size(20, 32, "20 images") == 20
    assert fitted_batch_size(MIN_BATCH, 32, "8 images") == MIN_BATCH
    assert fitted_batch_size(5, 4, "5 images") == 4
    with pytest.raises(ConfigError, match="7 images: fewer than one batch of 8"):
        fitted_batch_size(7, 32, "7 images")
    with pytest.raises(ConfigError, match=r"fewer than one batch of 4 \(--batch-size\)"):
        fitted_batch_size(3, 4, "3 images")


def test_held_out_images_are_never_trained_on(tmp_path: Path) -> None:
    training = [tmp_path / f"{c}{i}.jpg" for c in "ab" for i in range(10)]
    outside = tmp_path / "elsewhere.jpg"
    labels = {p: p.name[0] for p in training} | {outside: "a"}
    held = held_out_split(labels, training, fraction=0.3, seed=0)
    assert outside in held
    assert sum(1 for p in held if p.name.startswith("a") and p != outside) == 3
    assert sum(1 for p in held if p.name.startswith("b")) == 3
    assert held == held_out_split(labels, training, fraction=0.3, seed=0)


# -- the data -------------------------------------------------------------------------------


def test_a_step_batch_depends_on_the_step_only(images: list[Path]) -> None:
    batches = StepBatches(images, batch_size=4, spec=SMALL_CROPS, seed=3, limits=LIMITS)
    first, again, next_step = batches[5], batches[5], batches[6]
    assert first.global_crops.shape == (2, 4, 56, 56, 3)
    assert first.local_crops.shape == (2, 4, 28, 28, 3)
    assert torch.equal(first.global_crops, again.global_crops)
    assert not torch.equal(first.global_crops, next_step.global_crops)


def test_unreadable_files_are_reported_not_trained_on(images: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    checked = check_images([*images[:3], broken, empty], LIMITS, DINOV2_PREPROCESSING)
    assert checked.paths == tuple(images[:3])
    assert set(checked.failed) == {broken, empty}
    assert "empty" in checked.failed[empty]


def test_a_file_that_fails_to_decode_during_training_is_replaced_and_reported(
    images: list[Path], tmp_path: Path
) -> None:
    whole = tmp_path / "whole.png"
    Image.new("RGB", (200, 200), (0, 90, 200)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:120])  # a valid header, pixels cut off
    # The check decodes every pixel: a whole header over truncated pixels is refused there.
    assert truncated in check_images([truncated], LIMITS, DINOV2_PREPROCESSING).failed
    # A file that breaks after the check (here: one handed in unchecked) is replaced.
    batches = StepBatches([truncated, *images[:3]], batch_size=4, spec=SMALL_CROPS, seed=0,
                          limits=LIMITS)  # fmt: skip
    batch = batches[0]
    assert batch.global_crops.shape[1] == 4
    assert [path for path, _ in batch.failed] == [str(truncated)]


# -- training -------------------------------------------------------------------------------


def test_the_teacher_is_the_ema_of_the_student(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    config = small_config(tiny_model_dir, steps=1, momentum=0.9)
    trained = run(config, images, tmp_path)
    student0, teacher0 = build_networks(
        load_dinov2(str(tiny_model_dir)).model, SMALL_HEAD, Trainable("all"), seed=config.seed
    )
    pairs = zip(state(student0).values(), state(teacher0).values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    student1, teacher1, before = state(trained.student), state(trained.teacher), state(teacher0)
    moved = 0
    for name, value in teacher1.items():
        expected = 0.9 * before[name] + 0.1 * student1[name]
        assert torch.allclose(value, expected, atol=1e-6), name
        moved += int(not torch.equal(value, before[name]))
    assert moved > 10  # the student did change, and the teacher followed


@pytest.mark.parametrize("checkpointing", [False, True])
def test_frozen_blocks_do_not_change(
    checkpointing: bool, tiny_model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    config = small_config(tiny_model_dir, steps=3, trainable=Trainable("blocks", blocks=1))
    options = RunOptions(device="cpu", workers=0, gradient_checkpointing=checkpointing)
    trained = train(config, images, tmp_path, limits=LIMITS, run=options)
    base = load_dinov2(str(tiny_model_dir)).model.state_dict()
    for network in (trained.student, trained.teacher):
        backbone = network.backbone.state_dict()
        for name, value in backbone.items():
            frozen = name.startswith(("embeddings.", "encoder.layer.0."))
            assert torch.equal(value, base[name]) == frozen, name


def test_the_loss_falls(tiny_model_dir: Path, images: list[Path], tmp_path: Path) -> None:
    trained = run(small_config(tiny_model_dir, steps=30), images, tmp_path)
    losses = [m.loss for m in trained.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert all(np.isfinite(losses))


def test_a_stopped_run_resumes_to_the_same_parameters(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    config = small_config(tiny_model_dir, steps=6, ibot_weight=1.0)
    whole = run(config, images, tmp_path / "whole")
    stop = threading.Event()

    def stop_after_two(metrics: object) -> None:
        if metrics.step == 2:
            stop.set()

    with pytest.raises(TrainingStoppedError) as stopped:
        run(config, images, tmp_path / "parts", on_step=stop_after_two, stop=stop)
    assert stopped.value.step == 2
    resumed = run(config, images, tmp_path / "parts", resume=True)
    assert resumed.resumed_from == 2
    assert [m.step for m in resumed.history] == list(range(1, 7))
    for name, value in state(whole.teacher).items():
        assert torch.allclose(value, state(resumed.teacher)[name], atol=1e-5), name
    assert [m.loss for m in resumed.history] == pytest.approx([m.loss for m in whole.history])


def test_resume_refuses_other_settings(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    run(small_config(tiny_model_dir, steps=1), images, tmp_path)
    with pytest.raises(ConfigError, match="lr"):
        run(small_config(tiny_model_dir, steps=1, lr=5e-4), images, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="images changed"):
        run(small_config(tiny_model_dir, steps=1), images[:-1], tmp_path, resume=True)


def test_lora_trains_only_the_adapters_and_saves_a_plain_dinov2(
    tiny_model_dir: Path, images: list[Path], tmp_path: Path
) -> None:
    from dinoseek.adapt.model import merged_backbone

    config = small_config(
        tiny_model_dir, steps=3, lr=1e-2, trainable=Trainable("lora", lora_rank=4)
    )
    trained = run(config, images, tmp_path)
    trainable = [n for n, p in trained.student.named_parameters() if p.requires_grad]
    backbone_trainable = [n for n in trainable if n.startswith("backbone.")]
    assert backbone_trainable
    assert all("lora_" in n for n in backbone_trainable)
    merged = merged_backbone(trained.teacher).state_dict()
    base = load_dinov2(str(tiny_model_dir)).model.state_dict()
    assert merged.keys() == base.keys()
    changed = {n for n in base if not torch.equal(merged[n], base[n])}
    assert changed
    assert all(n.endswith(("q_proj.weight", "v_proj.weight", "query.weight", "value.weight"))
               for n in changed)  # fmt: skip
