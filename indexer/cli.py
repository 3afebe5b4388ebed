"""The ``dinoseek`` command: index folders, search, inspect.

Every command takes the shared options (``--model``, ``--device``, ``--collection``,
``--data-dir``, ``--qdrant-url``) whose defaults come from ``DINOSEEK_*`` variables. With
``--json`` a command prints exactly one JSON document on stdout; progress and logs go to
stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from dinoseek import __version__
from dinoseek.embedder import (
    Embedder,
    available_cores,
    default_batch_size,
    share_cpu_with_workers,
)
from dinoseek.errors import StoreLockedError
from dinoseek.images import load_image
from dinoseek.labelling import choose_probe, knn_labels, load_probe, probe_labels
from dinoseek.settings import Settings
from dinoseek.store import SearchHit, SearchQuery, VectorStore, open_store
from indexer.catalog import LabelSource, read_labels_csv
from indexer.options import (
    EXIT_INTERRUPTED,
    compile_option,
    configure_logging,
    format_bytes,
    graceful_stop,
    handle_errors,
    load_settings,
    model_options,
    output_options,
    parse_filters,
    resolve_model,
    store_options,
    store_owner,
)
from indexer.pipeline import IndexOptions, IndexSummary, index_folders
from indexer.probe_cli import probe as probe_group
from indexer.remote import SearchOutcome, remote_collections, remote_search
from indexer.scan import DEFAULT_EXCLUDES, ScanOptions
from indexer.snapshot_cli import snapshot as snapshot_group

EPILOG = """\b
Exit codes: 0 done (bad image files are reported, not fatal), 1 error, 2 usage error,
3 store busy or unreachable (try again later), 130 interrupted."""


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@click.version_option(__version__, prog_name="dinoseek")
def main() -> None:
    """dinoseek: self-hosted image similarity search on DINOv2 features and Qdrant.

    \b
    Quick start:
      dinoseek index ~/Pictures --labels-from-folders   # embed every image once
      dinoseek search query.jpg                         # nearest neighbours
      dinoseek info                                     # what is stored where

    Everything lands in ./dinoseek-data (the embedded store) unless DINOSEEK_QDRANT_URL points
    to a Qdrant server.
    """


def default_workers(device_type: str) -> int:
    """Decode processes: all cores feeding a GPU. On a CPU the model needs every core and
    decoding is a few percent of the work: on up to 4 cores it runs in this process between
    batches (measured on 2 cores with a ViT-S: 101% of the model's own throughput, against
    57% with one decode process taking a core); larger machines give it a quarter."""
    cores = available_cores()
    if device_type == "cuda":
        return min(16, cores)
    return 0 if cores <= 4 else cores // 4


@main.command(epilog=EPILOG)
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--labels-from-folders",
    is_flag=True,
    help="Label each image with the name of its parent folder (relative to FOLDER).",
)
@click.option(
    "--labels-csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of path,label rows (absolute paths or paths relative to FOLDER).",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Skip files and folders matching GLOB (name or relative path); repeatable.",
)
@click.option(
    "--no-default-excludes",
    is_flag=True,
    help=f"Also scan what is skipped by default: {', '.join(DEFAULT_EXCLUDES)}.",
)
@click.option(
    "--follow-links", is_flag=True, help="Follow symbolic links (directory cycles are cut)."
)
@click.option("--no-prune", is_flag=True, help="Keep points of files that vanished from FOLDER.")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Retry files that failed before even if they have not changed.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per forward pass [env: DINOSEEK_BATCH_SIZE; default: 128 on cuda, 16 on cpu].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decode processes (0: decode in this process) [default: all cores (at most 16) on "
    "cuda; on cpu none up to 4 cores, else a quarter of them].",
)
@click.option(
    "--failures-report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the JSON-lines report of files that failed "
    "[default: DATA_DIR/reports/COLLECTION.failures.jsonl].",
)
@click.option(
    "--no-optimize",
    is_flag=True,
    help="Skip building the search index at the end (embedded store).",
)
@click.option(
    "--gpu-decode",
    is_flag=True,
    help="Decode JPEGs on the GPU with nvJPEG (needs torchvision, the gpu extra); a resize "
    "slightly different from Pillow's, within cosine 0.999 of it.",
)
@click.option(
    "--log-every",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Progress log interval when stderr is not a terminal.",
)
@compile_option
@model_options
@store_options
@output_options
@handle_errors
def index(
    folders: tuple[Path, ...],
    labels_from_folders: bool,
    labels_csv: Path | None,
    excludes: tuple[str, ...],
    no_default_excludes: bool,
    follow_links: bool,
    no_prune: bool,
    retry_failed: bool,
    batch_size: int | None,
    workers: int | None,
    failures_report: Path | None,
    no_optimize: bool,
    gpu_decode: bool,
    log_every: float,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Embed the images of FOLDERS into the collection, and keep it a mirror of them.

    New and changed files are embedded; unchanged ones (same path, size and mtime) are skipped
    without being read; identical files become one point listing every path; files that
    vanished are removed. Bad files are reported and never stop the run. Ctrl-C stops cleanly;
    running the command again resumes where it stopped.
    """
    configure_logging(quiet=quiet)
    settings = load_settings(batch_size=batch_size, **flags)
    store = open_store(settings, owner=store_owner("dinoseek index"))
    try:
        if settings.collection in store.list_collections():
            store.count(settings.collection)  # take the collection before loading a model
        model = resolve_model(settings, store)
        embedder = Embedder.from_pretrained(model, device=settings.device, dtype=settings.dtype)
        decode_workers = workers if workers is not None else default_workers(embedder.device.type)
        if embedder.device.type == "cpu":
            share_cpu_with_workers(decode_workers)
        batch = settings.batch_size or default_batch_size(embedder.device)
        if settings.compile != "off":
            _ = embedder.space  # the fingerprint's batch of 1 runs before compiling
            embedder.compile(settings.compile, max_batch=batch)
            embedder.warm_up([batch])
        options = IndexOptions(
            roots=tuple(Path(os.path.abspath(f)) for f in folders),
            collection=settings.collection,
            failures_report=failures_report
            or settings.data_dir / "reports" / f"{settings.collection}.failures.jsonl",
            batch_size=batch,
            workers=decode_workers,
            max_image_pixels=settings.max_image_pixels,
            labels=LabelSource(
                from_folders=labels_from_folders,
                mapping=read_labels_csv(labels_csv) if labels_csv else {},
            ),
            scan=ScanOptions(
                excludes=(() if no_default_excludes else DEFAULT_EXCLUDES) + excludes,
                follow_links=follow_links,
                skip_dirs=(settings.data_dir,),
            ),
            prune=not no_prune,
            retry_failed=retry_failed,
            optimize=not no_optimize,
            progress="off" if quiet else "auto",
            progress_interval_s=log_every,
            gpu_decode=gpu_decode,
        )
        with graceful_stop() as stop:
            summary = index_folders(embedder, store, options, stop=stop)
    except StoreLockedError as error:
        raise StoreLockedError(_index_locked_message(error), holder=error.holder) from None
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    elif not quiet or summary.failed:
        click.echo(render_summary(summary))
    for warning in summary.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)


