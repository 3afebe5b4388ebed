"""``dinoseek adapt`` through the real CLI, with the tiny random DINOv2 (through
``from_pretrained``): the saved directory, the before/after check, and the clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from dinoseek.synthetic import write_image_folder
from dinoseek_cli.main import main

pytestmark = pytest.mark.model

FAST = (
    "--batch-size", "8", "--global-size", "56", "--local-size", "28", "--local-crops", "2",
    "--prototypes", "64", "--head-hidden", "64", "--head-bottleneck", "32", "--workers", "0",
    "--device", "cpu", "--train", "all", "--lr", "1e-3",
)  # fmt: skip


def adapt(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["adapt", *map(str, args), *FAST])


def adapt_json(*args: str | Path) -> dict[str, Any]:
    result = adapt(*args, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_image_folder(folder, count=24, size=(96, 80))
    return folder


@pytest.fixture(scope="module")
def adapted(
    photos: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("runs") / "adapted"
    summary = adapt_json(photos, "--model", tiny_model_dir, "--out", out, "--steps", "4",
                         "--eval-labels", photos)  # fmt: skip
    return out, summary


def test_the_saved_model_loads_through_transformers_and_dinoseek(
    adapted: tuple[Path, dict[str, Any]], tiny_model_dir: Path
) -> None:
    import torch
    from transformers import AutoModel

    from dinoseek.torch_embedder import Embedder

    out, _ = adapted
    model = AutoModel.from_pretrained(out)
    base = AutoModel.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Dinov2Model"
    changed = [
        name for name, value in model.state_dict().items()
        if not torch.equal(value, base.state_dict()[name])
    ]  # fmt: skip
    assert changed
    embedder = Embedder.from_pretrained(str(out), device="cpu", dtype="float32")
    assert embedder.dim == 32
    assert embedder.preprocessing == Embedder.from_pretrained(str(tiny_model_dir)).preprocessing
    assert not (out / "checkpoint").exists()
    card = (out / "README.md").read_text()
    assert str(tiny_model_dir) in card
    assert "| adapted |" in card
    assert len((out / "adapt-log.jsonl").read_text().splitlines()) == 4


def brute_force_scores(vectors: np.ndarray, labels: list[str], k: int) -> tuple[float, float]:
    """Leave-one-out kNN accuracy (votes exp(similarity / 0.07)) and recall@1, pair by pair."""
    count, right_knn, right_first = len(labels), 0, 0
    for i in range(count):
        others = sorted(
            (j for j in range(count) if j != i), key=lambda j: -float(vectors[i] @ vectors[j])
        )
        votes: dict[str, float] = {}
        for j in others[:k]:
            votes[labels[j]] = votes.get(labels[j], 0.0) + np.exp(vectors[i] @ vectors[j] / 0.07)
        right_knn += max(votes, key=lambda label: votes[label]) == labels[i]
        right_first += labels[others[0]] == labels[i]
    return right_knn / count, right_first / count


def test_the_check_is_the_brute_force_answer_on_the_held_out_images(
    adapted: tuple[Path, dict[str, Any]], photos: Path, tiny_model_dir: Path
) -> None:
    """4 classes of 6 images, half of each held out: 3 per class, so kNN takes k = 2 (with
    k = 20, or 11, every point was outvoted by the other classes: chance for any features).
    The reference embeds the listed held-out images with both models and scores them here."""
    from dinoseek.folder_vectors import embed_files
    from dinoseek.torch_embedder import Embedder

    out, summary = adapted
    check = summary["check"]
    assert check["kind"] == "labelled"
    assert (check["classes"], check["images"], check["taken_from_folder"]) == (4, 12, 12)
    assert (summary["files"], summary["images"], summary["unusable_images"]) == (24, 12, 0)
    held_out = [Path(p) for p in check["held_out"]]
    labels = [p.parent.name for p in held_out]
    assert sorted(labels) == sorted([*{p.parent.name for p in photos.rglob("*.jpg")}] * 3)
    assert (check["knn_k"], check["knn_k_wanted"], check["smallest_class"]) == (2, 20, 3)
    for name, model in (("base", tiny_model_dir), ("adapted", out)):
        embedder = Embedder.from_pretrained(str(model), device="cpu", dtype="float32")
        found = embed_files(held_out, embedder, max_pixels=10**8, max_bytes=10**8, batch_size=16)
        assert found.paths == held_out
        knn, recall = brute_force_scores(found.vectors, labels, k=2)
        assert check[name]["knn_accuracy"] == pytest.approx(knn), name
        assert check[name]["recall@1"] == pytest.approx(recall), name
    assert summary["steps"] == 4
    assert summary["first_loss"] > 0
    card = (out / "README.md").read_text()
    assert "| model | kNN accuracy (k=2) | recall@1 |" in card
    assert "(k = 2, not 20: the smallest class has 3 images here, so a point of it has 2 " in card


def test_an_adapted_model_gets_a_collection_of_its_own(
    adapted: tuple[Path, dict[str, Any]], photos: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out, _ = adapted
    data = ("--data-dir", str(tmp_path / "data"))
    runner = CliRunner()
    base = runner.invoke(main, ["index", str(photos), "--model", str(tiny_model_dir), *data])
    assert base.exit_code == 0, base.output
    mixed = runner.invoke(main, ["index", str(photos), "--model", str(out), *data])
    assert mixed.exit_code != 0
    assert "an adaptation by dinoseek adapt" in mixed.output
    own = runner.invoke(main, ["index", str(photos), "--model", str(out), "-c", "adapted",
                               *data, "--json"])  # fmt: skip
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)["collection"] == "adapted"


def test_without_labels_it_says_no_labelled_check_was_possible(
    photos: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    summary = adapt_json(photos, "--model", tiny_model_dir, "--out", tmp_path / "o",
                         "--steps", "2")  # fmt: skip
    assert summary["check"]["kind"] == "unlabelled"
    assert summary["images"] == 24
    assert 0.0 <= summary["check"]["knn_agreement"] <= 1.0
    assert "no labelled check" in summary["check"]["note"]


def test_every_count_of_images_is_the_same_count(
    photos: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """24 images, two files that are no image and one whose pixels are cut off (its header
    is whole): one list of 3 everywhere, and 24 trained on and checked."""
    folder = tmp_path / "mixed"
    shutil.copytree(photos, folder)
    bad = ("cut.png", "empty.png", "not-an-image.jpg")
    (folder / "not-an-image.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    whole = tmp_path / "whole.png"
    Image.new("RGB", (200, 200), (0, 90, 200)).save(whole)
    (folder / "cut.png").write_bytes(whole.read_bytes()[:120])
    result = adapt(folder, "--model", tiny_model_dir, "--out", tmp_path / "o", "--steps", "2",
                   "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["files"], summary["images"], summary["unusable_images"]) == (27, 24, 3)
    assert sorted(Path(p).name for p in summary["unusable"]) == list(bad)
    assert summary["check"]["images"] == 24
    text = adapt(folder, "--model", tiny_model_dir, "--out", tmp_path / "t", "--steps", "2")
    assert f"27 image files in {folder}: 24 trained on, 3 could not be used" in text.stdout
    few = tmp_path / "few"
    few.mkdir()
    for path in [*sorted(photos.rglob("*.jpg"))[:6], *(folder / n for n in bad)]:
        shutil.copy(path, few / path.name)
    refused = adapt(few, "--model", tiny_model_dir, "--out", tmp_path / "f", "--steps", "1")
    assert refused.exit_code == 2
    assert f"9 image files in {few}: 6 to train on, 3 could not be used" in refused.output


def test_a_folder_smaller_than_the_batch_trains_in_batches_of_all_it_holds(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The default --batch-size 32 on 12 images: batches of 12, with a warning."""
    folder = tmp_path / "twelve"
    write_image_folder(folder, count=12, size=(64, 64))

    def run(images: Path, out: str) -> Result:
        options = [*FAST[2:], "--epochs", "2", "--json"]
        assert "--batch-size" not in options
        return CliRunner().invoke(main, ["adapt", str(images), "--model", str(tiny_model_dir),
                                         "--out", str(tmp_path / out), *options])  # fmt: skip

    result = run(folder, "o")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["batch_size"], summary["steps"], summary["images"]) == (12, 2, 12)
    assert summary["config"]["batch_size"] == 12
    assert "batches of 12 images instead of --batch-size 32" in result.stderr
    seven = tmp_path / "seven"
    write_image_folder(seven, count=7, size=(64, 64))
    refused = run(seven, "s")
    assert refused.exit_code == 2
    assert "fewer than one batch of 8 (the smallest batch a run lowers to)" in refused.output


