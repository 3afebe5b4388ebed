"""``dinoseek curate``: select pool images close to a reference set (retrieval-based
curation), or a balanced sample of the pool; see ``dinoseek.curate``.

The selection goes to a new collection (points copied with their vectors and payloads) and/or
a JSON-lines manifest. Nothing is re-embedded, except a reference folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from dinoseek.cluster_index import neighbour_probes
from dinoseek.collection_vectors import CollectionVectors
from dinoseek.commandline import (
    CollectionName,
    FiniteFloat,
    check_output_file,
    configure_logging,
    handle_errors,
    load_settings,
    model_loader,
    output_options,
    store_options,
    write_output_file,
)
from dinoseek.curate import (
    PoolSearch,
    Selected,
    balanced,
    by_clusters,
    by_neighbours,
    check_new_collection,
    copy_selection,
    derived_clusters,
    eligible_rows,
    level_sizes,
)
from dinoseek.dedup import DEFAULT_THRESHOLD, PAYLOAD_FIELDS
from dinoseek.errors import ConfigError
from dinoseek.heap import map_large_blocks
from dinoseek.pair_search import EXACT_MAX_COMPARISONS, METHODS, choose_method
from dinoseek.runtime import Runtime
from dinoseek.similarity import compute_device
from dinoseek_cli.vector_sets import open_runtime, other_set, read_collection


@click.command()
@click.option(
    "--reference",
    default=None,
    metavar="FOLDER|COLLECTION",
    help="The curated reference set: a folder (embedded with the pool's model) or a "
    "collection of the same store.",
)
@click.option(
    "--per-image",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Sample-based retrieval: the N nearest pool images of each reference image.",
)
@click.option(
    "--cluster-sample",
    type=click.IntRange(min=1),
    default=None,
    help="Cluster-based retrieval (small reference sets): M images from the pool cluster of "
    "each reference image, instead of its nearest ones.",
)
@click.option(
    "--clusters",
    type=click.IntRange(min=1),
    default=None,
    help="k of the pool's k-means for --cluster-sample [default: the square root of the pool].",
)
@click.option(
    "--balanced",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="No reference: K images sampled evenly over a hierarchical k-means of the pool.",
)
@click.option(
    "--levels",
    type=click.IntRange(1, 6),
    default=2,
    show_default=True,
    help="Levels of the hierarchical k-means for --balanced.",
)
@click.option(
    "--near-duplicate",
    type=FiniteFloat(0.0, 1.0, min_open=True),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Pool images at least this similar to a reference image are not selected.",
)
@click.option(
    "--pool",
    default=None,
    metavar="COLLECTION",
    help="The collection to select from (the same as --collection).",
)
@click.option(
    "--into",
    type=CollectionName(),
    default=None,
    help="Copy the selection into this new collection.",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the selection as JSON lines: path, sha256, id, reference, score (never "
    "inside the data directory).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --manifest file.")
@click.option(
    "--search",
    "search_method",
    type=click.Choice(METHODS),
    default="auto",
    show_default=True,
    help="How reference images are compared with the pool. exact: with every pool image; "
    "clusters: with the members of the pool's nearest k-means clusters (recall measured in "
    "bench/RESULTS.md); auto: exact on a GPU or when that is at most "
    f"{EXACT_MAX_COMPARISONS:,} similarities, else clusters.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where similarities and k-means run (auto: cuda when available).",
)
@store_options
@output_options
@handle_errors
def curate(
    reference: str | None,
    per_image: int,
    cluster_sample: int | None,
    clusters: int | None,
    balanced: int | None,
    levels: int,
    near_duplicate: float,
    pool: str | None,
    into: str | None,
    manifest: Path | None,
    overwrite: bool,
    search_method: str,
    seed: int,
    device: str,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Select the pool images that lie close to a reference set (the LVD-142M way), or a
    balanced sample of the pool.

    \b
    dinoseek dedup                                   # duplicates are never selected
    dinoseek curate --reference curated/ --into kept --manifest kept.jsonl
    dinoseek curate --reference few/ --cluster-sample 20 --into kept
    dinoseek curate --balanced 10000 --levels 3 --into balanced

    The pool is --collection (-c). Pool images marked as duplicates by `dinoseek dedup`, and
    near-duplicates of reference images, are left out first.
    """
    configure_logging(quiet=quiet or as_json)
    if (reference is None) == (balanced is None):
        raise click.UsageError("give --reference (retrieval) or --balanced K (sampling)")
    if into is None and manifest is None and not as_json:
        raise click.UsageError("say where the selection goes: --into NAME and/or --manifest FILE")
    if pool is not None:
        flags["collection"] = pool
    settings = load_settings(**flags)
    if manifest is not None:
        check_output_file(
            manifest, overwrite=overwrite, data_dir=settings.data_dir, option="--manifest"
        )
    started = time.perf_counter()
    progress_mode = "off" if quiet or as_json else "auto"
    embeds_folder = reference is not None and Path(reference).is_dir()
    map_large_blocks()  # the blocks of a large pool's comparison go back when freed
    with open_runtime(settings, "curate", with_model=False) as runtime:
        store, name = runtime.store, settings.collection
        if into is not None:
            check_new_collection(store, into)
        if embeds_folder:
            runtime.load_model(model_loader())
        compute = compute_device(device)
        vectors_of_pool = read_collection(runtime, (*PAYLOAD_FIELDS, "sha256"), progress_mode)
        document: dict[str, Any] = {"pool": name}
        names: list[str] = []
        if balanced is not None:
            rows, steps = eligible_rows(vectors_of_pool, None, near_duplicate)
            sizes = level_sizes(len(rows), levels)
            outcome = balanced_selection(vectors_of_pool, rows, balanced, sizes, seed, compute)
            selected = outcome.pop("selected")
            document.update(outcome)
        else:
            assert reference is not None
            vectors, names = reference_set(runtime, reference, progress_mode)
            pool_vectors = vectors_of_pool.vectors
            method = choose_method(
                search_method, len(vectors), len(pool_vectors), pool_vectors.shape[1],
                near_duplicate, compute, within=False, seed=seed,
            )  # fmt: skip
            search = PoolSearch(method, compute)
            rows, steps = eligible_rows(vectors_of_pool, vectors, near_duplicate, search=search)
            if cluster_sample is not None:
                k = clusters or derived_clusters(len(rows))
                selected = by_clusters(
                    vectors_of_pool, rows, vectors, cluster_sample, k, seed=seed, device=compute
                )
                document.update(method="clusters", clusters=k, per_image=cluster_sample)
            else:
                selected = by_neighbours(vectors_of_pool, rows, vectors, per_image, search=search)
                document.update(method="neighbours", per_image=per_image)
            document.update(reference=reference, reference_images=len(names))
            document["search"] = {**method.describe(), "comparisons": search.comparisons}
            if method.parameters is not None and cluster_sample is None:
                document["search"]["neighbour_probes"] = neighbour_probes(
                    method.parameters.clusters
                )
        steps["selected"] = len(selected)
        entries = [manifest_entry(vectors_of_pool, s, names) for s in selected]
        if into is not None:
            copied = copy_selection(
                store, vectors_of_pool, name, into, selected, lambda s: _selection_fields(s, names)
            )
            document["into"] = {"collection": into, "points": copied}
    if manifest is not None:
        lines = "".join(json.dumps(e) + "\n" for e in entries)
        write_output_file(manifest, lines, overwrite=overwrite)
        document["manifest"] = str(manifest)
    document.update(steps=steps, selected=len(selected))
    document["seconds"] = round(time.perf_counter() - started, 2)
    if as_json:
        click.echo(json.dumps({**document, "selection": entries}))
    else:
        click.echo(render(document))


