"""``dinoseek dedup``: mark the near-duplicates of a collection in its payloads.

The stored vectors are compared with each other (no image is read again, no file is
touched); see ``dinoseek.dedup`` for the groups, the keep rule and the marks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from dinoseek.collection_vectors import CollectionVectors
from dinoseek.commandline import (
    FiniteFloat,
    configure_logging,
    handle_errors,
    load_settings,
    output_options,
    store_options,
)
from dinoseek.dedup import (
    DEFAULT_THRESHOLD,
    PAYLOAD_FIELDS,
    DedupPlan,
    apply_leaks,
    apply_plan,
    check_similar,
    check_threshold,
    clear_marks,
    exact_copies,
    find_leaks,
    plan_dedup,
)
from dinoseek.dedup_keep import DEFAULT_KEEP_RULE, KEEP_RULES, KeepRule, file_times, in_folder
from dinoseek.errors import ConfigError
from dinoseek.heap import map_large_blocks, release_free_memory
from dinoseek.pair_search import EXACT_MAX_COMPARISONS, METHODS
from dinoseek.runtime import Runtime
from dinoseek.similarity import compute_device
from dinoseek_cli.vector_sets import Stages, counting, open_runtime, other_set, read_collection

MAX_TEXT_GROUPS = 20
MIN_WARNED_GROUP = 5  # a pair or a triple of copies in a tiny collection is no warning


@click.command()
@click.option(
    "--threshold",
    type=FiniteFloat(0.0, 1.0, min_open=True),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Cosine similarity at or above which two images are near-duplicates.",
)
@click.option(
    "--keep",
    "keep_rule",
    type=click.Choice(KEEP_RULES),
    default=DEFAULT_KEEP_RULE,
    show_default=True,
    help="Which image of a group is kept. quality: the most pixels, then the larger file (a "
    "better encoding of the same pixels), then the oldest, then the shortest path; oldest / "
    "newest: the modification time first, then as quality; path: the shortest path, then "
    "alphabetical order.",
)
@click.option(
    "--prefer",
    "prefer",
    multiple=True,
    metavar="FOLDER",
    help="Files under FOLDER are kept over any rule (repeat it: the first folder wins).",
)
@click.option(
    "--similar",
    type=FiniteFloat(0.0, 1.0, min_open=True),
    default=None,
    help="Also list the pairs at or above this similarity and below --threshold (similar "
    "shots, not copies); they are never marked, and every point is compared.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="auto",
    show_default=True,
    help="How pairs are found. exact: every pair compared; clusters: each point compared with "
    "the members of its nearest k-means clusters (recall measured in bench/RESULTS.md); auto: "
    f"exact on a GPU or when that is at most {EXACT_MAX_COMPARISONS:,} similarities, else "
    "clusters.",
)
@click.option("--clear", is_flag=True, help="Remove every mark a dedup run wrote, and stop.")
@click.option(
    "--against",
    "against",
    default=None,
    metavar="COLLECTION|FOLDER",
    help="Instead of grouping, mark the points that near-duplicate another set: a collection "
    "of the same store, or a folder embedded on the fly with the collection's model (a test "
    "set that must not leak into training).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the similarities are computed (auto: cuda when available).",
)
@store_options
@output_options
@handle_errors
def dedup(
    threshold: float,
    keep_rule: str,
    prefer: tuple[str, ...],
    similar: float | None,
    method: str,
    clear: bool,
    against: str | None,
    device: str,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Find the near-duplicates of a collection and mark them in their payloads.

    Builds the graph of pairs at or above --threshold, takes its connected components, keeps
    one point per group and marks the others with `duplicate_of`. The kept image is chosen by
    --keep (default quality: the most pixels, then the larger file, then the oldest, then the
    shortest path) after --prefer, decided again on every run, and its reason is reported and
    stored (`duplicate_reason`). Nothing is re-embedded and no file is touched. A rerun
    compares only the points added since. `dinoseek search --collapse-duplicates` then
    returns one hit per group.
    """
    configure_logging(quiet=quiet or as_json)
    check_threshold(threshold)  # before any work: NaN would find no pair and unmark all
    if similar is not None:
        check_similar(similar, threshold)
    settings = load_settings(**flags)
    progress_mode = "off" if quiet or as_json else "auto"
    started = time.perf_counter()
    embeds_folder = against is not None and Path(against).is_dir()
    map_large_blocks()  # the blocks of a large collection's comparison go back when freed
    with open_runtime(settings, "dedup", with_model=embeds_folder) as runtime:
        store, name = runtime.store, settings.collection
        if clear:
            cleared = clear_marks(store, name)
            _report(
                {"collection": name, "cleared": cleared},
                as_json,
                f"cleared the marks of {cleared:,} points",
            )
            return
        # Grouping finds candidates on a float16 copy and decides on the stored vectors.
        copy = np.float32 if against is not None else np.float16
        data = read_collection(
            runtime, PAYLOAD_FIELDS, progress_mode, derive=file_times, dtype=copy
        )
        stages = {"read": time.perf_counter() - started}
        compute = compute_device(device)
        if against is not None:
            document = _against(runtime, data, against, threshold, compute, progress_mode)
        else:
            rule = KeepRule(keep_rule, _preferred_folders(data, prefer))
            with Stages(progress_mode) as bars:
                plan = plan_dedup(
                    data,
                    threshold,
                    keep=rule,
                    device=compute,
                    method=method,
                    similar=similar,
                    progress=bars.start,
                )
            stages["compare"] = time.perf_counter() - started - stages["read"]
            # The writes need ids and payloads: the matrix is freed before the store's pages
            # grow with them, and so is what the comparison left in the heap.
            data = data.without_vectors()
            release_free_memory()
            written = apply_plan(store, name, data, plan, threshold)
            stages["write"] = time.perf_counter() - started - stages["read"] - stages["compare"]
            document = _document(name, data, plan, threshold, written, rule)
            document["seconds_by_stage"] = {k: round(v, 2) for k, v in stages.items()}
            if similar is not None:
                document["similar_threshold"] = similar
    document["seconds"] = round(time.perf_counter() - started, 2)
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(_text(document))


