"""Error answers sent by ASGI middleware and the server's protocol, outside FastAPI's handlers:
the one error body, and ``Connection: close`` (the request's body may not have been read)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import Send

from search_api.errors import error_body


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    retry_after_s: int | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer ``status`` with the one error body (``headers``: those the answer needs)."""
    body = json.dumps(error_body(code, message)).encode()
    sent = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *headers,
    ]
    if retry_after_s is not None:
        sent.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": body})
