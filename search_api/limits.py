"""Upload size limit, enforced in ASGI middleware before and while the body is read.

Starlette has no default body limit. A declared Content-Length over the limit is answered 413
before a byte of the body is read (curl's ``Expect: 100-continue`` then never sends it); a body
without a length, or one that lies, is counted while it streams and cut off at the limit. The
body is never buffered here.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.asgi_errors import send_error


class BodyTooLargeError(HTTPException):
    """Raised into the app when a streamed body passes the limit. An HTTPException, so that
    FastAPI's body parsing lets it through and the app answers 413 with the usual body."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_message("the upload", max_bytes))


def too_large_message(what: str, max_bytes: int) -> str:
    """The message of a 413."""
    return f"{what} is more than the limit of {max_bytes:,} bytes (DINOSEEK_MAX_UPLOAD_BYTES)"


class BodySizeLimit:
    """ASGI middleware: 413 for request bodies larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, declared)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if not response_started:
                await self._reject(send, None)

    async def _reject(self, send: Send, declared: int | None) -> None:
        size = f"{declared:,} bytes" if declared is not None else "the upload"
        message = too_large_message(size, self.max_bytes)
        await send_error(send, 413, "upload_too_large", message)


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it has none (or not a number)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None
    return None
