"""``dinoseek probe``: train, list, evaluate and delete the linear probes of a collection, and
the text form of a training report.

A probe is trained on vectors that are already stored: no image is read again, no GPU is
needed. With the embedded store, stop ``dinoseek serve`` first (it owns the collection); with
a Qdrant server, a running service picks up a new probe within seconds.
"""

from __future__ import annotations

import json
from typing import Any

import click

from dinoseek.commandline import (
    FiniteFloat,
    configure_logging,
    handle_errors,
    load_settings,
    output_options,
    store_options,
    store_owner,
)
from dinoseek.labels import UNKNOWN_LABEL
from dinoseek.messages import short_list
from dinoseek.probe import (
    DEFAULT_PROBE,
    LinearProbe,
    ProbeReport,
    choose_probe,
    evaluate_probe,
    labelled_vectors,
    load_probe,
    probe_summary,
)
from dinoseek.probe.calibration import temperature_note
from dinoseek.probe.collection import train_collection_probe
from dinoseek.runtime import CollectionNeed, Runtime
from dinoseek.settings import Settings

MAX_TABLE_CLASSES = 20


@click.group()
def probe() -> None:
    """Labels from a few examples: linear probes on the stored vectors.

    \b
    dinoseek index PHOTOS --labels-from-folders   # label = parent folder name
    dinoseek probe train                          # fit, calibrate, report, store
    dinoseek search query.jpg                     # neighbours + predicted labels
    """


@probe.command()
@click.option("--name", default=DEFAULT_PROBE, show_default=True, help="Name of the probe.")
@click.option(
    "--label-field", default="label", show_default=True, help="Payload field holding the labels."
)
@click.option(
    "--holdout",
    type=FiniteFloat(0.05, 0.5),
    default=0.2,
    show_default=True,
    help="Fraction of each class kept out of training, for the report and calibration.",
)
@click.option(
    "--min-per-class",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Classes with fewer labelled points are reported and left out.",
)
@click.option(
    "--min-confidence",
    type=FiniteFloat(0.0, 1.0),
    default=None,
    help="Predictions below this probability become 'unknown'.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@store_options
@output_options
@handle_errors
def train(
    name: str,
    label_field: str,
    holdout: float,
    min_per_class: int,
    min_confidence: float | None,
    seed: int,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Fit a calibrated multinomial logistic regression on the labelled points."""
    configure_logging(quiet=quiet)
    settings = load_settings(**flags)
    with _runtime(settings, "train", "existing") as runtime:
        result = train_collection_probe(
            runtime.store,
            settings.collection,
            name=name,
            label_field=label_field,
            holdout=holdout,
            min_per_class=min_per_class,
            min_confidence=min_confidence,
            seed=seed,
        )
    if as_json:
        click.echo(
            json.dumps({"probe": result.probe.metadata(), "report": result.report.to_dict()})
        )
        return
    click.echo(render_report(result.report))
    click.echo(f"\nstored probe {name!r} for collection {settings.collection!r}")


@probe.command(name="list")
@store_options
@output_options
@handle_errors
def list_probes(as_json: bool, quiet: bool, **flags: Any) -> None:
    """The probes of the collection."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with _runtime(settings, "list", "none") as runtime:
        probes = runtime.store.probes.list(settings.collection)
    default = choose_probe(probes)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "collection": settings.collection,
                    "default": default,
                    "probes": [probe_summary(p) for p in probes],
                }
            )
        )
        return
    if not probes:
        click.echo(f"no probes for {settings.collection!r}: run `dinoseek probe train`")
        return
    click.echo(f"{'name':<16} {'classes':>7} {'accuracy':>8} {'trained on':>10}  trained at")
    for stored in probes:
        info = probe_summary(stored)
        mark = " (default)" if stored.name == default else ""
        accuracy = info["accuracy"]
        click.echo(
            f"{stored.name:<16} {len(info['classes']):>7} "
            f"{'' if accuracy is None else f'{accuracy:.1%}':>8} "
            f"{info['train_size'] or 0:>10,}  {info['trained_at']}{mark}"
        )


