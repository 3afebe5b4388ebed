"""Admission before work: the model routes take at most ``limit`` requests at once.

ASGI middleware, so that an overloaded service answers 503 with ``Retry-After`` before it
reads a byte of the upload, decodes it or queues it: a client that is refused costs the
server almost nothing. Requests to other routes (health, points, metrics, ...) pass freely.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

# The routes that run the model: (method, path).
MODEL_ROUTES = frozenset(
    {
        ("POST", "/search"),
        ("POST", "/search/batch"),
        ("POST", "/embed"),
        ("POST", "/classify"),
    }
)
RETRY_AFTER_S = 1


class Admission:
    """ASGI middleware: 503 for a model request beyond ``limit`` in flight."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = max(1, limit)
        self.in_flight = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in MODEL_ROUTES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await _refuse(send, self.limit)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _refuse(send: Send, limit: int) -> None:
    message = (
        f"the service is busy: {limit} queries are already in flight "
        "(DINOSEEK_MAX_QUEUE); try again shortly"
    )
    body = json.dumps({"error": {"code": "overloaded", "message": message}}).encode()
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
