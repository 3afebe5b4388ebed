"""HTTP connections: a deadline for their request headers, and a cap per client address.

uvicorn closes a keep-alive connection that stays idle after a response, but it waits for the
first request's headers (and for headers that trickle in a byte at a time) for as long as the
client likes: a few hundred such connections tie the server up. ``ServerProtocol`` is
uvicorn's h11 protocol with one timer more: from the moment a connection opens, and again
after each response, the client has ``header_timeout_s`` to send a complete request head;
otherwise the connection is closed. The body has its own deadline and minimum rate
(``search_api.admission``).

It also counts the open connections of each client address: past ``max_per_client``
(``DINOSEEK_MAX_CLIENT_CONNECTIONS``; 0: no cap), a new connection's requests are answered
429 ``too_many_connections`` and it is closed, so that one address cannot take the server's
connections (``DINOSEEK_MAX_CONNECTIONS``) from everyone else. Behind a proxy every client has
the proxy's address: turn the cap off there and let the proxy bound its clients.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from search_api.asgi_errors import send_error
from search_api.errors import RETRY_AFTER_S


class ClientConnections:
    """Open connections per client address, against a cap (0: none)."""

    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self.open: Counter[str] = Counter()

    def opened(self, host: str) -> bool:
        """Count a new connection from ``host``; whether it is within the cap."""
        self.open[host] += 1
        return not self.max_per_client or self.open[host] <= self.max_per_client

    def closed(self, host: str) -> None:
        """Count a connection from ``host`` as gone."""
        self.open[host] -= 1
        if self.open[host] <= 0:
            del self.open[host]

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of a connection beyond the cap: 429 and close."""
        message = (
            f"too many connections from {scope['client'][0] if scope.get('client') else 'you'} "
            f"(at most {self.max_per_client}, DINOSEEK_MAX_CLIENT_CONNECTIONS); close some "
            "and try again"
        )
        await send_error(send, 429, "too_many_connections", message, retry_after_s=RETRY_AFTER_S)


class ServerProtocol(H11Protocol):
    """``H11Protocol`` closing connections that do not send a request head in time, and
    refusing the requests of connections beyond the cap of their client address."""

    header_timeout_s = 10.0
    clients = ClientConnections(0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._served: object | None = None
        self._counted_as: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None:
            self._counted_as = self.client[0]
            if not self.clients.opened(self._counted_as):
                self.app = self.clients.refuse  # uvicorn serves each request with self.app
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted_as is not None:
            self.clients.closed(self._counted_as)
            self._counted_as = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._served:
            self._served = self.cycle  # a complete request head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()
        # The next request on this connection, unless its head was already there (pipelined):
        # uvicorn has then started it, inside the call above.
        if not self.transport.is_closing() and self.cycle is answered:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _too_slow(self) -> None:
        # Armed only while no request head is complete: nothing is being answered.
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_protocol(*, header_timeout_s: float, max_per_client: int) -> type[ServerProtocol]:
    """The protocol class for uvicorn's ``http`` option, with these limits (and a count of
    connections per address of its own)."""
    return type(
        "ServerProtocol",
        (ServerProtocol,),
        {"header_timeout_s": header_timeout_s, "clients": ClientConnections(max_per_client)},
    )
