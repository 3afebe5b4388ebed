"""HTTP connections with a deadline for their request headers.

uvicorn closes a keep-alive connection that stays idle after a response, but it waits for the
first request's headers (and for headers that trickle in a byte at a time) for as long as the
client likes: a few hundred such connections tie the server up. ``HeaderDeadlineProtocol`` is
uvicorn's h11 protocol with one timer more: from the moment a connection opens, and again
after each response, the client has ``header_timeout_s`` to send a complete request head;
otherwise the connection is closed. The body has its own deadline (``search_api.admission``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """``H11Protocol`` closing connections that do not send a request head in time."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._served: object | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
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


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``http`` option, with this deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": seconds})