@probe.command(name="eval")
@click.argument("name", default=DEFAULT_PROBE)
@store_options
@output_options
@handle_errors
def eval_probe(name: str, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Coverage and accuracy of probe NAME on the collection's labelled points now, beside
    the held-out report of its training (the points now include its training data: an
    optimistic figure unless labels were added since). With a --min-confidence probe,
    coverage is the share it answers and accuracy is that of its answers; what it would
    score answering all is shown beside them."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with _runtime(settings, "eval", "existing") as runtime:
        store = runtime.store
        space = store.collection_space(settings.collection)
        probe_ = load_probe(store.probes, settings.collection, name, space)
        vectors, labels = labelled_vectors(store, settings.collection, probe_.label_field)
        stored = next(p for p in store.probes.list(settings.collection) if p.name == name)
    evaluation = evaluate_probe(probe_, vectors, labels)
    held_out = stored.info.get("report", {})
    if as_json:
        click.echo(json.dumps({"probe": name, "current": evaluation, "training_report": held_out}))
        return
    click.echo(render_evaluation(probe_, evaluation))


def render_evaluation(probe_: LinearProbe, evaluation: dict[str, Any]) -> str:
    """``probe eval`` as text: what the probe answers now, and how well."""
    floor = evaluation["min_confidence"]
    lines = [
        f"probe {probe_.name!r}: {len(probe_.classes)} classes, trained {probe_.trained_at}"
        + ("" if floor is None else f", min confidence {floor:g}"),
        f"  held-out accuracy at training: {probe_.accuracy:.1%} (every example answered)",
    ]
    if not evaluation["points"]:
        return "\n".join([*lines, "  no labelled points in the collection now"])
    lines.append(f"  on the {evaluation['points']:,} labelled points now: {_answers(evaluation)}")
    width = max(24, *(len(label) for label in evaluation["per_class"]))
    lines.append(f"    {'class':<{width}} {'points':>7} {'answered':>8} {'accuracy':>8}")
    for label, row in evaluation["per_class"].items():
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
        lines.append(
            f"    {label:<{width}} {row['points']:>7,} {row['coverage']:>8.1%} {accuracy:>8}"
        )
    if evaluation["unknown_classes"]:
        lines.append(f"  classes the probe never saw: {', '.join(evaluation['unknown_classes'])}")
    return "\n".join(lines)


def _answers(evaluation: dict[str, Any]) -> str:
    """Coverage and accuracy in words (abstentions are not errors, nor hidden)."""
    if evaluation["min_confidence"] is None:
        return f"accuracy {evaluation['accuracy']:.1%} (every point answered)"
    every = f"{evaluation['accuracy_if_all_answered']:.1%} if it answered all"
    if not evaluation["answered"]:
        return f"answers none of them ({UNKNOWN_LABEL!r} for all: below the minimum); {every}"
    return (
        f"answers {evaluation['coverage']:.1%} of them (coverage; the rest {UNKNOWN_LABEL!r}), "
        f"{evaluation['accuracy']:.1%} of those correctly; {every}"
    )


@probe.command()
@click.argument("name")
@store_options
@handle_errors
def delete(name: str, **flags: Any) -> None:
    """Delete probe NAME."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with _runtime(settings, "delete", "none") as runtime:
        runtime.store.probes.delete(settings.collection, name)
    click.echo(f"deleted probe {name!r} of {settings.collection!r}")


def _runtime(settings: Settings, action: str, collection: CollectionNeed) -> Runtime:
    """The store (no model: probes work on stored vectors)."""
    owner = store_owner(f"dinoseek probe {action}")
    return Runtime.open(settings, owner=owner, collection=collection, model=False)


def render_report(report: ProbeReport) -> str:
    """A training report as text: summary, per-class table and confusion (matrix or pairs)."""
    note = temperature_note(report.temperature)
    lines = [
        f"probe {report.name!r} on {report.model_id} ({report.dim}-d vectors)",
        f"  classes: {len(report.classes)}, trained on {report.train_size} vectors, "
        f"held out {report.holdout_size} ({report.holdout_fraction:.0%} of each class), "
        f"in {report.train_seconds:.2f} s",
        f"  regularisation: weight decay {report.weight_decay:g}"
        + _render_validation(report.validation_losses),
        f"  holdout accuracy: {report.accuracy:.1%} (balanced {report.balanced_accuracy:.1%})",
        f"  holdout log-loss: {report.holdout_nll_before:.4f} before calibration, "
        f"{report.holdout_nll_after:.4f} after (temperature {report.temperature:.3g}"
        f"{', ' + note if note else ''})",
    ]
    if report.min_confidence is not None and report.coverage is not None:
        covered = "n/a" if report.covered_accuracy is None else f"{report.covered_accuracy:.1%}"
        lines.append(
            f"  min confidence {report.min_confidence:g}: {report.coverage:.1%} of the holdout "
            f"is labelled, {covered} of it correctly; the rest is {UNKNOWN_LABEL!r}"
        )
    if report.unlabelled_count:
        lines.append(f"  unlabelled vectors left out: {report.unlabelled_count}")
    if report.skipped_classes:
        skipped = short_list(f"{entry.label} ({entry.count})" for entry in report.skipped_classes)
        lines.append(f"  skipped classes (fewer than {report.min_per_class} examples): {skipped}")
    lines += ["", *_render_per_class(report), "", *_render_confusion(report)]
    return "\n".join(lines)


def _render_per_class(report: ProbeReport) -> list[str]:
    entries = list(report.per_class)
    lines = []
    if len(entries) > MAX_TABLE_CLASSES:
        entries = sorted(entries, key=lambda entry: entry.accuracy)[:MAX_TABLE_CLASSES]
        lines.append(
            f"the {len(entries)} classes of {len(report.per_class)} with the lowest holdout "
            "accuracy (the JSON report has them all):"
        )
    width = max(5, *(len(entry.label) for entry in entries))
    lines.append(f"{'class':<{width}}  {'train':>6}  {'holdout':>7}  {'accuracy':>8}")
    lines += [
        f"{entry.label:<{width}}  {entry.train_count:>6}  {entry.holdout_count:>7}  "
        f"{entry.accuracy:>8.1%}"
        for entry in entries
    ]
    return lines


def _render_confusion(report: ProbeReport) -> list[str]:
    if len(report.classes) > MAX_TABLE_CLASSES:
        pairs = report.most_confused()
        if not pairs:
            return ["no confusions on the holdout"]
        lines = ["most confused (true -> predicted: holdout examples):"]
        lines += [
            f"  {pair.true} -> {pair.predicted}: {pair.count} ({pair.fraction:.0%})"
            for pair in pairs
        ]
        return lines
    names = [_shorten(label, 16) for label in report.classes]
    name_width = max(len(name) for name in names) + 5
    cell = max(3, *(len(str(count)) for row in report.confusion for count in row)) + 1
    header = "true \\ predicted".ljust(name_width) + "".join(
        f"{index:>{cell}}" for index in range(len(report.classes))
    )
    lines = ["confusion matrix (rows: true class, columns: predicted class):", header]
    for index, (name, row) in enumerate(zip(names, report.confusion, strict=True)):
        label = f"{index:>2} {name}".ljust(name_width)
        lines.append(label + "".join(f"{count:>{cell}}" for count in row))
    return lines


def _render_validation(losses: tuple[tuple[float, float], ...]) -> str:
    if not losses:
        return " (default: too few examples for a validation split)"
    tried = ", ".join(f"{decay:g}: {loss:.4f}" for decay, loss in losses)
    return f" (validation log-loss {tried})"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
