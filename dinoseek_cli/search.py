"""``dinoseek search IMAGE``: the nearest neighbours of an image, and its predicted labels.

With the embedded store held by a running ``dinoseek serve``, the query goes through that
server (``search_api.client``): same parameters, same answer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from dinoseek.commandline import (
    EPILOG,
    FiniteFloat,
    configure_logging,
    handle_errors,
    load_settings,
    model_loader,
    model_options,
    output_options,
    store_options,
    store_owner,
)
from dinoseek.errors import DinoseekError, StoreLockedError
from dinoseek.images import read_image_bytes
from dinoseek.region_search import search_image_regions
from dinoseek.regions import parse_box
from dinoseek.runtime import Runtime
from dinoseek.search_types import FILTER_FIELDS, Filters, LabelRequest, NeighbourQuery, SearchResult
from dinoseek.settings import Settings
from search_api.client import ServiceClient


@click.command(epilog=EPILOG)
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--top-k",
    "-k",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Number of neighbours.",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip the first N.")
@click.option(
    "--threshold",
    type=FiniteFloat(-1.0, 1.0),
    default=None,
    help="Only neighbours with a cosine similarity of at least this.",
)
@click.option(
    "--collapse-duplicates",
    is_flag=True,
    help="One hit per group of near-duplicates (marked by `dinoseek dedup`): its kept image.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="NAME=VALUE",
    help=f"Exact match on {', '.join(FILTER_FIELDS)}; repeatable (all must match).",
)
@click.option(
    "--regions",
    is_flag=True,
    help="Search by region: the images that contain something like IMAGE (or its --region), "
    "each with the box where it matches. Needs a collection indexed with --regions.",
)
@click.option(
    "--region",
    "region_text",
    metavar="X,Y,W,H",
    default=None,
    help="Search by this box of IMAGE (fractions of its width and height, e.g. "
    "0.25,0.25,0.5,0.5); implies --regions. The model sees the centre of a non-square image: "
    "a box in its cropped-off ends is refused.",
)
@model_options
@store_options
@output_options
@handle_errors
def search(
    image: Path,
    top_k: int,
    offset: int,
    threshold: float | None,
    collapse_duplicates: bool,
    filters: tuple[str, ...],
    regions: bool,
    region_text: str | None,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Find the images most similar to IMAGE in the collection."""
    configure_logging(quiet=True)
    box = parse_box(region_text) if region_text is not None else None
    regions = regions or box is not None
    settings = load_settings(**flags)
    query = NeighbourQuery(
        top_k=top_k,
        offset=offset,
        score_threshold=threshold,
        filters=Filters.parse(filters),
        collapse_duplicates=collapse_duplicates,
    )
    labels = LabelRequest(with_labels=True)
    data = read_image_bytes(image)
    try:
        runtime = Runtime.open(
            settings,
            owner=store_owner("dinoseek search"),
            collection="existing",
            loader=model_loader(),
        )
    except StoreLockedError as error:
        url = server_holding(error)
        click.echo(f"note: the server at {url} holds {settings.collection!r}; asking it", err=True)
        with ServiceClient(url, api_key=_secret(settings)) as client:
            model, result = client.search(
                data,
                image.name,
                collection=settings.collection,
                query=query,
                labels=labels,
                regions=regions,
                box=box,
            )
    else:
        with runtime:
            model = runtime.require_embedder().model_id
            if regions:
                result = search_image_regions(
                    runtime.searcher, settings.collection, (data, str(image)), box, query, labels
                )
            else:
                (outcome,) = runtime.searcher.search_images(
                    settings.collection, [(data, str(image))], query, labels
                )
                if isinstance(outcome, DinoseekError):
                    raise outcome
                result = outcome
    if as_json:
        click.echo(json.dumps(search_document(settings, image, model, result)))
    else:
        click.echo(render_result(result))


def server_holding(error: StoreLockedError) -> str:
    """The URL of the dinoseek server holding the store, or re-raise ``error``."""
    url = error.holder.get("url")
    if not url:
        raise error
    return str(url)


def _secret(settings: Settings) -> str | None:
    return settings.api_key.get_secret_value() if settings.api_key is not None else None


def search_document(
    settings: Settings, image: Path, model: str, result: SearchResult
) -> dict[str, Any]:
    """The --json output of ``search`` (``near_duplicate`` only when there is one)."""
    document: dict[str, Any] = {
        "query": str(image),
        "collection": settings.collection,
        "model": model,
        "labels": [dataclasses.asdict(label) for label in result.labels or []],
        "results": [dataclasses.asdict(neighbour) for neighbour in result.neighbours],
    }
    if result.near_duplicate is not None:
        document["near_duplicate"] = dataclasses.asdict(result.near_duplicate)
    return document


def render_result(result: SearchResult) -> str:
    """The point it near-duplicates, predicted labels, then the table of neighbours."""
    lines = []
    if result.near_duplicate is not None:
        already = result.near_duplicate
        lines.append(
            f"already there: {already.path or already.id} (similarity {already.score:.4f}, "
            f"at or above {already.threshold:g})"
        )
    if result.labels:
        first = result.labels[0]
        how = (
            f"probe {first.probe!r}"
            if first.method == "probe"
            else f"vote of the {first.neighbours} nearest in the collection, filters aside"
        )
        shown = ", ".join(f"{p.label} {p.probability:.0%}" for p in result.labels[:3])
        lines.append(f"labels ({how}): {shown}")
    if not result.neighbours:
        lines.append("no results")
        return "\n".join(lines)
    label_width = max(5, *(len(n.label or "") for n in result.neighbours))
    regions = any(n.region is not None for n in result.neighbours)
    where = f"  {'region (x,y,w,h)':<23}" if regions else ""
    lines.append(f"{'rank':>4}  {'score':>6}  {'label':<{label_width}}{where}  path")
    for rank, neighbour in enumerate(result.neighbours, start=1):
        box = neighbour.region
        shown = f"{box.x:.2f},{box.y:.2f},{box.w:.2f},{box.h:.2f}" if box else "-"
        where = f"  {shown:<23}" if regions else ""
        lines.append(
            f"{rank:>4}  {neighbour.score:6.4f}  {neighbour.label or '-':<{label_width}}"
            f"{where}  {neighbour.path or '?'}"
        )
    return "\n".join(lines)