def reference_set(
    runtime: Runtime, reference: str, progress_mode: str
) -> tuple[np.ndarray, list[str]]:
    """The reference vectors and a name for each (a path, or a point's path or id)."""
    found = other_set(runtime, reference, "--reference", progress_mode)
    if not found.items:
        raise ConfigError(f"reference collection {reference!r} is empty")
    return found.vectors, [item.get("path", item.get("id", "")) for item in found.items]


def balanced_selection(
    pool: CollectionVectors,
    rows: np.ndarray,
    count: int,
    sizes: list[int],
    seed: int,
    device: str,
) -> dict[str, Any]:
    """The balanced sample and its cluster shares before and after."""
    outcome = balanced(pool, rows, count, sizes, seed=seed, device=device)
    return {
        "method": "balanced",
        "levels": sizes,
        "selected": [Selected(int(row), None, None) for row in outcome.rows.tolist()],
        "top_clusters": len(outcome.shares_before),
        "largest_share_before": round(max(outcome.shares_before), 4),
        "smallest_share_before": round(min(outcome.shares_before), 4),
        "largest_share_after": round(max(outcome.shares_after), 4),
        "smallest_share_after": round(min(outcome.shares_after), 4),
    }


def manifest_entry(pool: CollectionVectors, selected: Selected, names: list[str]) -> dict[str, Any]:
    """One manifest line."""
    payload = pool.payloads[selected.index]
    return {
        "path": payload.get("path"),
        "sha256": payload.get("sha256"),
        "id": pool.ids[selected.index],
        "reference": None if selected.reference is None else names[selected.reference],
        "score": selected.score,
    }


def _selection_fields(selected: Selected, names: list[str]) -> dict[str, Any]:
    if selected.reference is None:
        return {}
    return {"selected_by": names[selected.reference], "selection_score": selected.score}


def render(document: dict[str, Any]) -> str:
    """The report as text."""
    steps = document["steps"]
    lines = [
        f"pool {document['pool']!r}: {steps['pool']:,} points, "
        f"{steps['marked_duplicates']:,} marked duplicates left out"
        + (
            f", {steps['near_duplicates_of_reference']:,} near-duplicates of the reference left out"
            if "near_duplicates_of_reference" in steps
            else ""
        )
        + f"; {steps['eligible']:,} eligible"
    ]
    if document["method"] == "balanced":
        lines.append(
            f"balanced over a hierarchical k-means of {document['levels']} clusters: "
            f"{document['selected']:,} selected; top-level cluster shares "
            f"{document['smallest_share_before']:.1%}-{document['largest_share_before']:.1%} "
            f"before, {document['smallest_share_after']:.1%}-"
            f"{document['largest_share_after']:.1%} after"
        )
    else:
        how = (
            f"the {document['per_image']} nearest"
            if document["method"] == "neighbours"
            else f"{document['per_image']} from the pool cluster (k={document['clusters']})"
        )
        lines.append(
            f"{document['reference_images']:,} reference images, {how} of each: "
            f"{document['selected']:,} selected in {document['seconds']:.1f} s"
        )
    if "search" in document:
        search = document["search"]
        probed = (
            f", nearest images among the {search['neighbour_probes']:,} nearest of "
            f"{search['parameters']['clusters']:,} clusters"
            if "neighbour_probes" in search
            else ""
        )
        lines.append(
            f"reference images compared with the pool: {search['name']} ({search['reason']}), "
            f"{search['comparisons']:,} similarities{probed}"
        )
    if "into" in document:
        lines.append(
            f"copied into collection {document['into']['collection']!r} "
            f"({document['into']['points']:,} points)"
        )
    if "manifest" in document:
        lines.append(f"manifest: {document['manifest']}")
    return "\n".join(lines)