def test_a_collapse_stops_with_a_clear_message(
    photos: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = adapt(photos, "--model", tiny_model_dir, "--out", tmp_path / "o", "--steps", "20",
                   "--min-feature-spread", "100")  # fmt: skip
    assert result.exit_code == 1
    assert "training collapsed at step" in result.output
    assert "feature spread" in result.output


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty folder", "no image files"),
        ("not dinov2", "dinoseek needs a DINOv2"),
        ("out exists", "--overwrite"),
        ("too few images", "fewer than one batch"),
        ("resume without checkpoint", "holds no checkpoint"),
        ("both lengths", "--steps or --epochs"),
        ("labels without classes", "two classes or more"),
    ],
)
def test_bad_input_gets_a_clear_error(
    case: str, message: str, photos: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder, model, extra = photos, tiny_model_dir, ["--steps", "1"]
    out = tmp_path / "out"
    if case == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
    elif case == "not dinov2":
        from transformers import ViTConfig, ViTModel

        model = tmp_path / "vit"
        ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64)).save_pretrained(model)  # fmt: skip
        shutil.copy(tiny_model_dir / "preprocessor_config.json", model)
    elif case == "out exists":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    elif case == "too few images":
        folder = tmp_path / "few"
        write_image_folder(folder, count=3, size=(64, 64))
    elif case == "resume without checkpoint":
        extra.append("--resume")
    elif case == "both lengths":
        extra += ["--epochs", "1"]
    elif case == "labels without classes":
        flat = tmp_path / "flat"
        flat.mkdir()
        for source in sorted(photos.rglob("*.jpg"))[:4]:
            shutil.copy(source, flat / source.name)
        extra += ["--eval-labels", str(flat)]
    result = adapt(folder, "--model", model, "--out", out, *extra)
    assert result.exit_code == (1 if case == "not dinov2" else 2), result.output
    assert message in result.output
    if case == "out exists":
        assert (out / "precious.txt").read_text() == "keep me"
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


