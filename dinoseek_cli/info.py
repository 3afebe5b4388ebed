"""``dinoseek info``: the store, its collections, their sizes and models."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from dinoseek.commandline import (
    EPILOG,
    configure_logging,
    format_bytes,
    handle_errors,
    load_settings,
    output_options,
    store_options,
    store_owner,
)
from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.store import VectorStore, collection_statuses
from search_api.client import ServiceClient

# Qdrant's default indexing threshold: a collection whose vectors take less (float32) has no
# HNSW index, and every search compares all of them, which is exact and fast at that size.
INDEXING_THRESHOLD_KB = 10_000


@click.command(epilog=EPILOG)
@store_options
@output_options
@handle_errors
def info(as_json: bool, quiet: bool, **flags: Any) -> None:
    """Show the store, its collections, their sizes and the model each was built with."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with Runtime.open(
        settings, owner=store_owner("dinoseek info"), collection="none", model=False
    ) as runtime:
        document = info_document(settings, runtime.store)
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    add_counts_from_servers(document, api_key)
    for entry in document["collections"]:
        entry["search"] = search_kind(entry)
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(render_info(document))


def info_document(settings: Settings, store: VectorStore) -> dict[str, Any]:
    """What ``info`` reports, as JSON."""
    collections = []
    for status in collection_statuses(store):
        entry: dict[str, Any] = {"name": status.name}
        if status.holder is None:
            entry.update(points=status.points, indexed_vectors=status.indexed_vectors)
        else:
            entry["in_use_by"] = status.holder
        if status.space is not None:
            entry.update(model=status.space.model_id, dim=status.space.dim)
        entry["regions"] = status.regions
        collections.append(entry)
    document: dict[str, Any] = {"store": store.describe(), "collections": collections}
    if not settings.uses_server:
        document["data_dir"] = str(settings.data_dir.resolve())
        document["size_bytes"] = directory_size(settings.data_dir)
    return document


def add_counts_from_servers(document: dict[str, Any], api_key: str | None) -> None:
    """Collections held by a running server get their counts from that server."""
    for entry in document["collections"]:
        url = (entry.get("in_use_by") or {}).get("url")
        if not url:
            continue
        with ServiceClient(str(url), api_key=api_key) as client:
            remote = client.collections()
        for summary in remote.collections:
            if summary.name == entry["name"]:
                entry.update(points=summary.points, indexed_vectors=summary.indexed_vectors)


def search_kind(entry: dict[str, Any]) -> str | None:
    """How the collection is searched: ``hnsw`` (every vector in the index), ``exact`` (no
    index, as Qdrant leaves a collection below its indexing threshold: every vector is
    compared), ``pending`` (vectors not in the index yet, compared one by one until it is
    built); None when the counts are unknown."""
    points, indexed, dim = entry.get("points"), entry.get("indexed_vectors"), entry.get("dim")
    if points is None or indexed is None:
        return None
    if indexed >= points:
        return "hnsw"
    if indexed == 0 and dim and points < threshold_points(dim):
        return "exact"
    return "pending"


def threshold_points(dim: int) -> int:
    """About how many float32 vectors of ``dim`` Qdrant indexes from."""
    return INDEXING_THRESHOLD_KB * 1024 // (4 * dim)


def render_info(document: dict[str, Any]) -> str:
    """Human form of ``info``."""
    lines = [f"store: {document['store']}"]
    if "size_bytes" in document:
        lines[0] += f" ({format_bytes(document['size_bytes'])} on disk)"
    if not document["collections"]:
        lines.append("no collections yet: run `dinoseek index FOLDER`")
        return "\n".join(lines)
    lines.append(f"{'collection':<20} {'points':>9} {'indexed':>9}  {'dim':>5}  model")
    for entry in document["collections"]:
        points = entry.get("points")
        indexed = entry.get("indexed_vectors")
        shown = "" if indexed is None else f"{indexed:,}"
        if entry.get("search") == "exact":
            shown = "exact*"
        lines.append(
            f"{entry['name']:<20} {'' if points is None else f'{points:,}':>9} "
            f"{shown:>9}  {entry.get('dim', ''):>5}  "
            f"{entry.get('model', '?')}"
        )
        holder = entry.get("in_use_by")
        if holder:
            where = f" at {holder['url']}" if holder.get("url") else ""
            lines.append(
                f"{'':<20} in use by {holder.get('command', 'process')} "
                f"(pid {holder.get('pid', '?')}){where}"
            )
    return "\n".join(lines + _index_notes(document["collections"]))


def _index_notes(collections: list[dict[str, Any]]) -> list[str]:
    """What the `indexed` column means where it is not every point."""
    notes = []
    exact = [entry for entry in collections if entry.get("search") == "exact"]
    if exact:
        dim = int(exact[0].get("dim") or 0)
        example = f" (about {threshold_points(dim):,} points at {dim}-d)" if dim else ""
        notes += [
            "* no HNSW index: Qdrant builds one once the vectors pass its indexing threshold, "
            f"{INDEXING_THRESHOLD_KB:,} KB{example};",
            "  until then each search compares every vector: exact, and as fast at this size",
        ]
    for entry in collections:
        if entry.get("regions"):
            notes.append(
                f"{entry['name']}: region vectors stored: `dinoseek search --regions` or "
                "`--region x,y,w,h` searches by part of an image (docs/regions.md)"
            )
        if entry.get("search") == "pending":
            pending = entry["points"] - entry["indexed_vectors"]
            notes.append(
                f"{entry['name']}: {pending:,} points are not in the index yet, and searched "
                "exactly meanwhile: the embedded store builds it at the end of `dinoseek "
                "index`, a Qdrant server in the background"
            )
    return notes


def directory_size(path: Path) -> int:
    """Bytes of disk used by the files under ``path`` (Edge preallocates sparse files, so
    blocks are counted, not apparent sizes)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                continue
    return total
