"""Run the app with uvicorn (``dinoseek serve``, ``python -m search_api``)."""

from __future__ import annotations

import uvicorn

from dinoseek.runtime import Runtime
from search_api.app import create_app


def public_url(host: str, port: int) -> str:
    """The URL clients on this machine use (0.0.0.0 and :: mean every interface)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def run_server(runtime: Runtime, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; uvicorn then runs the lifespan's shutdown, which closes the
    runtime (the store flushed, its locks released)."""
    app = create_app(runtime.settings, runtime=runtime)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, proxy_headers=False, access_log=False
    )
    uvicorn.Server(config).run()