KNN_SETTINGS = (
    "--steps", "60", "--batch-size", "16", "--global-size", "112", "--local-size", "56",
    "--local-crops", "4", "--prototypes", "256", "--head-hidden", "128",
    "--head-bottleneck", "64", "--train", "all", "--lr", "1e-3", "--device", "cpu",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a hang detector: 60 training steps on a busy 2-core machine
@pytest.mark.parametrize("seed", [1, 3])
def test_adaptation_raises_knn_accuracy_on_distinct_classes(
    seed: int, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Hue classes under brightness and clutter (``write_colour_folder``), 60 steps, half of
    each class held out. Over seeds 1-5 (data and training) kNN accuracy (k = 19: 20 images
    per class) on the 80 held-out images went 0.700 -> 0.812, 0.662 -> 0.775,
    0.738 -> 0.812, 0.762 -> 0.875 and 0.725 -> 0.825: a gain of 0.075 to 0.113. A run that
    learns nothing stays at its base."""
    from dinoseek.synthetic import write_colour_folder

    folder = tmp_path / "colours"
    write_colour_folder(folder, per_class=40, seed=seed)
    result = CliRunner().invoke(main, ["adapt", str(folder), "--model", str(tiny_model_dir),
                                       "--out", str(tmp_path / "out"), "--eval-labels",
                                       str(folder), "--seed", str(seed), *KNN_SETTINGS,
                                       "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    check = json.loads(result.stdout)["check"]
    assert check["images"] == 80
    assert check["adapted"]["knn_accuracy"] >= check["base"]["knn_accuracy"] + 0.05
