"""The token of an embedded collection's content: a file beside the shard that gets a new
random value, durably, before each write, so that the same token later means the same
content (``EdgeStore.state_token``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from dinoseek.store.files import write_bytes_atomic

STATE_FILE = "state"


def read_token(path: Path) -> str | None:
    """The token in ``path``; None when it is missing or damaged."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token if len(token) == 32 and token.isalnum() else None


def new_token(path: Path) -> str:
    """A fresh token, on disk (fsynced) before the caller goes on."""
    token = uuid.uuid4().hex
    write_bytes_atomic(path, token.encode("ascii"))
    return token