def _preferred_folders(data: CollectionVectors, prefer: tuple[str, ...]) -> tuple[str, ...]:
    """The --prefer folders as absolute paths (``ConfigError`` for one that holds no point:
    a mistyped folder would otherwise change nothing, silently)."""
    if not prefer:
        return ()
    listed = [data.payloads[i].get("paths") for i in data.payloads.having(["paths"])]
    every_path = [
        path
        for paths in [data.payloads.values("path"), *listed]
        if isinstance(paths, list)
        for path in paths
        if isinstance(path, str)
    ]
    folders = []
    for given in prefer:
        folder = os.path.abspath(given)
        held = any(in_folder(path, folder) for path in every_path)
        if not held:
            raise ConfigError(f"--prefer {given}: no indexed file of the collection lies under it")
        folders.append(folder)
    return tuple(folders)


def _report(document: dict[str, Any], as_json: bool, text: str) -> None:
    click.echo(json.dumps(document) if as_json else text)


def _document(
    name: str,
    data: CollectionVectors,
    plan: DedupPlan,
    threshold: float,
    written: int,
    rule: KeepRule,
) -> dict[str, Any]:
    def path(index: int) -> str:
        return str(data.payloads[index].get("path", data.ids[index]))

    groups = [
        {
            "keep": path(group.keep),
            "keep_id": data.ids[group.keep],
            "reason": group.reason,
            "duplicates": [path(i) for i in group.others],
            "duplicate_ids": [data.ids[i] for i in group.others],
            "scores": list(group.scores),
        }
        for group in plan.groups
    ]
    similar = [
        {
            "paths": [path(pair.first), path(pair.second)],
            "ids": [data.ids[pair.first], data.ids[pair.second]],
            "score": pair.score,
        }
        for pair in plan.similar
    ]
    exact = [
        {"id": data.ids[index], "paths": paths} for index, paths in exact_copies(data.payloads)
    ]
    return {
        "collection": name,
        "threshold": threshold,
        "keep_rule": rule.rule,
        "prefer": list(rule.prefer),
        "points": len(data.ids),
        "compared": len(plan.compared),
        "method": plan.method.describe(),
        "comparisons": plan.comparisons,
        "pairs": plan.pairs,
        "groups": groups,
        "duplicates": sum(len(g["duplicates"]) for g in groups),
        "exact": exact,
        "similar": similar,
        "written": written,
        "warnings": _warnings(groups, len(data.ids), threshold),
    }


def _warnings(groups: list[dict[str, Any]], points: int, threshold: float) -> list[str]:
    """A warning when one group holds most of the collection: groups are chains of pairs, so
    a threshold too low for the collection joins images that are not copies of each other."""
    largest = max((1 + len(group["duplicates"]) for group in groups), default=0)
    if largest < MIN_WARNED_GROUP or 2 * largest <= points:
        return []
    return [
        f"one group holds {largest:,} of the {points:,} points: a group is a chain of pairs at "
        f"or above the threshold, so {threshold:g} may be too low for this collection and join "
        "images that are not copies of each other. Look at the group, and rerun with a higher "
        "--threshold (the marks are decided again) or --clear"
    ]


