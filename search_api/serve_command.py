"""``dinoseek serve`` (also ``python -m search_api``): the HTTP API on uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dinoseek.commandline import (
    EPILOG,
    compile_option,
    configure_logging,
    handle_errors,
    load_settings,
    model_loader,
    model_options,
    store_options,
)
from dinoseek.errors import ConfigError
from dinoseek.runtime import ModelPolicy, Runtime
from search_api.extras import ServiceExtras
from search_api.uvicorn_server import ALLOW_WRITES_LOOPBACK_ONLY, public_url, run_server
from search_api.writes import is_loopback_host


@click.command(epilog=EPILOG)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind (0.0.0.0 for every interface, e.g. in a container).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--allow-writes",
    is_flag=True,
    help="Without DINOSEEK_API_KEY, let clients on this machine label and train without a key "
    "(refused unless --host is a loopback address). With a key, writes need the key.",
)
@compile_option
@model_options
@store_options
@click.option("--quiet", "-q", is_flag=True, help="Log warnings and errors only.")
@handle_errors
def serve(host: str, port: int, allow_writes: bool, quiet: bool, **flags: Any) -> None:
    """Serve the search page at / and the HTTP API: /search, /search/batch,
    /points/{id}/similar, /clusters, /embed, /docs.

    Reads are open unless DINOSEEK_API_KEY is set. Writes (labels, training a probe) always
    need the key, or --allow-writes with a loopback --host (this machine only).

    Loads the model once, opens the store and checks that the collection was built with the
    same model, then warms the model up before it listens. With the embedded store the server
    owns the collection while it runs: `dinoseek search` and `dinoseek info` then go through
    it, and `dinoseek index` asks you to stop it first (or to use a Qdrant server, which both
    can share).
    """
    start_serving(host=host, port=port, allow_writes=allow_writes, quiet=quiet, flags=flags)


def start_serving(
    *,
    host: str,
    port: int,
    allow_writes: bool,
    quiet: bool,
    flags: dict[str, Any],
    extras_for: Callable[[Runtime], ServiceExtras] | None = None,
) -> None:
    """What ``serve`` does with its options; ``extras_for`` makes, from the open runtime,
    the work the command group runs beside the service (``dinoseek serve --watch``)."""
    configure_logging(quiet=quiet)
    settings = load_settings(**flags)
    if allow_writes and not is_loopback_host(host):
        raise ConfigError(ALLOW_WRITES_LOOPBACK_ONLY.format(host=host))
    url = public_url(host, port)
    runtime = Runtime.open(
        settings,
        owner={"command": "dinoseek serve", "url": url},
        collection="optional",
        policy=ModelPolicy(purpose="serve"),
        loader=model_loader(),
    )
    try:
        extras = extras_for(runtime) if extras_for is not None else None
    except BaseException:
        runtime.close()
        raise
    click.echo(
        f"serving {settings.collection!r} ({runtime.store.describe()}) on {url}: "
        f"the search page at {url}/, the API docs at {url}/docs",
        err=True,
    )
    try:
        run_server(
            runtime,
            host=host,
            port=port,
            log_level="warning" if quiet else "info",
            allow_writes=allow_writes,
            extras=extras,
        )
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal: done, not failed.
        click.echo("stopped", err=True)
