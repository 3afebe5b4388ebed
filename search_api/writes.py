"""The write policy: a route that changes data (a label, a probe, and later points or
collections) always needs the API key.

A route is a write when it is declared with ``openapi_extra=WRITE`` (OpenAPI shows the mark
as ``x-dinoseek-write``); the set of write routes is read from the app's routes, so a new
write route gets the policy by being declared one. ``WritePolicy``, ASGI middleware, decides
from the method and the route alone, before any of the body is read:

- with a key configured (``DINOSEEK_API_KEY``), ``ApiKeyCheck`` has already refused a request
  without it, so a write that gets here has the key;
- without a key, a write is refused with 403, unless the server was started with
  ``--allow-writes``, which ``dinoseek serve`` accepts only on a loopback address; even then,
  only a client on a loopback address may write.

Every write is logged: its route, the client and the status it got.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.asgi_errors import send_error
from search_api.route_table import api_routes

log = logging.getLogger(__name__)

WRITE_MARK = "x-dinoseek-write"
WRITE: dict[str, Any] = {WRITE_MARK: True}  # the ``openapi_extra`` of a write route


class WriteRoutes:
    """The write routes among an app's routes (those declared with ``openapi_extra=WRITE``),
    in the routers it includes too."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self.routes = tuple(
            route for route in api_routes(routes) if (route.openapi_extra or {}).get(WRITE_MARK)
        )

    def matches(self, scope: Scope) -> bool:
        """Whether the request's method and path are those of a write route (a request the
        app gives a write route always is; one that another route takes first may be too,
        and is then held to the stricter rule)."""
        return any(route.matches(scope)[0] is Match.FULL for route in self.routes)

    def __len__(self) -> int:
        return len(self.routes)


class WritePolicy:
    """ASGI middleware: 403 for a write the server does not allow (see the module doc), and a
    log line for each write."""

    def __init__(
        self, app: ASGIApp, *, writes: WriteRoutes, key_set: bool, allow_writes: bool
    ) -> None:
        self.app = app
        self.writes = writes
        self.key_set = key_set
        self.allow_writes = allow_writes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.writes.matches(scope):
            await self.app(scope, receive, send)
            return
        client = _client_host(scope)
        where = f"{scope['method']} {scope['path']} from {client or 'an unknown client'}"
        refusal = self._refusal(client)
        if refusal is not None:
            log.warning("write refused: %s (%s)", where, refusal)
            await send_error(send, 403, "writes_not_allowed", refusal)
            return
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            log.info("write: %s answered %s", where, status or "nothing")

    def _refusal(self, client: str | None) -> str | None:
        """Why this write is refused (None: it is allowed)."""
        if self.key_set:
            return None  # ApiKeyCheck let it through: it has the key
        if not self.allow_writes:
            return (
                "writes need the API key: start the server with DINOSEEK_API_KEY set and send "
                "it in X-API-Key, or run `dinoseek serve --allow-writes` on a loopback address "
                "for a server only this machine can reach"
            )
        if client is None or not is_loopback_address(client):
            return "this server allows writes without a key from this machine only"
        return None


def _client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def is_loopback_address(address: str) -> bool:
    """Whether ``address`` is an IP address of this machine's loopback interface."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` listens on loopback addresses only (a name counts when every
    address it resolves to is loopback; 0.0.0.0 and :: are every interface)."""
    if is_loopback_address(host):
        return True
    try:
        ipaddress.ip_address(host)
        return False  # an address, and not a loopback one
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(is_loopback_address(str(entry[4][0])) for entry in found)
