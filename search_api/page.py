"""The search page (``GET /``) and the API docs (``GET /docs``, Swagger UI, and
``GET /redoc``), with their assets under ``/ui/``, all shipped inside the installed packages.

The page is plain HTML, CSS and JavaScript (no build step, nothing from a CDN). The docs'
Swagger UI and ReDoc come from the ``fastapi-offline`` package's copy (``/ui/docs/``), started
by files of ours rather than inline scripts, so they work offline. These need no API key and
reveal nothing about the data; everything they show comes from the API, with the key the user
typed. ``SecurityHeaders`` gives every response the same Content-Security-Policy, which allows
only this origin, and the same companions.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PREFIX = "/ui"
DOCS_ASSETS_PREFIX = ASSETS_PREFIX + "/docs"
# An empty <style> element, by its hash: ReDoc's styled-components creates one and fills it
# through the CSSOM (which the policy does not govern); any inline style with content stays
# refused.
EMPTY_STYLE_HASH = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
# blob: is the page's own previews of the files the user picked (URL.createObjectURL); data:
# the icons inside Swagger UI's and ReDoc's styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
    f"style-src 'self' {EMPTY_STYLE_HASH}; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
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


@page_routes.api_route("/docs", methods=["GET", "HEAD"])
async def swagger_ui() -> FileResponse:
    """The API docs: Swagger UI on ``/openapi.json``."""
    return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})


@page_routes.api_route("/redoc", methods=["GET", "HEAD"])
async def redoc() -> FileResponse:
    """The API reference: ReDoc on ``/openapi.json``."""
    return FileResponse(STATIC_DIR / "redoc.html", headers={"Cache-Control": "no-cache"})


def assets() -> StaticFiles:
    """The page's scripts, styles and icons (mounted at ``ASSETS_PREFIX``)."""
    return StaticFiles(directory=STATIC_DIR)


def docs_assets() -> StaticFiles:
    """Swagger UI's and ReDoc's scripts and styles, as the ``fastapi-offline`` package ships
    them (mounted at ``DOCS_ASSETS_PREFIX``, before ``ASSETS_PREFIX``)."""
    return StaticFiles(directory=str(files("fastapi_offline") / "static"))


def is_page_path(path: str) -> bool:
    """The page and its assets: open without a key."""
    return path == "/" or path.startswith(ASSETS_PREFIX + "/")


class SecurityHeaders:
    """ASGI middleware: the Content-Security-Policy and friends on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
