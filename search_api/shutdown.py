"""Requests cut off at shutdown get 503, not uvicorn's bare 500.

On SIGINT or SIGTERM uvicorn stops accepting connections and gives the requests in flight
``DINOSEEK_SHUTDOWN_TIMEOUT_S``; then it cancels the tasks of those still running, and would
answer each one that has not begun its response with a plain-text 500. ``ShutdownCutoff``
catches that cancellation and answers 503 ``shutting_down`` with ``Retry-After`` and the usual
error body instead: the client can try again (another replica, or this one once restarted).
uvicorn cancels a request's task only then, so every cancellation that reaches it is a
request cut off by the shutdown. The app's shutdown then waits (``RequestsInFlight.settle``)
until those answers are sent before it closes the store and the process exits.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.asgi_errors import send_error
from search_api.errors import RETRY_AFTER_S

MESSAGE = "the service is shutting down; this request was cut off, try it again shortly"


class RequestsInFlight:
    """How many requests the app is answering (one event loop: a plain count)."""

    def __init__(self) -> None:
        self.count = 0

    async def settle(self, timeout_s: float) -> None:
        """Return once no request is being answered, or after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.count and loop.time() < deadline:
            await asyncio.sleep(0.01)


class ShutdownCutoff:
    """ASGI middleware: 503 for a request whose task is cancelled before it is answered."""

    def __init__(self, app: ASGIApp, *, in_flight: RequestsInFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_flight.count += 1
        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:
                raise  # half an answer: uvicorn closes the connection
            # Answered: the request's task ends here, as any answered request's does.
            await send_error(send, 503, "shutting_down", MESSAGE, retry_after_s=RETRY_AFTER_S)
        finally:
            self.in_flight.count -= 1
