"""Reading HTTP responses off a plain socket, for tests that hold connections in states no
HTTP client lets them (a body half sent, ``Expect: 100-continue``)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """A response read off a socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        """The ``code`` of the error body."""
        code: str = json.loads(self.body)["error"]["code"]
        return code

    def error_message(self) -> str:
        """The ``message`` of the error body."""
        message: str = json.loads(self.body)["error"]["message"]
        return message


def read_answer(connection: socket.socket) -> Answer:
    """The next response on ``connection`` (an informational one has no body); status 0 when
    the server closed the connection instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            return Answer(0, {}, b"")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(4096)
        if not chunk:
            break
        body += chunk
    return Answer(int(lines[0].split(" ")[1]), headers, body)
