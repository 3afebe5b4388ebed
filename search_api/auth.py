"""The service's API key, checked in ASGI middleware before anything reads the request.

FastAPI parses a multipart body before a dependency runs, so a key checked as a dependency
would come after the upload. Here a keyless or wrong request is answered 401 from its headers
alone. The comparison is constant-time. ``OPEN_PATHS`` need no key: liveness and readiness
(which reveal nothing about the data), the API documentation, and the search page with its
assets.

An ``<img>`` cannot send a header, so the page's thumbnails carry the key in a cookie
(``KEY_COOKIE``, set by the page with ``SameSite=Strict``). The cookie is accepted only for
``GET /points/{id}/image``: it reads an image and changes nothing.
"""

from __future__ import annotations

import hmac
from urllib.parse import unquote

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from search_api.admission import is_image_read
from search_api.asgi_errors import send_error
from search_api.page import is_page_path

OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/redoc", "/openapi.json"})
HEADER = b"x-api-key"
AUTHENTICATE = (b"www-authenticate", b"X-API-Key")
KEY_COOKIE = "dinoseek_key"


class ApiKeyCheck:
    """ASGI middleware: 401 unless the request carries ``X-API-Key: key``."""

    def __init__(self, app: ASGIApp, *, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope["path"]) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        message = "missing or wrong X-API-Key header"
        await send_error(send, 401, "unauthorized", message, headers=[AUTHENTICATE])

    def _allowed(self, scope: Scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == HEADER), None)
        if given is None and is_image_read(scope["method"], scope["path"]):
            given = _cookie_key(scope)
        return hmac.compare_digest(given or b"", self.key)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or is_page_path(path)


def _cookie_key(scope: Scope) -> bytes | None:
    """The key in the page's cookie, if the request has one. Parsed by hand: one loosely
    formatted cookie of another app on the same host must not hide it (``SimpleCookie``
    gives up on the whole header)."""
    prefix = KEY_COOKIE.encode() + b"="
    for name, value in scope["headers"]:
        if name != b"cookie":
            continue
        for part in value.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                return unquote(part[len(prefix) :].decode("latin-1")).encode()
    return None


def has_key(given: str | None, key: SecretStr | None) -> bool:
    """Whether a request may see what the key protects: no key is set, or it sent the key
    (compared in constant time). For the open routes that answer both ways (``/ready``)."""
    if key is None:
        return True
    return hmac.compare_digest((given or "").encode(), key.get_secret_value().encode())
