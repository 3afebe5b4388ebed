"""``dinoseek probe``: train, list, evaluate and delete the linear probes of a collection.

A probe is trained on vectors that are already stored: no image is read again, no GPU is
needed. With the embedded store, stop ``dinoseek serve`` first (it owns the collection); with
a Qdrant server, a running service picks up a new probe within seconds.
"""

from __future__ import annotations

import json
from typing import Any

import click

from dinoseek.labelling import (
    DEFAULT_PROBE,
    choose_probe,
    evaluate_probe,
    labelled_vectors,
    load_probe,
    train_collection_probe,
)
from dinoseek.store import open_store
from indexer.options import (
    configure_logging,
    handle_errors,
    load_settings,
    output_options,
    store_options,
    store_owner,
)


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
    type=click.FloatRange(0.05, 0.5),
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
    type=click.FloatRange(0.0, 1.0),
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
    with open_store(settings, owner=store_owner("dinoseek probe train")) as store:
        result = train_collection_probe(
            store,
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
    click.echo(result.report.render())
    click.echo(f"\nstored probe {name!r} for collection {settings.collection!r}")


@probe.command(name="list")
@store_options
@output_options
@handle_errors
def list_probes(as_json: bool, quiet: bool, **flags: Any) -> None:
    """The probes of the collection."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with open_store(settings, owner=store_owner("dinoseek probe list")) as store:
        probes = store.list_probes(settings.collection)
    default = choose_probe(probes)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "collection": settings.collection,
                    "default": default,
                    "probes": [{"name": p.name, **_summary(p.info)} for p in probes],
                }
            )
        )
        return
    if not probes:
        click.echo(f"no probes for {settings.collection!r}: run `dinoseek probe train`")
        return
    click.echo(f"{'name':<16} {'classes':>7} {'accuracy':>8} {'trained on':>10}  trained at")
    for stored in probes:
        info = _summary(stored.info)
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
    """Accuracy of probe NAME on the collection's labelled points now, beside the held-out
    report of its training (the points now include its training data: an optimistic figure
    unless labels were added since)."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with open_store(settings, owner=store_owner("dinoseek probe eval")) as store:
        space = store.collection_space(settings.collection)
        probe_ = load_probe(store, settings.collection, name, space)
        vectors, labels = labelled_vectors(store, settings.collection, probe_.label_field)
        stored = next(p for p in store.list_probes(settings.collection) if p.name == name)
    evaluation = evaluate_probe(probe_, vectors, labels)
    held_out = stored.info.get("report", {})
    if as_json:
        click.echo(json.dumps({"probe": name, "current": evaluation, "training_report": held_out}))
        return
    click.echo(f"probe {name!r}: {len(probe_.classes)} classes, trained {probe_.trained_at}")
    click.echo(f"  held-out accuracy at training: {probe_.accuracy:.1%}")
    if evaluation["accuracy"] is None:
        click.echo("  no labelled points in the collection now")
        return
    click.echo(
        f"  accuracy on the {evaluation['points']:,} labelled points now: "
        f"{evaluation['accuracy']:.1%}"
    )
    for label, row in evaluation["per_class"].items():
        click.echo(f"    {label:<24} {row['points']:>7,}  {row['accuracy']:.1%}")
    if evaluation["unknown_classes"]:
        click.echo(f"  classes the probe never saw: {', '.join(evaluation['unknown_classes'])}")


@probe.command()
@click.argument("name")
@store_options
@handle_errors
def delete(name: str, **flags: Any) -> None:
    """Delete probe NAME."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with open_store(settings, owner=store_owner("dinoseek probe delete")) as store:
        store.delete_probe(settings.collection, name)
    click.echo(f"deleted probe {name!r} of {settings.collection!r}")


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "classes": list(info.get("classes", [])),
        "accuracy": info.get("accuracy"),
        "trained_at": info.get("trained_at"),
        "train_size": info.get("train_size"),
        "label_field": info.get("label_field"),
        "model_id": info.get("model_id"),
        "min_confidence": info.get("min_confidence"),
    }
