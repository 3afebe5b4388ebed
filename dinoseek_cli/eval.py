"""``dinoseek eval``: kNN accuracy, retrieval and few-shot linear probes on the user's own
labelled images, for one collection or for several models side by side.

On a collection it reads the stored vectors (no model is loaded). On a FOLDER it indexes the
images once per model (and dtype) into a temporary collection of its own, so spaces never
mix, and also measures throughput and peak memory. The measures are ``dinoseek.evaluation``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from dinoseek.collection_vectors import read_vectors
from dinoseek.commandline import (
    configure_logging,
    handle_errors,
    load_settings,
    model_loader,
    output_options,
    store_options,
    store_owner,
)
from dinoseek.dedup import GROUP
from dinoseek.errors import ConfigError
from dinoseek.evaluation import (
    check_classes,
    confused_pairs,
    few_shot_accuracy,
    knn_accuracy,
    knn_predictions,
    labelled_set,
    retrieval_metrics,
)
from dinoseek.labels_csv import read_labels_csv
from dinoseek.messages import short_list
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.scan import ScannedFile, ScanOptions, scan
from dinoseek.settings import Settings
from indexer.catalog import LabelSource
from indexer.pipeline import IndexOptions, index_folders

KNN_KS = (10, 20)
MODEL_COLUMN = 40  # the widest the model column grows; longer names lose their start
CONFUSION_CLASSES = 50  # the most classes whose confusion matrix --json and --plot carry


@click.command(name="eval")
@click.argument(
    "folder", required=False, type=click.Path(path_type=Path, file_okay=False, exists=True)
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="With FOLDER: a model to compare (hub id or local directory); repeatable.",
)
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    help="With FOLDER: a dtype to compare each model in; repeatable [default: auto].",
)
@click.option("--labels-from-folders", is_flag=True, help="With FOLDER: label = parent folder.")
@click.option(
    "--labels-csv",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="With FOLDER: CSV of path,label rows.",
)
@click.option(
    "--min-per-class",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Classes with fewer labelled images are reported and left out.",
)
@click.option(
    "--shots",
    default="1,5,10,50",
    show_default=True,
    help="Labelled examples per class for the linear probes (all is always added).",
)
@click.option(
    "--draws", type=click.IntRange(min=1), default=5, show_default=True, help="Random draws."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--plot",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a PNG: accuracy against examples per class, and against images/s "
    "(needs matplotlib: pip install 'dinoseek[eval]').",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write the JSON, the plot and a Markdown summary into this folder.",
)
@store_options
@output_options
@handle_errors
def evaluate(
    folder: Path | None,
    models: tuple[str, ...],
    dtypes: tuple[str, ...],
    labels_from_folders: bool,
    labels_csv: Path | None,
    min_per_class: int,
    shots: str,
    draws: int,
    seed: int,
    plot: Path | None,
    report: Path | None,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Measure how well the embeddings separate your labelled images: kNN accuracy (k=10,
    20, DINO-style), recall@1/5/10 and mAP@R, and linear probes from 1, 5, 10, 50 and all
    examples per class.

    \b
    dinoseek eval                                   # the collection's stored vectors
    dinoseek eval PHOTOS --labels-from-folders \\
        --model facebook/dinov2-small --model facebook/dinov2-base   # side by side
    """
    configure_logging(quiet=quiet or as_json)
    shot_list = _shots(shots)
    settings = load_settings(**flags)
    if folder is None:
        if models or dtypes or labels_from_folders or labels_csv:
            raise click.UsageError("--model, --dtype and --labels-* go with a FOLDER")
        entries = [_evaluate_collection(settings, min_per_class, shot_list, draws, seed)]
    else:
        if not labels_from_folders and labels_csv is None:
            raise click.UsageError("label the folder: --labels-from-folders or --labels-csv")
        labels = LabelSource(
            from_folders=labels_from_folders,
            mapping=read_labels_csv(labels_csv) if labels_csv else {},
        )
        check_classes(folder_classes(folder, labels), min_per_class=min_per_class)
        entries = [
            _evaluate_folder(settings, folder, model, dtype, labels, min_per_class, shot_list,
                             draws, seed, quiet or as_json)
            for model in (models or (settings.model,))
            for dtype in (dtypes or ("auto",))
        ]  # fmt: skip
    document = {"shots": [str(n) if n else "all" for n in shot_list], "models": entries}
    if plot is not None:
        write_plot(document, plot)
        document["plot"] = str(plot)
    if report is not None:
        write_plot(document, report / "eval.png")  # the summary links it
    if report is not None:
        _write_report(document, report)
    click.echo(json.dumps(document) if as_json else render(document))


def _shots(text: str) -> list[int | None]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        message = f"{text!r}: give numbers like 1,5,10,50"
        raise click.BadParameter(message, param_hint="--shots") from None
    if any(v < 1 for v in values):
        raise click.BadParameter("examples per class start at 1", param_hint="--shots")
    return [*values, None]