def _index_locked_message(error: StoreLockedError) -> str:
    holder = error.holder
    if not holder.get("url"):
        return error.message
    return (
        f"the collection is held by {holder.get('command', 'a server')} "
        f"(pid {holder.get('pid', '?')}) at {holder['url']}. Indexing needs the embedded "
        "store to itself: stop the server, run `dinoseek index`, then start it again. To index "
        "while serving, run Qdrant as a server and set DINOSEEK_QDRANT_URL (README: 'Run with "
        "docker compose')"
    )


def render_summary(summary: IndexSummary) -> str:
    """The human summary of an index run."""
    state = "stopped early" if summary.interrupted else "done"
    lines = [
        f"{state}: {summary.scanned:,} files scanned in {summary.elapsed_s:.1f} s, "
        f"collection {summary.collection!r} ({summary.store}) holds {summary.points:,} images",
        f"  embedded    {summary.embedded:>8,}   "
        f"({summary.images_per_s:.1f} img/s, {summary.model})",
        f"  unchanged   {summary.unchanged:>8,}",
        f"  duplicates  {summary.duplicates:>8,}   (same content as another file: one point)",
        f"  removed     {summary.removed:>8,}   (vanished from disk)",
    ]
    if summary.relabelled:
        lines.append(f"  relabelled  {summary.relabelled:>8,}")
    reasons = ", ".join(f"{code} {count}" for code, count in summary.failed_by_reason.items())
    lines.append(f"  failed      {summary.failed:>8,}" + (f"   ({reasons})" if reasons else ""))
    if summary.known_failures_skipped:
        lines.append(
            f"  skipped     {summary.known_failures_skipped:>8,}   (failed before and unchanged; "
            "--retry-failed to retry)"
        )
    if summary.failures_report:
        lines.append(f"  failures report: {summary.failures_report}")
    return "\n".join(lines)


