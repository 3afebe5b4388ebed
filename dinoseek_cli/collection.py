"""``dinoseek collection``: delete or rename a collection, with everything that goes with it
(``dinoseek.collection_admin``, which ``DELETE /collections/{name}`` and ``POST
/collections/{name}/rename`` use too): its points and probes, its saved catalog and failures
report, and on deletion the images added to it over HTTP that no other collection lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dinoseek.collection_admin import delete_collection, rename_collection
from dinoseek.commandline import (
    EPILOG,
    configure_logging,
    handle_errors,
    load_settings,
    output_options,
    store_location_options,
    store_owner,
)
from dinoseek.errors import StoreLockedError
from dinoseek.runtime import Runtime
from dinoseek.settings import Settings, validate_collection_name
from dinoseek.store import CollectionRename
from dinoseek.uploads import lookup_releasing


@click.group()
def collection() -> None:
    """Delete or rename a collection, with its probes, saved catalog and failures report.

    \b
    dinoseek collection delete NAME            # asks first (--yes does not)
    dinoseek collection rename OLD NEW

    With the embedded store, a collection that `dinoseek serve` (or any other process) holds
    is refused with exit code 3: stop that process first. On a Qdrant server, which cannot
    rename a collection, rename copies the points and probes to NEW, then deletes OLD.
    """


@collection.command(epilog=EPILOG)
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@store_location_options
@output_options
@handle_errors
def delete(name: str, yes: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Delete the collection NAME: its points, probes, saved catalog and failures report,
    and the images added to it over HTTP (POST /points) that no other collection lists.

    Asks first, unless --yes. Refused (exit 3) while another process, such as `dinoseek
    serve`, holds a collection of the embedded store. A service using a collection on a
    Qdrant server answers 404 for it afterwards.
    """
    configure_logging(quiet=quiet)
    settings = _settings(name, flags)
    with _held_elsewhere(name, "delete"), _runtime(settings, "delete") as runtime:
        store = runtime.store
        info = store.collection_info(name)  # refused here while another process holds it
        probes = len(store.probes.list(name))
        where = store.describe()
        if not yes:
            click.confirm(
                f"Delete collection {name!r} ({_contents(info.points, probes)}) from the "
                f"{where}? This cannot be undone",
                abort=True,
                err=True,
            )
        deleted = delete_collection(store, settings.data_dir, name, lookup_releasing(store))
    removed = deleted.files_removed
    if as_json:
        document = {"action": "delete", "collection": name, "store": where}
        click.echo(json.dumps({**document, "points": info.points, "probes": probes,
                               "files_removed": removed,
                               "uploads_removed": deleted.uploads_removed}))  # fmt: skip
        return
    added = len(deleted.uploads_removed)
    removed = [*removed, *([f"{added} added image{'' if added == 1 else 's'}"] if added else [])]
    also = f"; removed {', '.join(removed)}" if removed else ""
    click.echo(
        f"deleted collection {name!r} ({_contents(info.points, probes)}) from the {where}{also}"
    )


@collection.command(epilog=EPILOG)
@click.argument("name")
@click.argument("new_name", metavar="NEW")
@store_location_options
@output_options
@handle_errors
def rename(name: str, new_name: str, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Rename the collection NAME to NEW, with its probes, saved catalog and failures report.

    \b
    The embedded store moves the collection's directory, whole, in one rename; it is refused
    (exit 3) while another process, such as `dinoseek serve`, holds the collection.
    A Qdrant server cannot rename a collection: NEW is created as a copy (vectors and
    payloads as stored, nothing is embedded again) with NAME's probes, then NAME is deleted.
    Stop whatever writes to NAME meanwhile. A service started on NAME must be started on NEW.
    """
    configure_logging(quiet=quiet)
    settings = _settings(name, flags)
    try:
        validate_collection_name(new_name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with _held_elsewhere(name, "rename"), _runtime(settings, "rename") as runtime:
        done, moved = rename_collection(runtime.store, settings.data_dir, name, new_name)
        where = runtime.store.describe()
    if as_json:
        document = {"action": "rename", "collection": name, "new_name": new_name}
        click.echo(json.dumps({**document, "store": where, "points": done.points,
                               "probes": done.probes, "method": done.method,
                               "files_moved": [{"from": str(old), "to": str(new)}
                                               for old, new in moved]}))  # fmt: skip
        return
    click.echo(render_rename(done, where, moved))


def render_rename(done: CollectionRename, where: str, moved: list[tuple[Path, Path]]) -> str:
    """What ``rename`` did, in words."""
    contents = _contents(done.points, done.probes)
    if done.method == "moved":
        how = f"in the {where}: its directory moved ({contents})"
    else:
        how = (
            f"on the {where}: {contents} copied to {done.new_name!r} (Qdrant cannot rename a "
            f"collection), then {done.name!r} deleted"
        )
    files = ", ".join(str(new) for _, new in moved)
    also = f"; its files follow: {files}" if moved else ""
    return f"renamed collection {done.name!r} to {done.new_name!r} {how}{also}"


def _settings(name: str, flags: dict[str, Any]) -> Settings:
    return load_settings(collection=name, **flags)  # the name is checked here


def _runtime(settings: Settings, action: str) -> Runtime:
    """The store alone: the command deletes or renames the collection itself."""
    owner = store_owner(f"dinoseek collection {action}")
    return Runtime.open(settings, owner=owner, collection="none", model=False)


@contextmanager
def _held_elsewhere(name: str, action: str) -> Iterator[None]:
    """Say what to do when another process holds the embedded collection."""
    try:
        yield
    except StoreLockedError as error:
        holder = error.holder
        if not holder:  # not a collection held by another process
            raise
        who = f"process {holder.get('pid', '?')} ({holder.get('command', 'unknown command')})"
        if holder.get("url"):
            who += f", serving at {holder['url']}"
        raise StoreLockedError(
            f"collection {name!r} is in use by {who}; stop it first (Ctrl-C or SIGTERM), "
            f"then {action} the collection",
            holder=holder,
        ) from None


def _contents(points: int, probes: int) -> str:
    return (
        f"{points:,} point{'' if points == 1 else 's'}, {probes} probe{'' if probes == 1 else 's'}"
    )
