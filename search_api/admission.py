"""Admission before work, and a deadline for what was admitted.

ASGI middleware on the routes that decode images: those that run the model, and the
thumbnails. A request is admitted only while fewer than ``limit`` are in flight and their
uploads (by Content-Length, or the upload limit when a POST comes without one) stay under
``max_bytes``; otherwise it is answered 503 with
``Retry-After`` before a byte of its body is read, decoded or queued, so a refused client costs
the server almost nothing. An admitted request has ``timeout_s`` for everything: receiving its
upload (a client trickling its body is cut off), decoding, waiting for the model and the
store; past it, 503 with ``Retry-After``. Memory held by uploads is therefore at most
``max_bytes`` (plus one upload when a single one is larger). Other routes pass freely.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.limits import declared_length

# The routes that run the model: (method, path).
MODEL_ROUTES = frozenset(
    {
        ("POST", "/search"),
        ("POST", "/search/batch"),
        ("POST", "/embed"),
        ("POST", "/embed/pca"),
        ("POST", "/classify"),
    }
)
RETRY_AFTER_S = 1


def is_admitted_route(method: str, path: str) -> bool:
    """The routes that decode images: the model routes, the matches and the thumbnails
    (``GET /points/{id}/image``)."""
    return (method, path) in MODEL_ROUTES or is_image_read(method, path) or is_match(method, path)


def is_match(method: str, path: str) -> bool:
    """``GET /points/{a}/match/{b}`` and ``POST /points/{b}/match``: two images through the
    model."""
    parts = path.split("/")
    if len(parts) < 4 or parts[1] != "points" or parts[3] != "match":
        return False
    return (method == "GET" and len(parts) == 5) or (method == "POST" and len(parts) == 4)


def is_image_read(method: str, path: str) -> bool:
    """``GET /points/{id}/image``: a point's file or thumbnail."""
    return method == "GET" and path.startswith("/points/") and path.endswith("/image")


class Admission:
    """ASGI middleware: 503 for a model request beyond the limits, or past its deadline."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        max_bytes: int,
        unknown_length_bytes: int,
        timeout_s: float,
    ) -> None:
        """``unknown_length_bytes`` is what a body without Content-Length is counted as (the
        upload limit: it cannot be more)."""
        self.app = app
        self.limit = max(1, limit)
        self.max_bytes = max_bytes
        self.unknown_length_bytes = unknown_length_bytes
        self.timeout_s = timeout_s
        self.in_flight = 0  # one event loop: no lock needed
        self.bytes_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_admitted_route(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        weight = declared_length(scope)
        if weight is None:
            weight = self.unknown_length_bytes if scope["method"] == "POST" else 0
        if self.in_flight and (
            self.in_flight >= self.limit or self.bytes_in_flight + weight > self.max_bytes
        ):
            await _answer_503(send, "overloaded", self._busy_message())
            return
        self.in_flight += 1
        self.bytes_in_flight += weight
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            if not started:
                message = (
                    f"the query took longer than {self.timeout_s:g} s "
                    "(DINOSEEK_REQUEST_TIMEOUT_S), upload included; try again shortly"
                )
                await _answer_503(send, "timeout", message)
        finally:
            self.in_flight -= 1
            self.bytes_in_flight -= weight

    def _busy_message(self) -> str:
        return (
            f"the service is busy ({self.in_flight} queries in flight, "
            f"{self.bytes_in_flight:,} bytes of uploads; limits DINOSEEK_MAX_QUEUE and "
            "DINOSEEK_MAX_INFLIGHT_BYTES); try again shortly"
        )


async def _answer_503(send: Send, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
