"""Admission before work, in two stages, and a deadline for what was admitted.

ASGI middleware on the routes that decode images (those that run the model, the matches and
the thumbnails), as each declares with ``openapi_extra=ADMITTED``, and on the write routes
(``search_api.writes``: labels, training). A request's upload is read first, here, and only a
request whose body is in may take a place in the model's queue: a client trickling its body
holds no place there.

- **Receiving.** Uploads still arriving may hold at most ``max_reading_bytes`` together (by
  Content-Length, or the upload limit when a POST comes without one); beyond, 503 with
  ``Retry-After`` before a byte of the body is read. A body must keep up a minimum rate
  (``search_api.uploads``), else 408.
- **The model's queue.** At most ``limit`` requests whose body is in, holding at most
  ``max_bytes`` of uploads, are decoded, queued for the model or searched at once; beyond,
  503 with ``Retry-After``, checked from the headers before the body is read and again once
  it is in.

An admitted request has ``timeout_s`` for everything: receiving its upload, decoding, waiting
for the model and the store; past it, 503 with ``Retry-After``. Memory held by uploads is
therefore at most ``max_reading_bytes + max_bytes`` (plus one upload when a single one is
larger than a budget: a request alone in a stage is always let in). Other routes pass freely.
Connections per client address are bounded by the server (``search_api.connections``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.asgi_errors import send_error
from search_api.errors import RETRY_AFTER_S
from search_api.limits import declared_length
from search_api.route_table import api_routes
from search_api.uploads import UploadTooSlowError, read_body, replay
from search_api.writes import WriteRoutes

# A route that decodes images declares it (``openapi_extra=ADMITTED``): admission guards
# exactly the routes that say so, read from the app's routes, and the schema shows the mark.
ADMITTED_KEY = "x-dinoseek-admitted"
ADMITTED: dict[str, Any] = {ADMITTED_KEY: True}


class AdmittedRoutes:
    """The routes among an app's routes that are declared with ``openapi_extra=ADMITTED``."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self.routes = tuple(
            route for route in api_routes(routes) if (route.openapi_extra or {}).get(ADMITTED_KEY)
        )

    def matches(self, scope: Scope) -> bool:
        """Whether the request is for one of them (its path and method)."""
        return any(route.matches(scope)[0] is Match.FULL for route in self.routes)


def is_image_read(method: str, path: str) -> bool:
    """``GET /points/{id}/image``: a point's file or thumbnail."""
    return method == "GET" and path.startswith("/points/") and path.endswith("/image")


class Admission:
    """ASGI middleware: 503 for a model request beyond the limits, or past its deadline; 408
    for an upload slower than the minimum rate."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        admitted: AdmittedRoutes,
        limit: int,
        max_bytes: int,
        max_reading_bytes: int,
        unknown_length_bytes: int,
        min_upload_rate: float,
        timeout_s: float,
        writes: WriteRoutes | None = None,
    ) -> None:
        """``unknown_length_bytes`` is what a body without Content-Length is counted as while
        it arrives (the upload limit: it cannot be more); ``writes`` are admitted as the model
        routes are."""
        self.app = app
        self.admitted = admitted
        self.limit = max(1, limit)
        self.max_bytes = max_bytes
        self.max_reading_bytes = max_reading_bytes
        self.unknown_length_bytes = unknown_length_bytes
        self.min_upload_rate = min_upload_rate
        self.timeout_s = timeout_s
        self.writes = writes
        # One event loop: no lock needed.
        self.in_flight = 0  # past their upload
        self.bytes_in_flight = 0
        self.receiving = 0  # uploads still arriving
        self.bytes_receiving = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._admits(scope):
            await self.app(scope, receive, send)
            return
        weight = declared_length(scope)
        if weight is None:
            weight = self.unknown_length_bytes if scope["method"] == "POST" else 0
        if self._queue_is_full(weight):
            await _overloaded(send, self._busy_message())
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            admitted = self._admit(scope, receive, tracking_send, weight)
            await asyncio.wait_for(admitted, self.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            if not started:
                message = (
                    f"the query took longer than {self.timeout_s:g} s "
                    "(DINOSEEK_REQUEST_TIMEOUT_S), upload included; try again shortly"
                )
                await send_error(send, 503, "timeout", message, retry_after_s=RETRY_AFTER_S)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, weight: int) -> None:
        """Receive the upload, then take a place in the model's queue and run the app."""
        if scope["method"] == "POST":
            chunks = await self._receive(receive, send, weight)
            if chunks is None:
                return
            weight = sum(len(chunk) for chunk in chunks)
            if self._queue_is_full(weight):
                await _overloaded(send, self._busy_message())
                return
            receive = replay(chunks, receive)
        self.in_flight += 1
        self.bytes_in_flight += weight
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.bytes_in_flight -= weight

    def _admits(self, scope: Scope) -> bool:
        if self.admitted.matches(scope):
            return True
        return self.writes is not None and self.writes.matches(scope)

    async def _receive(self, receive: Receive, send: Send, weight: int) -> deque[bytes] | None:
        """The upload, read within the budget of uploads still arriving; None once the
        request is answered instead (over the budget, too slow, or the client gone)."""
        if self.receiving and self.bytes_receiving + weight > self.max_reading_bytes:
            await _overloaded(send, self._receiving_message())
            return None
        self.receiving += 1
        self.bytes_receiving += weight
        try:
            chunks = await read_body(receive, min_rate=self.min_upload_rate)
        except UploadTooSlowError as error:
            await send_error(send, 408, "upload_too_slow", str(error))
            return None
        finally:
            self.receiving -= 1
            self.bytes_receiving -= weight
        if chunks is None:  # nobody reads this answer; the metrics count it as a 400
            message = "the connection closed before the upload ended"
            await send_error(send, 400, "upload_incomplete", message)
        return chunks

    def _queue_is_full(self, weight: int) -> bool:
        return bool(self.in_flight) and (
            self.in_flight >= self.limit or self.bytes_in_flight + weight > self.max_bytes
        )

    def _busy_message(self) -> str:
        return (
            f"the service is busy ({self.in_flight} queries in flight, "
            f"{self.bytes_in_flight:,} bytes of uploads; limits DINOSEEK_MAX_QUEUE and "
            "DINOSEEK_MAX_INFLIGHT_BYTES); try again shortly"
        )

    def _receiving_message(self) -> str:
        return (
            f"the service is receiving {self.receiving} uploads of up to "
            f"{self.bytes_receiving:,} bytes (limit DINOSEEK_MAX_READING_BYTES); try again shortly"
        )


async def _overloaded(send: Send, message: str) -> None:
    await send_error(send, 503, "overloaded", message, retry_after_s=RETRY_AFTER_S)