@main.command(epilog=EPILOG)
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
    type=float,
    default=None,
    help="Only neighbours with a cosine similarity of at least this.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="NAME=VALUE",
    help="Exact match on label, root, path, format or sha256; repeatable.",
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
    filters: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Find the images most similar to IMAGE in the collection."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    payload_filters = parse_filters(filters)
    with open_store(settings, owner=store_owner("dinoseek search")) as store:
        try:
            store.count(settings.collection)  # opens the collection: is it ours to open?
        except StoreLockedError as error:
            url = server_holding(error)
            click.echo(
                f"note: the server at {url} holds {settings.collection!r}; asking it", err=True
            )
            outcome = remote_search(
                url,
                _secret(settings.api_key),
                image,
                collection=settings.collection,
                top_k=top_k,
                offset=offset,
                threshold=threshold,
                filters=payload_filters,
            )
        else:
            outcome = _search_here(
                settings,
                store,
                image,
                payload_filters,
                top_k=top_k,
                offset=offset,
                threshold=threshold,
            )
    if as_json:
        click.echo(json.dumps(search_document(settings, image, outcome)))
    else:
        click.echo(render_outcome(outcome))


def _search_here(
    settings: Settings,
    store: VectorStore,
    image: Path,
    filters: dict[str, str],
    *,
    top_k: int,
    offset: int,
    threshold: float | None,
) -> SearchOutcome:
    stored_space = store.collection_space(settings.collection)
    model = resolve_model(settings, store)
    embedder = Embedder.from_pretrained(model, device=settings.device, dtype=settings.dtype)
    embedder.space.check_compatible(stored_space, settings.collection)
    decoded = load_image(image, max_pixels=settings.max_image_pixels)
    vector = embedder.embed_images([decoded.image])[0]
    query = SearchQuery(
        vector=vector, top_k=top_k, offset=offset, score_threshold=threshold, filters=filters
    )
    hits = store.search(settings.collection, query)
    probe_name = choose_probe(store.list_probes(settings.collection))
    if probe_name is None:
        labels = knn_labels(hits)
    else:
        probe = load_probe(store, settings.collection, probe_name, embedder.space)
        labels = probe_labels(probe, vector)
    return SearchOutcome(embedder.model_id, hits, labels)


def server_holding(error: StoreLockedError) -> str:
    """The URL of the dinoseek server holding the store, or re-raise ``error``."""
    url = error.holder.get("url")
    if not url:
        raise error
    return str(url)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def search_document(settings: Settings, image: Path, outcome: SearchOutcome) -> dict[str, Any]:
    """The --json output of ``search``."""
    return {
        "query": str(image),
        "collection": settings.collection,
        "model": outcome.model,
        "labels": [dataclasses.asdict(label) for label in outcome.labels or []],
        "results": [
            {
                "id": hit.id,
                "score": round(hit.score, 6),
                "path": hit.payload.get("path"),
                "label": hit.payload.get("label"),
                "payload": hit.payload,
            }
            for hit in outcome.hits
        ],
    }


def render_outcome(outcome: SearchOutcome) -> str:
    """Predicted labels, then the table of neighbours."""
    lines = []
    if outcome.labels:
        first = outcome.labels[0]
        how = f"probe {first.probe!r}" if first.method == "probe" else "vote of the neighbours"
        shown = ", ".join(f"{p.label} {p.probability:.0%}" for p in outcome.labels[:3])
        lines.append(f"labels ({how}): {shown}")
    lines.append(render_hits(outcome.hits))
    return "\n".join(lines)


