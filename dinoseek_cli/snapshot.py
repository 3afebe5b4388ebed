"""``dinoseek snapshot``: back up a collection to one file, and restore it.

A snapshot holds the collection's vectors and payloads, its embedding space (model, size,
preprocessing) and its probes, in one archive (format: ``dinoseek.store.archive``). It is
made and restored by the store in use: the embedded store (``--data-dir``) or a Qdrant server
(``--qdrant-url``); a snapshot of one kind is restored into the same kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dinoseek.commandline import (
    configure_logging,
    format_bytes,
    handle_errors,
    load_settings,
    output_options,
    store_options,
    store_owner,
)
from dinoseek.errors import StoreLockedError
from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.store import SnapshotInfo
from dinoseek.store.archive import default_snapshot_name
from dinoseek.store.archive_read import read_manifest

LOCKED_REMEDY = (
    "A snapshot needs the collection to itself: stop that process first (Ctrl-C or SIGTERM "
    "for `dinoseek serve`), or use a Qdrant server (DINOSEEK_QDRANT_URL), which can be "
    "backed up while it serves"
)


@click.group()
def snapshot() -> None:
    """Back up a collection to one file, and restore it.

    \b
    dinoseek snapshot create                  # ./images-YYYYmmdd-HHMMSS.dinoseek-snapshot.tar.gz
    dinoseek snapshot create /backups         # the same name, in /backups
    dinoseek snapshot restore FILE            # as the collection it was taken of
    dinoseek snapshot restore FILE -c copy    # under another name
    dinoseek snapshot restore FILE --replace  # overwrite an existing collection

    A snapshot holds the vectors, payloads, embedding space and probes of one collection. With
    the embedded store, stop `dinoseek serve` first (it owns the collection).
    """


@snapshot.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@store_options
@output_options
@handle_errors
def create(path: Path | None, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Write a snapshot of the collection to PATH.

    PATH defaults to ./COLLECTION-YYYYmmdd-HHMMSS.dinoseek-snapshot.tar.gz; a directory gets
    that name inside it. An existing file is never overwritten.
    """
    configure_logging(quiet=quiet)
    settings = load_settings(**flags)
    target = snapshot_path(path, settings.collection)
    with _locked_remedy(), _runtime(settings, "create") as runtime:
        info = runtime.store.snapshots.create(settings.collection, target)
        where = runtime.store.describe()
    if as_json:
        click.echo(json.dumps({"action": "create", "store": where, **info.to_dict()}))
        return
    click.echo(
        f"snapshot of {info.collection!r} written to {info.path}: {_contents(info)}, "
        f"{format_bytes(info.size_bytes)} ({where})"
    )


@snapshot.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--replace", is_flag=True, help="Overwrite the collection if it exists (default: refuse)."
)
@store_options
@output_options
@handle_errors
def restore(path: Path, replace: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Restore a collection from the snapshot PATH.

    The collection gets the name it had in the snapshot, unless --collection (or
    DINOSEEK_COLLECTION) names another. An existing collection is refused unless --replace;
    with --replace it is swapped for the snapshot's only once the snapshot has been read and
    checked in full.
    """
    configure_logging(quiet=quiet)
    settings = load_settings(**flags)
    explicit = "collection" in settings.model_fields_set
    collection = restore_target(path, settings.collection, explicit)
    with _locked_remedy(), _runtime(settings, "restore") as runtime:
        info = runtime.store.snapshots.restore(
            collection, path, replace=replace, max_bytes=settings.max_snapshot_bytes
        )
        where = runtime.store.describe()
    if as_json:
        click.echo(json.dumps({"action": "restore", "store": where, **info.to_dict()}))
        return
    renamed = ""
    if info.source_collection != info.collection:
        renamed = f" (was {info.source_collection!r})"
    click.echo(
        f"restored {info.collection!r}{renamed} from {info.path}: {_contents(info)}, "
        f"taken {info.created_at} ({where})"
    )


def _runtime(settings: Settings, action: str) -> Runtime:
    """The store alone: a snapshot takes (and releases) its collection itself."""
    owner = store_owner(f"dinoseek snapshot {action}")
    return Runtime.open(settings, owner=owner, collection="none", model=False)


def snapshot_path(path: Path | None, collection: str) -> Path:
    """Where ``create`` writes: PATH, or the default name in PATH (a directory) or here."""
    name = default_snapshot_name(collection)
    if path is None:
        return Path(name)
    return path / name if path.is_dir() else path


def restore_target(path: Path, collection: str, explicit: bool) -> str:
    """The collection to restore into: the one given explicitly, else the snapshot's own."""
    return collection if explicit else read_manifest(path).collection


def _contents(info: SnapshotInfo) -> str:
    probes = len(info.probes)
    return f"{info.points:,} points, {probes} probe{'' if probes == 1 else 's'}"


@contextmanager
def _locked_remedy() -> Iterator[None]:
    """Add what to do to the message of a collection held by another process."""
    try:
        yield
    except StoreLockedError as error:
        if not error.holder:  # not a collection held by another process
            raise
        raise StoreLockedError(f"{error.message}. {LOCKED_REMEDY}", holder=error.holder) from None
