"""Run the app with uvicorn (``dinoseek serve``, ``python -m search_api``).

The server's own limits: ``DINOSEEK_MAX_CONNECTIONS`` connections and requests in flight
(503 beyond), ``DINOSEEK_MAX_CLIENT_CONNECTIONS`` connections from one address (429 beyond),
``DINOSEEK_HEADER_TIMEOUT_S`` for a request head (``search_api.connections``),
5 s for an idle keep-alive connection, and ``DINOSEEK_SHUTDOWN_TIMEOUT_S`` (whole seconds) for
requests in flight at shutdown, after which they are cut off with 503 (``search_api.shutdown``)
and the store is closed anyway.
"""

from __future__ import annotations

import math

import uvicorn

from dinoseek.errors import ConfigError
from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from search_api.app import create_app
from search_api.connections import server_protocol
from search_api.extras import ServiceExtras
from search_api.writes import is_loopback_host

KEEP_ALIVE_S = 5
ALLOW_WRITES_LOOPBACK_ONLY = (
    "--allow-writes lets anyone who reaches the server change labels, probes, points and "
    "collections without a key, so it is refused with --host {host}: bind a loopback address "
    "(127.0.0.1, ::1), or set DINOSEEK_API_KEY instead (writes then need the key)"
)


def public_url(host: str, port: int) -> str:
    """The URL clients on this machine use (0.0.0.0 and :: mean every interface)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def server_config(
    runtime: Runtime,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    allow_writes: bool = False,
    extras: ServiceExtras | None = None,
) -> uvicorn.Config:
    """uvicorn's configuration for the app on ``runtime``, with the server's limits
    (``allow_writes``: writes without a key from this machine, on a loopback ``host`` only;
    ``extras``: work run beside the service, ``search_api.extras``)."""
    settings: Settings = runtime.settings
    if allow_writes and not is_loopback_host(host):
        raise ConfigError(ALLOW_WRITES_LOOPBACK_ONLY.format(host=host))
    return uvicorn.Config(
        create_app(settings, runtime=runtime, allow_writes=allow_writes, extras=extras),
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=False,
        access_log=False,
        http=server_protocol(
            header_timeout_s=settings.header_timeout_s,
            max_per_client=settings.max_client_connections,
        ),
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),  # whole seconds
    )


def run_server(
    runtime: Runtime,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    allow_writes: bool = False,
    extras: ServiceExtras | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn then runs the lifespan's shutdown, which closes the
    runtime (the store flushed, its locks released)."""
    config = server_config(
        runtime,
        host=host,
        port=port,
        log_level=log_level,
        allow_writes=allow_writes,
        extras=extras,
    )
    uvicorn.Server(config).run()
