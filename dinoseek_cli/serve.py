"""``dinoseek serve``: the service's own command, and with ``--watch FOLDER`` the indexer's
folder watcher beside it, in one process on one store handle (an embedded store opens in one
process only). The command group composes the two; neither app imports the other."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import click

from dinoseek.commandline import EPILOG, handle_errors
from dinoseek.runtime import Runtime
from dinoseek.watch_status import WatchStatus
from indexer.folder_options import FolderChoices, folder_options, index_options, watch_flags
from indexer.watch import FolderWatcher, WatchOptions
from search_api.extras import ServiceExtras
from search_api.serve_command import serve as service_serve
from search_api.serve_command import start_serving

SERVICE_OPTIONS = ("host", "port", "allow_writes", "quiet")

WATCH_HELP = """

With --watch FOLDER (repeatable), the server also indexes FOLDER the way `dinoseek index
FOLDER` does (the folder flags below apply) and keeps the collection in step with it while it
serves: files added, changed, moved or deleted are searchable, or gone, within seconds of the
change settling; queries are answered meanwhile. /ready and the page show the collection's
size and what the watcher is doing (idle, N pending, indexing, the last error).
"""


@click.command(
    name="serve",
    epilog=EPILOG,
    help=inspect.cleandoc(service_serve.help or "") + WATCH_HELP,
    short_help="Serve the search page and the HTTP API (--watch: and index FOLDERs).",
)
@click.option(
    "--watch",
    "watch_folders",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="FOLDER",
    help="Index FOLDER now and keep the collection in step with it while serving; repeatable.",
)
@folder_options
@watch_flags
@handle_errors
def serve(
    watch_folders: tuple[Path, ...],
    choices: FolderChoices,
    watching: WatchOptions,
    **flags: Any,
) -> None:
    """The service, with a folder watcher when asked for."""
    service = {name: flags.pop(name) for name in SERVICE_OPTIONS}
    if not watch_folders:
        if choices.given() or watching.poll:
            raise click.UsageError(
                "the folder flags (--labels-from-folders, --poll...) need --watch FOLDER"
            )
        start_serving(**service, flags=flags)
        return
    choices.check()
    labels = choices.labels()  # a bad CSV is said before the model loads

    def watcher_beside(runtime: Runtime) -> ServiceExtras:
        options = index_options(
            runtime.settings, watch_folders, choices, labels=labels, progress="log"
        )
        model = runtime.require_embedder()
        status = WatchStatus(tuple(str(root) for root in options.roots), "events")
        watcher = FolderWatcher(model, runtime.store, options, watching, status)
        return ServiceExtras(companions=(watcher,), watch=status)

    start_serving(**service, flags=flags, extras_for=watcher_beside)


serve.params[:0] = service_serve.params  # the service's options first, as in its own command
