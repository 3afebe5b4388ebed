"""``dinoseek adapt``: continue DINOv2's self-distillation on a folder of unlabelled images,
and show with numbers whether it helped.

The recipe is ``dinoseek.adapt``; this module reads the options, lists and checks the images,
keeps the labelled check-set out of training, shows progress, writes the model directory and
reports the base model against the adapted one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import click
import numpy as np

from dinoseek.adapt.augment import CropSpec
from dinoseek.adapt.compare import (
    KNN_K,
    Scores,
    held_out_split,
    knn_agreement,
    labelled_scores,
)
from dinoseek.adapt.config import AdaptConfig, RunOptions, StepMetrics
from dinoseek.adapt.data import DecodeLimits, check_images, fitted_batch_size
from dinoseek.adapt.model import DEFAULT_TRAINED_BLOCKS, HeadSpec, Trainable
from dinoseek.adapt.output import CARD, model_card, save_model, write_log, write_summary
from dinoseek.adapt.training import Trained, TrainingStoppedError, train
from dinoseek.commandline import (
    EXIT_INTERRUPTED,
    FiniteFloat,
    configure_logging,
    graceful_stop,
    handle_errors,
    load_settings,
)
from dinoseek.embedder_protocol import available_cores
from dinoseek.errors import ConfigError
from dinoseek.folder_vectors import embed_files, image_files
from dinoseek.labels_csv import read_labels_csv
from dinoseek.messages import short_list
from dinoseek.progress import Progress
from dinoseek.runtime import load_embedder
from dinoseek.settings import Settings
from dinoseek.torch_embedder import Dinov2Checkpoint, load_dinov2
from dinoseek_cli.adapt_report import ImageCounts, check_text, summary_document, summary_text

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoint"
AGREEMENT_SAMPLE = 2000


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=True, file_okay=False),
    help="Directory for the adapted model (a save_pretrained checkpoint).",
)
@click.option("--model", default=None, help="Base DINOv2: hub id or local directory "
              "[env: DINOSEEK_MODEL; default: facebook/dinov2-base].")  # fmt: skip
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimiser steps.")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Passes over the folder, instead of --steps [default: 10].",
)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Images per step.")  # fmt: skip
@click.option(
    "--train",
    "train_mode",
    type=click.Choice(["blocks", "lora", "all"]),
    default="blocks",
    show_default=True,
    help="What the student trains: the last --train-blocks blocks, LoRA adapters (needs "
    "peft: pip install 'dinoseek[adapt]'), or the whole backbone.",
)
@click.option("--train-blocks", type=click.IntRange(min=1), default=None,
              help="Blocks trained by --train blocks [default: the last 4, or all of a smaller "
              "model].")  # fmt: skip
@click.option("--lora-rank", type=click.IntRange(min=1), default=8, show_default=True,
              help="Rank of the LoRA adapters (--train lora).")  # fmt: skip
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-4,
              show_default=True, help="Peak learning rate (warm-up, then cosine).")  # fmt: skip
@click.option("--layer-decay", type=FiniteFloat(0, 1, min_open=True), default=0.9,
              show_default=True, help="Learning-rate factor per block below the top.")  # fmt: skip
@click.option("--momentum", type=FiniteFloat(0, 1), default=0.992, show_default=True,
              help="Teacher EMA momentum at the start (a cosine takes it to 1).")  # fmt: skip
@click.option("--teacher-temp", type=FiniteFloat(min=0, min_open=True), default=0.07,
              show_default=True, help="Teacher temperature after a warm-up from 0.04.")  # fmt: skip
@click.option("--prototypes", type=click.IntRange(min=2), default=8192, show_default=True,
              help="Prototypes of the DINO head (DINOv2 used 65536 for 142M images).")  # fmt: skip
@click.option("--head-hidden", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Width of the head's MLP.")  # fmt: skip
@click.option("--head-bottleneck", type=click.IntRange(min=1), default=256, show_default=True,
              help="Width of the head's bottleneck.")  # fmt: skip
@click.option("--global-size", type=click.IntRange(min=14), default=None,
              help="Global crop size [default: the model's input size].")  # fmt: skip
@click.option("--local-size", type=click.IntRange(min=14), default=98, show_default=True,
              help="Local crop size.")  # fmt: skip
@click.option("--local-crops", type=click.IntRange(min=0), default=8, show_default=True,
              help="Local crops per image.")  # fmt: skip
@click.option("--koleo", type=FiniteFloat(min=0), default=0.1, show_default=True,
              help="KoLeo loss weight (0 turns it off).")  # fmt: skip
@click.option("--ibot", type=FiniteFloat(min=0), default=0.0, show_default=True,
              help="iBOT masked-patch loss weight (DINOv2 used 1.0; 0 turns it off).")  # fmt: skip
@click.option(
    "--centring",
    type=click.Choice(["sinkhorn", "centre"]),
    default="sinkhorn",
    show_default=True,
    help="Teacher targets: Sinkhorn-Knopp (DINOv2) or DINO v1's EMA centre.",
)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of every draw: order, views, masks, head, held-out split.")  # fmt: skip
@click.option(
    "--eval-labels",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Labelled images for the before/after check: a folder (label = sub-folder) or a "
    "path,label CSV (paths absolute or relative to FOLDER). They are kept out of training.",
)
@click.option(
    "--eval-holdout",
    type=FiniteFloat(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of each class kept out of training when the labelled images are in FOLDER.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="Where to train (bf16 autocast on cuda) and compare [env: DINOSEEK_DEVICE; "
    "default: auto].",
)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode processes [default: cores - 1, at most 8].")  # fmt: skip
@click.option("--gradient-checkpointing", is_flag=True, help="Less memory, more compute.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Steps between checkpoints (OUT/checkpoint/, removed at the end).")  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
@click.option("--overwrite", is_flag=True, help="Write into --out even if it is not empty.")
@click.option("--min-teacher-entropy", type=FiniteFloat(), default=0.5, show_default=True,
              help="Collapse guard: nats the teacher's mean output must keep.")  # fmt: skip
@click.option("--min-feature-spread", type=FiniteFloat(), default=0.02, show_default=True,
              help="Collapse guard: spread the student's features must keep.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Print only warnings, errors and the result.")
@handle_errors
def adapt(folder: Path, out: Path, as_json: bool, quiet: bool, **options: Any) -> None:
    """Adapt DINOv2 to your images: continue its self-distillation (student and EMA teacher,
    multi-crop, DINO + KoLeo losses, optionally iBOT) on FOLDER, no labels needed, and save
    the teacher to --out for every dinoseek command (--model OUT).

    \b
    dinoseek adapt PHOTOS --model facebook/dinov2-small --out adapted --epochs 10
    dinoseek adapt PHOTOS --out adapted --eval-labels labelled/   # before/after table
    dinoseek index PHOTOS --model adapted --collection adapted     # its own collection

    Kill it (or Ctrl-C) and run it again with --resume: it continues at the same step.
    """
    configure_logging(quiet=quiet or as_json)
    if options["steps"] is not None and options["epochs"] is not None:
        raise click.UsageError("give --steps or --epochs, not both")
    settings = load_settings(model=options["model"], device=options["device"])
    folder = folder.resolve()
    _check_out(out, resume=options["resume"], overwrite=options["overwrite"])
    base = load_dinov2(settings.model)
    files = image_files(folder)
    labels = _eval_labels(options["eval_labels"], folder)
    limits = DecodeLimits(settings.max_image_pixels, settings.max_file_bytes)
    progress = "off" if quiet or as_json else "auto"
    candidates = sorted({*files, *labels})
    checking = Progress(len(candidates), description="checking", mode=progress)
    checked = check_images(candidates, limits, base.preprocessing, on_file=checking.advance)
    checking.close()
    usable = set(checked.paths)
    labels = {path: label for path, label in labels.items() if path in usable}
    in_folder = [path for path in files if path in usable]
    held_out = held_out_split(labels, in_folder, options["eval_holdout"], options["seed"])
    if options["eval_labels"] is not None:
        _require_check_set(options["eval_labels"], {p: labels[p] for p in held_out})
    counts = ImageCounts(
        folder,
        files=len(files),
        training=tuple(path for path in in_folder if path not in held_out),
        held_out=frozenset(held_out),
        unusable={str(path): reason for path, reason in checked.failed.items()},
    )
    batch_size = _batch_size(counts, options["batch_size"])
    config = _config(settings.model, base, len(counts.training), batch_size, options)
    run = _run_options(options, settings.device)
    trained = _train(config, base, counts.training, out, limits, run, options["resume"], progress)
    counts = counts.without(trained.failed)  # changed since the check
    out.mkdir(parents=True, exist_ok=True)
    save_model(trained.teacher, base.processor_config, settings.model, out)
    write_log(trained.history, out)
    check, failed = _before_after(settings, out, labels, counts, limits, progress)
    counts = counts.without(failed)
    summary = summary_document(out, config, counts, trained, check)
    write_summary(summary, out)
    (out / CARD).write_text(model_card(config, summary, check_text(check)))
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(summary_text(summary))


def _batch_size(counts: ImageCounts, requested: int) -> int:
    """--batch-size, lowered (with a warning) to the images there are to train on."""
    size = fitted_batch_size(len(counts.training), requested, counts.text(trained=False))
    if size != requested:
        log.warning(
            "%s: batches of %d images instead of --batch-size %d (one step per epoch)",
            counts.text(trained=False),
            size,
            requested,
        )
    return size


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / CHECKPOINTS).is_dir():
            raise ConfigError(f"--resume: {out} holds no checkpoint of an unfinished run")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            f"{out} exists and is not empty; choose another --out, add --overwrite to write "
            "into it, or --resume to continue the run it holds"
        )


def _eval_labels(source: Path | None, folder: Path) -> dict[Path, str]:
    """path -> label of the labelled check-set (absolute paths)."""
    if source is None:
        return {}
    if source.is_dir():
        root = source.resolve()
        return {p: p.parent.name for p in image_files(root) if p.parent != root}
    labels: dict[Path, str] = {}
    missing: list[str] = []
    for key, label in read_labels_csv(source).items():
        path = Path(key) if Path(key).is_absolute() else folder / key
        if path.is_file():
            labels[path.resolve()] = label
        else:
            missing.append(key)
    if missing:
        raise ConfigError(
            f"{source}: {len(missing)} listed path(s) are not files (relative paths are read "
            f"from {folder}), e.g. {missing[0]!r}"
        )
    return labels


def _require_check_set(source: Path, held_out: dict[Path, str]) -> None:
    """``ConfigError`` (before any training) unless the held-out labelled images make a
    check: two classes or more with two images or more each."""
    counts = Counter(held_out.values())
    usable = [label for label, count in counts.items() if count >= 2]
    if len(usable) < 2:
        found = short_list(f"{label}: {count}" for label, count in counts.most_common())
        raise ConfigError(
            f"--eval-labels {source}: the labelled images kept out of training must hold two "
            f"classes or more with two images or more each (found {found}); put "
            "them in one sub-folder per class, or raise --eval-holdout"
        )


def _config(
    model: str, base: Dinov2Checkpoint, images: int, batch_size: int, options: dict[str, Any]
) -> AdaptConfig:
    steps = options["steps"] or (options["epochs"] or 10) * math.ceil(images / batch_size)
    return AdaptConfig(
        model=model,
        steps=steps,
        batch_size=batch_size,
        crops=CropSpec(
            global_size=options["global_size"] or base.preprocessing.output_size[0],
            local_size=options["local_size"],
            local_crops=options["local_crops"],
        ),
        head=HeadSpec(
            prototypes=options["prototypes"],
            hidden=options["head_hidden"],
            bottleneck=options["head_bottleneck"],
        ),
        trainable=Trainable(
            mode=options["train_mode"],
            blocks=options["train_blocks"]
            or min(DEFAULT_TRAINED_BLOCKS, int(base.config.num_hidden_layers)),
            lora_rank=options["lora_rank"],
        ),
        lr=options["lr"],
        layer_decay=options["layer_decay"],
        momentum=options["momentum"],
        teacher_temp=options["teacher_temp"],
        warmup_teacher_temp=min(0.04, options["teacher_temp"]),
        koleo_weight=options["koleo"],
        ibot_weight=options["ibot"],
        centring=options["centring"],
        seed=options["seed"],
    )


def _run_options(options: dict[str, Any], device: str) -> RunOptions:
    workers = options["workers"]
    if workers is None:
        workers = max(1, min(8, available_cores() - 1))
    return RunOptions(
        device=device,
        workers=workers,
        checkpoint_every=options["checkpoint_every"],
        gradient_checkpointing=options["gradient_checkpointing"],
        min_teacher_entropy=options["min_teacher_entropy"],
        min_feature_spread=options["min_feature_spread"],
    )


def _train(
    config: AdaptConfig,
    base: Dinov2Checkpoint,
    paths: tuple[Path, ...],
    out: Path,
    limits: DecodeLimits,
    run: RunOptions,
    resume: bool,
    progress_mode: str,
) -> Trained:
    bar = Progress(config.steps, description="adapting", mode=progress_mode, unit="step")

    def on_step(metrics: StepMetrics) -> None:
        if metrics.step == 1 or bar.done == 0:
            bar.advance(metrics.step - bar.done - 1)
        bar.set_postfix(
            f"loss {metrics.loss:.3f}, H {metrics.teacher_entropy:.2f}, lr {metrics.lr:.1e}, "
            f"{metrics.images_per_second:.1f} img/s"
        )
        bar.advance()

    with graceful_stop() as stop:
        try:
            return train(config, paths, out / CHECKPOINTS, limits=limits, run=run,
                         resume=resume, on_step=on_step, stop=stop, base=base)  # fmt: skip
        except TrainingStoppedError as stopped:
            bar.close()
            click.echo(f"stopped at step {stopped.step}; continue with --resume", err=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        finally:
            bar.close()


def _before_after(
    settings: Settings,
    out: Path,
    labels: dict[Path, str],
    counts: ImageCounts,
    limits: DecodeLimits,
    progress_mode: str,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The check, and the images that failed in it (path -> reason: changed since the
    first check)."""
    if counts.held_out:
        files = sorted(counts.held_out)
    else:
        training = counts.training
        rng = np.random.default_rng(0)
        count = min(AGREEMENT_SAMPLE, len(training))
        files = [training[int(i)] for i in sorted(rng.choice(len(training), count, replace=False))]
    vectors = {}
    failed: dict[str, str] = {}
    for name, model in (("base", settings.model), ("adapted", str(out.resolve()))):
        embedder = load_embedder(model, settings)
        try:
            bar = Progress(len(files), description=f"embedding ({name})", mode=progress_mode)
            found = embed_files(files, embedder, max_pixels=limits.max_pixels,
                                max_bytes=limits.max_bytes, batch_size=16,
                                on_images=bar.advance)  # fmt: skip
            bar.close()
        finally:
            embedder.close()
        vectors[name] = found
        failed |= {
            str(path): f"the check could not use it: {code}" for path, code in found.failed.items()
        }
    base, adapted = vectors["base"], vectors["adapted"]
    if base.paths != adapted.paths:
        raise ConfigError("the check images decoded differently for the two models")
    if not counts.held_out:
        return {
            "kind": "unlabelled",
            "images": len(base.paths),
            "knn_agreement": knn_agreement(base.vectors, adapted.vectors),
            "note": "no labelled check was possible: pass --eval-labels for one",
        }, failed
    names = [str(p) for p in base.paths]
    classes = [labels[p] for p in base.paths]
    scores: dict[str, Scores] = {
        name: labelled_scores(found.vectors, classes, names, min_per_class=2)
        for name, found in vectors.items()
    }
    return {
        "kind": "labelled",
        "images": len(base.paths),
        "classes": len(set(classes)),
        "taken_from_folder": sum(1 for p in base.paths if p.is_relative_to(counts.folder)),
        "knn_k": scores["base"].knn_k,
        "knn_k_wanted": KNN_K,
        "smallest_class": min(Counter(classes).values()),
        "base": {"knn_accuracy": scores["base"].knn_accuracy,
                 "recall@1": scores["base"].recall_at_1},
        "adapted": {"knn_accuracy": scores["adapted"].knn_accuracy,
                    "recall@1": scores["adapted"].recall_at_1},
        "held_out": names,
    }, failed  # fmt: skip