def folder_classes(folder: Path, labels: LabelSource) -> Counter[str]:
    """Image files per label under ``folder``, as the indexer will find them: an upper bound
    of the images each class gets, known before any model is loaded."""
    return Counter(
        label
        for found in scan([folder], ScanOptions())
        if isinstance(found, ScannedFile)
        and (label := labels.label_for(found.path, found.relative_path))
    )


def _evaluate_collection(
    settings: Settings, min_per_class: int, shots: list[int | None], draws: int, seed: int
) -> dict[str, Any]:
    with Runtime.open(
        settings, owner=store_owner("dinoseek eval"), collection="existing", model=False
    ) as runtime:
        store, name = runtime.store, settings.collection
        space = store.collection_space(name)
        data = read_vectors(store, name, ("label", "path", GROUP))
    entry = _measure(data, min_per_class, shots, draws, seed)
    return {"model": space.model_id, "dtype": None, "collection": name, **entry}


def _evaluate_folder(
    settings: Settings,
    folder: Path,
    model: str,
    dtype: str,
    labels: LabelSource,
    min_per_class: int,
    shots: list[int | None],
    draws: int,
    seed: int,
    quiet: bool,
) -> dict[str, Any]:
    """Index ``folder`` with ``model`` into a temporary collection, then measure."""
    with tempfile.TemporaryDirectory(prefix="dinoseek-eval-") as scratch:
        scoped = settings.model_copy(
            update={"model": model, "dtype": dtype, "data_dir": Path(scratch), "qdrant_url": None,
                    "collection": "eval"}
        )  # fmt: skip
        with Runtime.open(
            scoped,
            owner=store_owner("dinoseek eval"),
            collection="optional",
            policy=ModelPolicy(purpose="index"),
            loader=model_loader(),
        ) as runtime:
            embedder = runtime.require_embedder()
            options = IndexOptions(
                roots=(Path(os.path.abspath(folder)),),
                collection="eval",
                failures_report=Path(scratch) / "failures.jsonl",
                batch_size=runtime.batch_size,
                workers=runtime.decode_workers,
                max_image_pixels=scoped.max_image_pixels,
                max_file_bytes=scoped.max_file_bytes,
                labels=labels,
                optimize=False,
                progress="off" if quiet else "auto",
            )
            summary = index_folders(embedder, runtime.store, options)
            data = read_vectors(runtime.store, "eval", ("label", "path", GROUP))
            device = embedder.device
    entry = _measure(data, min_per_class, shots, draws, seed)
    return {
        "model": model,
        "dtype": dtype,
        "device": device,
        "images": summary.embedded,
        "failed": summary.failed,
        "images_per_s": summary.images_per_s,
        "peak_memory_mb": _peak_memory_mb(),
        **entry,
    }


def _peak_memory_mb() -> float:
    """This process's peak resident memory so far (it only grows: models run in order)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _measure(
    data: Any, min_per_class: int, shots: list[int | None], draws: int, seed: int
) -> dict[str, Any]:
    labelled, left_out = labelled_set(
        data.vectors,
        [label or None for label in data.payloads.values("label")],
        data.payloads.values(GROUP),
        [
            str(i if path is None else path)
            for i, path in zip(data.ids, data.payloads.values("path"), strict=True)
        ],
        min_per_class=min_per_class,
    )
    started = time.perf_counter()
    predicted = knn_predictions(labelled, KNN_KS[-1])
    probes = few_shot_accuracy(labelled, shots, draws=draws, seed=seed)
    classes = len(labelled.classes)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labelled.labels, predicted), 1)
    grouped = bool((labelled.groups >= 0).any())
    return {
        "points": len(labelled.labels),
        "classes": len(labelled.classes),
        "left_out_classes": left_out,
        "splits": "near-duplicate groups (dinoseek dedup)"
        if grouped
        else "exact-hash groups (ids are content hashes; run dinoseek dedup for near-duplicates)",
        **{f"knn_accuracy@{k}": round(knn_accuracy(labelled, k), 4) for k in KNN_KS},
        **{key: round(value, 4) for key, value in retrieval_metrics(labelled).items()},
        "linear_probe": {
            name: {"mean": round(mean, 4), "std": round(std, 4)}
            for name, (mean, std) in probes.items()
        },
        "confused": [asdict(pair) for pair in confused_pairs(labelled, predicted)],
        "confusion": {
            "k": KNN_KS[-1],
            "classes": list(labelled.classes),
            "matrix": confusion.tolist(),
        }
        if classes <= CONFUSION_CLASSES
        else None,
        "eval_seconds": round(time.perf_counter() - started, 2),
    }


def _model_column(name: str, width: int) -> str:
    """``name`` in ``width`` characters: a longer one keeps its end (the distinctive part
    of a path or hub id) after an ellipsis."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def render(document: dict[str, Any]) -> str:
    """A table: one row per model."""
    shots = document["shots"]
    width = min(MODEL_COLUMN, max(5, *(len(entry["model"]) for entry in document["models"])))
    head = (
        f"{'model':<{width}} {'dtype':<8} {'img/s':>7} {'kNN@10':>7} {'kNN@20':>7} {'R@1':>6} "
        f"{'R@5':>6} {'mAP@R':>6} " + " ".join(f"{'lin' + s:>7}" for s in shots)
    )
    lines = [head]
    for entry in document["models"]:
        rate = entry.get("images_per_s")
        probes = entry["linear_probe"]
        lines.append(
            f"{_model_column(entry['model'], width):<{width}} {entry['dtype'] or '-':<8} "
            f"{'-' if rate is None else f'{rate:.1f}':>7} "
            f"{entry['knn_accuracy@10']:>7.3f} {entry['knn_accuracy@20']:>7.3f} "
            f"{entry['recall@1']:>6.3f} {entry['recall@5']:>6.3f} {entry['map@r']:>6.3f} "
            + " ".join(f"{probes[s]['mean']:>7.3f}" for s in shots)
        )
    for entry in document["models"]:
        lines.append(
            f"\n{entry['model']}: {entry['points']:,} labelled images in {entry['classes']} "
            f"classes; splits by {entry['splits']}"
        )
        if left_out := entry["left_out_classes"]:
            largest = sorted(left_out.items(), key=lambda item: -item[1])
            lines.append(
                f"  left out (too few images): {len(left_out):,} classes, "
                + short_list(f"{label} ({count})" for label, count in largest)
            )
        for pair in entry["confused"][:3]:
            lines.append(
                f"  {pair['true']} taken for {pair['predicted']} {pair['count']}x, e.g. "
                f"{pair['examples'][0]}"
            )
    return "\n".join(lines)