def _against(
    runtime: Runtime,
    data: CollectionVectors,
    against: str,
    threshold: float,
    device: str,
    progress_mode: str,
) -> dict[str, Any]:
    """Mark the pool points that near-duplicate a collection or a folder."""
    store, settings = runtime.store, runtime.settings
    if against == settings.collection:
        raise ConfigError(
            f"--against {against!r} is the collection itself: every point would match "
            "itself; give another collection or a folder"
        )
    other = other_set(runtime, against, "--against", progress_mode)
    other_vectors, names, label = other.vectors, other.items, other.name
    comparing = counting(len(data.ids), "comparing", progress_mode)
    leaks = find_leaks(
        data.vectors, other_vectors, threshold, device=device, on_rows=comparing.advance
    )
    comparing.close()
    written = apply_leaks(store, settings.collection, data, leaks, label, lambda i: names[i])
    return {
        "collection": settings.collection,
        "against": label,
        "threshold": threshold,
        "points": len(data.ids),
        "leaks": [
            {
                "path": str(data.payloads[leak.pool_index].get("path", data.ids[leak.pool_index])),
                "id": data.ids[leak.pool_index],
                "matches": names[leak.other_index],
                "score": leak.score,
            }
            for leak in leaks
        ],
        "written": written,
    }


def _text(document: dict[str, Any]) -> str:
    """The report as text: a summary, then the largest groups (or the leaks)."""
    seconds = document["seconds"]
    if "against" in document:
        leaks = document["leaks"]
        lines = [
            f"{len(leaks):,} of {document['points']:,} points in {document['collection']!r} "
            f"near-duplicate {document['against']} (threshold {document['threshold']:g}, "
            f"{seconds:.1f} s); marked in `near_duplicate_of`"
        ]
        for leak in leaks[:MAX_TEXT_GROUPS]:
            match = leak["matches"].get("path") or leak["matches"].get("id")
            lines.append(f"  {leak['score']:.4f}  {leak['path']}  ~  {match}")
        if len(leaks) > MAX_TEXT_GROUPS:
            lines.append(f"  ... {len(leaks) - MAX_TEXT_GROUPS:,} more (--json lists them all)")
        return "\n".join(lines)
    groups = document["groups"]
    lines = [
        f"compared {document['compared']:,} of {document['points']:,} points at threshold "
        f"{document['threshold']:g} in {seconds:.1f} s: {len(groups):,} "
        f"group{'' if len(groups) == 1 else 's'}, "
        f"{document['duplicates']:,} duplicates marked ({document['written']:,} payloads "
        f"written); kept by {_rule_text(document)}",
        f"method: {_method_text(document['method'])}; {document['comparisons']:,} "
        "similarities computed",
    ]
    lines.extend(f"warning: {warning}" for warning in document["warnings"])
    if document["exact"]:
        lines.append(f"exact copies (one point, several files): {len(document['exact']):,} points")
    for group in groups[:MAX_TEXT_GROUPS]:
        lines.append(f"keep {group['keep']}  ({group['reason']})")
        for other, score in zip(group["duplicates"], group["scores"], strict=True):
            lines.append(f"  {score:.4f}  {other}")
    if len(groups) > MAX_TEXT_GROUPS:
        lines.append(f"... {len(groups) - MAX_TEXT_GROUPS:,} more groups (--json lists them all)")
    for copies in document["exact"][:MAX_TEXT_GROUPS]:
        lines.append(f"same content: {'  =  '.join(copies['paths'])}")
    if "similar_threshold" in document:
        similar = document["similar"]
        lines.append(
            f"similar (at or above {document['similar_threshold']:g}, below "
            f"{document['threshold']:g}; not marked): {len(similar):,} pairs"
        )
        for pair in similar[:MAX_TEXT_GROUPS]:
            lines.append(f"  {pair['score']:.4f}  {pair['paths'][0]}  ~  {pair['paths'][1]}")
        if len(similar) > MAX_TEXT_GROUPS:
            lines.append(f"  ... {len(similar) - MAX_TEXT_GROUPS:,} more (--json lists them all)")
    return "\n".join(lines)


def _method_text(method: dict[str, Any]) -> str:
    """How the pairs were found, in a sentence."""
    if method["name"] != "clusters":
        every = ", every pair compared" if method["name"] == "exact" else ""
        return f"{method['name']}{every} ({method['reason']})"
    p = method["parameters"]
    return (
        f"clusters ({method['reason']}): k-means of {p['clusters']:,} clusters fitted on "
        f"{p['sample']:,} points; each point compared with its nearest cluster and the "
        f"clusters within {p['margin']:.4f} of it (at most {p['max_probes']})"
    )


def _rule_text(document: dict[str, Any]) -> str:
    rule = f"--keep {document['keep_rule']}"
    return rule + "".join(f" --prefer {folder}" for folder in document["prefer"])
