"""The search page: ``GET /`` and its assets under ``/ui/``, shipped inside the package.

The page is plain HTML, CSS and JavaScript (no build step, nothing from a CDN). It and its
assets need no API key and reveal nothing about the data; everything it shows comes from the
API, with the key the user typed. ``SecurityHeaders`` gives every response but the API docs
(which load their scripts from a CDN) a Content-Security-Policy that allows only this origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PREFIX = "/ui"
# blob: is the page's own previews of the files the user picked (URL.createObjectURL).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

page_routes = APIRouter(include_in_schema=False)


@page_routes.api_route("/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    """The search page."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def assets() -> StaticFiles:
    """The page's scripts, styles and icons (mounted at ``ASSETS_PREFIX``)."""
    return StaticFiles(directory=STATIC_DIR)


def is_page_path(path: str) -> bool:
    """The page and its assets: open without a key."""
    return path == "/" or path.startswith(ASSETS_PREFIX + "/")


class SecurityHeaders:
    """ASGI middleware: the Content-Security-Policy and friends on every response but the
    API docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in DOCS_PATHS:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
