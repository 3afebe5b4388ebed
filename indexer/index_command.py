"""``dinoseek index`` (also ``python -m indexer``): embed folders into a collection and keep
it a mirror of them."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from dinoseek.commandline import (
    EPILOG,
    EXIT_INTERRUPTED,
    FiniteFloat,
    batch_size_option,
    compile_option,
    configure_logging,
    graceful_stop,
    handle_errors,
    load_settings,
    model_loader,
    model_options,
    output_options,
    store_options,
    store_owner,
)
from dinoseek.errors import StoreLockedError
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.settings import default_of
from indexer.folder_options import FolderChoices, folder_options, index_options, watch_flags
from indexer.pipeline import IndexSummary, ModelOnDemand, index_folders
from indexer.ray_engine import RayEngine, RayOptions, import_ray
from indexer.watch import FolderWatcher, WatchOptions


@click.command(epilog=EPILOG)
@click.argument(
    "folders",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@folder_options
@batch_size_option
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
    "--quantization",
    type=click.Choice(["none", "int8"]),
    default=None,
    help="int8: search int8 copies of the vectors, held in memory, then rescore the best "
    "with the original vectors: a faster index build and search at the same recall (see "
    "bench/scale.py). none: the float vectors only. For a new collection "
    f"[default: DINOSEEK_QUANTIZATION, else {default_of('quantization')}].",
)
@click.option(
    "--hnsw-m",
    type=click.IntRange(4, 128),
    default=None,
    help="HNSW links per vector, for a new collection "
    f"[default: DINOSEEK_HNSW_M, else {default_of('hnsw_m')}].",
)
@click.option(
    "--hnsw-ef-construct",
    type=click.IntRange(4, 4096),
    default=None,
    help="HNSW build candidates, for a new collection [default: DINOSEEK_HNSW_EF_CONSTRUCT, "
    f"else {default_of('hnsw_ef_construct')}].",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine's processes. ray: decode tasks and embedding actors (one per "
    "GPU) on a Ray cluster; every node must see FOLDERS at the same path (the ray extra).",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    default=None,
    help="Ray cluster for --engine ray: HOST:6379, ray://HOST:10001, auto (any cluster on "
    "this machine) or local (a Ray instance started for this run) [default: RAY_ADDRESS, "
    "else the cluster `ray start` began on this machine, else local].",
)
@click.option(
    "--ray-actors",
    type=click.IntRange(min=1),
    default=None,
    help="Embedding actors with --engine ray [default: one per GPU of the cluster, else 1].",
)
@click.option(
    "--regions",
    is_flag=True,
    help="Also store region vectors, for search by region (`dinoseek search --regions`): "
    "29 per image (patch tokens pooled over 2x2, 3x3 and 4x4 grids), from the same forward pass. "
    "An existing collection gets them for every image it holds (each read and embedded "
    "once more); a collection with regions keeps making them.",
)
@click.option(
    "--log-every",
    type=FiniteFloat(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Progress log interval when stderr is not a terminal.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="After indexing, keep watching FOLDERS and index what is added, changed, moved or "
    "deleted, until Ctrl-C or SIGTERM (a file still being written waits until it is "
    "complete; a burst of files is one pass).",
)
@watch_flags
@compile_option
@model_options
@store_options
@output_options
@handle_errors
def index(
    folders: tuple[Path, ...],
    choices: FolderChoices,
    batch_size: int | None,
    failures_report: Path | None,
    no_optimize: bool,
    gpu_decode: bool,
    quantization: str | None,
    hnsw_m: int | None,
    hnsw_ef_construct: int | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
    regions: bool,
    log_every: float,
    watch: bool,
    watching: WatchOptions,
    as_json: bool,
    quiet: bool,
    **flags: Any,
) -> None:
    """Embed the images of FOLDERS into the collection, and keep it a mirror of them.

    New and changed files are embedded; unchanged ones (same path, size and mtime) are skipped
    without being read; identical files become one point listing every path; files that
    vanished are removed. Bad files are reported and never stop the run. Ctrl-C stops cleanly;
    running the command again resumes where it stopped.

    With --watch the command then keeps running: each burst of changes in FOLDERS (files
    added, changed, moved, deleted) becomes one more such pass once it has settled, until
    Ctrl-C or SIGTERM. The first pass's summary is printed when it is done; each later pass
    logs one line to stderr, and its failures go to the same report.
    """
    configure_logging(quiet=quiet)
    choices.check()
    if watching.poll and not watch:
        raise click.UsageError("--poll chooses how --watch finds changes: give --watch too")
    if watch and engine == "ray":
        raise click.UsageError("--watch indexes with the local engine: leave out --engine ray")
    if engine != "ray" and (ray_address or ray_actors):
        raise click.UsageError("--ray-address and --ray-actors need --engine ray")
    if engine == "ray":
        import_ray()  # before the model loads: a missing extra is said at once
    settings = load_settings(
        batch_size=batch_size,
        quantization=quantization,
        hnsw_m=hnsw_m,
        hnsw_ef_construct=hnsw_ef_construct,
        **flags,
    )
    try:
        runtime = Runtime.open(
            settings,
            owner=store_owner("dinoseek index"),
            collection="optional",
            model=False,  # loaded once a file needs it: see ModelOnDemand
            policy=ModelPolicy(purpose="index", decode_workers=choices.workers),
        )
    except StoreLockedError as error:
        raise StoreLockedError(_index_locked_message(error), holder=error.holder) from None
    given = {
        "--quantization": quantization,
        "--hnsw-m": hnsw_m,
        "--hnsw-ef-construct": hnsw_ef_construct,
    }
    index_flags = [flag for flag, value in given.items() if value is not None]
    with runtime:
        existed = settings.collection in runtime.store.list_collections()
        ray = None
        if engine == "ray":
            ray = RayEngine(RayOptions(ray_address, ray_actors), model_loader(), settings)
        options = index_options(
            settings,
            folders,
            choices,
            failures_report=failures_report,
            optimize=not no_optimize,
            progress="off" if quiet else "auto",
            progress_interval_s=log_every,
            gpu_decode=gpu_decode,
            ray=ray,
            regions=regions,
        )
        if existed and _names_another_model(runtime):
            runtime.load_model(model_loader())  # refused now, not once a file needs it
        model = ModelOnDemand(
            model_id=runtime.model_id,
            collection_space=(
                runtime.store.collection_space(settings.collection) if existed else None
            ),
            load=functools.partial(runtime.load_model, model_loader()),
        )
        if existed and index_flags:
            flags_note = (
                f"{' and '.join(index_flags)} apply to a new collection; "
                f"{settings.collection!r} keeps the index it was created with (index into a "
                "new collection to change it)"
            )
        else:
            flags_note = None
        show = functools.partial(_show_summary, as_json=as_json, quiet=quiet, note=flags_note)
        with graceful_stop() as stop:
            if watch:
                watcher = FolderWatcher(model, runtime.store, options, watching)
                watcher.on_first_pass = show
                watcher.run(stop)
                summary = watcher.first_summary
            else:
                summary = index_folders(model, runtime.store, options, stop=stop)
                show(summary)
    if watch and summary is not None and not summary.interrupted:
        click.echo("stopped watching", err=True)  # Ctrl-C or SIGTERM: how a watch ends
        return
    if summary is None or summary.interrupted:
        sys.exit(EXIT_INTERRUPTED)


def _show_summary(summary: IndexSummary, *, as_json: bool, quiet: bool, note: str | None) -> None:
    """Print a run's summary (with ``--watch``, the first pass's, as soon as it is done)."""
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        click.echo(render_summary(summary, brief=quiet))
    if note is not None:
        summary.warnings.append(note)
    for warning in summary.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def _names_another_model(runtime: Runtime) -> bool:
    """Whether the model asked for is not the one the collection was built with, by id (the
    full check, the model's fingerprint, runs when it loads)."""
    return runtime.model_id != runtime.store.collection_space(runtime.collection).model_id


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


def render_summary(summary: IndexSummary, *, brief: bool = False) -> str:
    """The human summary of an index run; ``brief`` (``--quiet``): its first line, and the
    failures when there were any."""
    state = "stopped early" if summary.interrupted else "done"
    headline = (
        f"{state}: {summary.scanned:,} files scanned in {summary.elapsed_s:.1f} s, "
        f"collection {summary.collection!r} ({summary.store}) holds {summary.points:,} images"
    )
    if brief and not summary.failed:
        return headline
    lines = [
        headline,
        f"  embedded    {summary.embedded:>8,}   "
        f"({summary.images_per_s:.1f} img/s, {summary.model})",
        f"  unchanged   {summary.unchanged:>8,}",
        f"  duplicates  {summary.duplicates:>8,}   (same content as another file: one point)",
        f"  removed     {summary.removed:>8,}   (vanished from disk)",
    ]
    if summary.relabelled:
        lines.append(f"  relabelled  {summary.relabelled:>8,}")
    if summary.labels_kept:
        lines.append(
            f"  labels kept {summary.labels_kept:>8,}   (set in the page; --relabel replaces them)"
        )
    if summary.regions_added or summary.regions_missing:
        lines.append(
            f"  regions     {summary.regions_added:>8,}   (stored images given region vectors"
            + (
                f"; {summary.regions_missing:,} could not be read again)"
                if summary.regions_missing
                else ")"
            )
        )
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
