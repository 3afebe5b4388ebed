"""Reading a request's body before the app sees it: a minimum rate, then a replay.

The admission reads a model request's upload itself (``search_api.admission``), so that a body
still arriving holds no place in the model's queue. A client trickling its body is cut off:
after the first ``GRACE_S`` seconds, the body must have averaged at least ``min_rate`` bytes
per second since the server began to read it (``DINOSEEK_MIN_UPLOAD_RATE``). The body's
chunks are then handed to the app as they came (``replay``); its size was bounded while it
streamed (``search_api.limits``).
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import Message, Receive

# Time a body gets before the rate counts: a connection's first round trips, a client that
# waits for "100 Continue".
GRACE_S = 2.0


class UploadTooSlowError(Exception):
    """The body arrived slower than the minimum rate."""

    def __init__(self, min_rate: float) -> None:
        super().__init__(
            f"the upload arrived at less than {min_rate:,.0f} bytes/s "
            "(DINOSEEK_MIN_UPLOAD_RATE); it was cut off"
        )


async def read_body(receive: Receive, *, min_rate: float) -> deque[bytes] | None:
    """The body's chunks, or None when the client went away before it ended.

    Raises ``UploadTooSlowError`` as soon as the bytes received fall behind ``min_rate``
    (0: no minimum)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks: deque[bytes] = deque()
    received = 0
    while True:
        if min_rate > 0:
            # Until the bytes received so far stop being enough.
            due = started + GRACE_S + received / min_rate
            message = await _receive_within(receive, due - loop.time(), min_rate)
        else:
            message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        if body:
            chunks.append(body)
            received += len(body)
        if not message.get("more_body", False):
            return chunks


async def _receive_within(receive: Receive, seconds: float, min_rate: float) -> Message:
    """The next message, or ``UploadTooSlowError`` after ``seconds``.

    Not ``asyncio.wait_for``: before Python 3.12 it loses a cancellation from outside (the
    request's deadline, the shutdown) that comes as the message does."""
    receiving = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({receiving}, timeout=max(0.0, seconds))
    finally:
        receiving.cancel()  # nothing if it is done
    if not done:
        raise UploadTooSlowError(min_rate)
    return receiving.result()


def replay(chunks: deque[bytes], receive: Receive) -> Receive:
    """A ``receive`` giving the app the body already read (the chunks are let go as they are
    handed over), then the connection's own ``receive`` (which reports a disconnect)."""
    body_done = False

    async def replaying() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        chunk = chunks.popleft() if chunks else b""
        body_done = not chunks
        return {"type": "http.request", "body": chunk, "more_body": not body_done}

    return replaying