def render_hits(hits: list[SearchHit]) -> str:
    """A table of neighbours."""
    if not hits:
        return "no results"
    label_width = max(5, *(len(str(h.payload.get("label") or "")) for h in hits))
    lines = [f"{'rank':>4}  {'score':>6}  {'label':<{label_width}}  path"]
    for rank, hit in enumerate(hits, start=1):
        label = str(hit.payload.get("label") or "-")
        lines.append(
            f"{rank:>4}  {hit.score:6.4f}  {label:<{label_width}}  {hit.payload.get('path', '?')}"
        )
    return "\n".join(lines)


@main.command(epilog=EPILOG)
@store_options
@output_options
@handle_errors
def info(as_json: bool, quiet: bool, **flags: Any) -> None:
    """Show the store, its collections, their sizes and the model each was built with."""
    configure_logging(quiet=True)
    settings = load_settings(**flags)
    with open_store(settings, owner=store_owner("dinoseek info")) as store:
        document = info_document(settings, store)
    add_counts_from_servers(document, _secret(settings.api_key))
    if as_json:
        click.echo(json.dumps(document))
    else:
        click.echo(render_info(document))


def info_document(settings: Settings, store: VectorStore) -> dict[str, Any]:
    """What ``info`` reports, as JSON."""
    collections = []
    for name in store.list_collections():
        entry: dict[str, Any] = {"name": name}
        try:
            details = store.collection_info(name)
            entry.update(points=details.points, indexed_vectors=details.indexed_vectors)
            space = details.space
        except StoreLockedError as error:
            entry["in_use_by"] = error.holder
            space = store.collection_space(name)
        if space is not None:
            entry.update(model=space.model_id, dim=space.dim)
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
        remote = remote_collections(str(url), api_key)
        for summary in remote.get("collections", []):
            if summary["name"] == entry["name"]:
                entry.update(points=summary["points"], indexed_vectors=summary["indexed_vectors"])


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
        lines.append(
            f"{entry['name']:<20} {'' if points is None else f'{points:,}':>9} "
            f"{'' if indexed is None else f'{indexed:,}':>9}  {entry.get('dim', ''):>5}  "
            f"{entry.get('model', '?')}"
        )
        holder = entry.get("in_use_by")
        if holder:
            where = f" at {holder['url']}" if holder.get("url") else ""
            lines.append(
                f"{'':<20} in use by {holder.get('command', 'process')} "
                f"(pid {holder.get('pid', '?')}){where}"
            )
    return "\n".join(lines)


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


@main.command(epilog=EPILOG)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind (0.0.0.0 for every interface, e.g. in a container).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@compile_option
@model_options
@store_options
@click.option("--quiet", "-q", is_flag=True, help="Log warnings and errors only.")
@handle_errors
def serve(host: str, port: int, quiet: bool, **flags: Any) -> None:
    """Serve the HTTP API: /search, /search/batch, /points/{id}/similar, /embed, /docs.

    Loads the model once, opens the store and checks that the collection was built with the
    same model. With the embedded store the server owns the collection while it runs:
    `dinoseek search` and `dinoseek info` then go through it, and `dinoseek index` asks you to
    stop it first (or to use a Qdrant server, which both can share).
    """
    from search_api.server import public_url, run_server

    configure_logging(quiet=quiet)
    settings = load_settings(**flags)
    url = public_url(host, port)
    store = open_store(settings, owner={"command": "dinoseek serve", "url": url})
    try:
        model = resolve_model(settings, store)
        embedder = Embedder.from_pretrained(model, device=settings.device, dtype=settings.dtype)
        if settings.collection in store.list_collections():
            embedder.space.check_compatible(
                store.collection_space(settings.collection), settings.collection
            )
            store.count(settings.collection)  # opens the collection now: it is ours
    except BaseException:
        store.close()
        raise
    click.echo(
        f"serving {settings.collection!r} ({store.describe()}) on {url}; docs at {url}/docs",
        err=True,
    )
    try:
        run_server(
            settings,
            host=host,
            port=port,
            embedder=embedder,
            store=store,
            log_level="warning" if quiet else "info",
        )
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal: done, not failed.
        click.echo("stopped", err=True)


main.add_command(probe_group)
main.add_command(snapshot_group)