def write_plot(document: dict[str, Any], target: Path) -> None:
    """Write ``plot_figure`` as a PNG (``ConfigError`` without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'dinoseek[eval]'") from None
    figure = plot_figure(document)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)


def plot_figure(document: dict[str, Any]) -> Any:
    """Linear-probe accuracy against labelled examples per class (a line per model); kNN
    accuracy against indexing speed when two models or more were indexed; and each model's
    kNN confusion matrix (rows: true class, normalised)."""
    import matplotlib.pyplot as plt

    entries = document["models"]
    timed = [entry for entry in entries if entry.get("images_per_s")]
    matrices = [entry for entry in entries if entry.get("confusion")]
    panels = 1 + (len(timed) > 1) + len(matrices)
    figure, axes = plt.subplots(
        1, panels, figsize=(5 * panels, 5), squeeze=False, layout="constrained"
    )
    left, rest = axes[0][0], list(axes[0][1:])
    shots = document["shots"]
    for entry in entries:
        means = [entry["linear_probe"][s]["mean"] for s in shots]
        stds = [entry["linear_probe"][s]["std"] for s in shots]
        left.errorbar(range(len(shots)), means, yerr=stds, marker="o", capsize=3,
                      label=_plot_label(entry))  # fmt: skip
    left.set_xticks(range(len(shots)), shots)
    left.set(title="Linear probe on frozen features", xlabel="labelled examples per class",
             ylabel="accuracy (held-out split)", ylim=(0, 1.05))  # fmt: skip
    left.legend(fontsize="small")
    if len(timed) > 1:
        speed = rest.pop(0)
        for entry in timed:
            speed.scatter(entry["images_per_s"], entry["knn_accuracy@20"], label=_plot_label(entry))
        speed.set(title="Accuracy against speed", xlabel="images/s (indexing, this machine)",
                  ylabel="kNN accuracy (k=20)", ylim=(0, 1.05))  # fmt: skip
        speed.legend(fontsize="small")
    for axis, entry in zip(rest, matrices, strict=True):
        _confusion_panel(figure, axis, entry)
    figure.suptitle(
        f"dinoseek eval: {entries[0]['points']:,} labelled images, {entries[0]['classes']} classes"
    )
    return figure


def _plot_label(entry: dict[str, Any]) -> str:
    return f"{_model_column(entry['model'], MODEL_COLUMN)} ({entry['dtype'] or 'stored'})"


def _confusion_panel(figure: Any, axis: Any, entry: dict[str, Any]) -> None:
    confusion = entry["confusion"]
    counts = np.asarray(confusion["matrix"], dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = axis.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8, label="share of the true class")
    classes = confusion["classes"]
    if len(classes) <= 20:
        axis.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize="small")
        axis.set_yticks(range(len(classes)), classes, fontsize="small")
    axis.set(title=f"kNN confusion (k={confusion['k']}): "
             f"{_model_column(entry['model'], 28)}",
             xlabel="predicted class", ylabel="true class")  # fmt: skip


def _write_report(document: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(document, indent=1))
    (folder / "summary.md").write_text(
        "# dinoseek eval\n\n```\n" + render(document) + "\n```\n\n![accuracy](eval.png)\n"
    )
