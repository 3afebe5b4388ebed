"""The bytes a point serves: the content it was indexed from, checked by hash before any
byte leaves.

A point's payload names the files its content was read from and the content's sha256 (from
which its id was made). Serving reads one of those files with the core's reader (an open that
cannot block, regular files only, at most the indexed size, within a deadline) into a spooled
buffer, hashing as it reads, and hands the buffer out only when the hash is the point's. A
file that changed, was replaced (by a link to another file, a FIFO, a device, a directory) or
is gone is refused: logged, counted by reason, and the point's next file is tried. The path
is never opened again after the check: what is sent is the buffer. Nothing is written to the
store; the next index run sees the change by itself.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from starlette.responses import Response, StreamingResponse

from dinoseek.errors import FileReadError, ImageErrorCode, PointNotFoundError
from dinoseek.file_read import CHUNK_BYTES, ReadLimits, copy_file
from dinoseek.store import StoredPoint

log = logging.getLogger(__name__)

# A verified copy up to this size waits in memory; a larger one in an unnamed temporary file.
SPOOL_MEMORY_BYTES = 1 << 20
UNAVAILABLE_CODE = "image_unavailable"
CONTENT_CHANGED = "content_changed"
NO_CONTENT_HASH = "no_content_hash"
# Why a file was refused: the metric's label values (a fixed set) and what the 404 says.
REFUSAL_REASONS: dict[str, str] = {
    CONTENT_CHANGED: "its content is no longer the content that was indexed",
    ImageErrorCode.FILE_NOT_FOUND: "it is no longer on disk (moved, deleted or not mounted here)",
    ImageErrorCode.NOT_A_REGULAR_FILE: "it is no longer a regular file",
    ImageErrorCode.FILE_UNREADABLE: "it cannot be read",
    ImageErrorCode.FILE_TOO_LARGE: "it is larger than DINOSEEK_MAX_FILE_BYTES",
    ImageErrorCode.READ_TIMEOUT: "reading it took longer than DINOSEEK_REQUEST_TIMEOUT_S",
    NO_CONTENT_HASH: "the point records no content hash to check it against",
}
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class VerifiedFile:
    """A point's content, read and checked: ``name`` is the path it was read from (for the
    media type), ``content`` the buffer, at its start."""

    name: str
    size: int
    content: tempfile.SpooledTemporaryFile[bytes]

    def data(self) -> bytes:
        """The whole content (the buffer is closed)."""
        with self.content:
            return self.content.read()

    def chunks(self) -> Iterator[bytes]:
        """The content a chunk at a time (the buffer is closed at the end, or when the
        iterator is dropped)."""
        with self.content:
            while chunk := self.content.read(CHUNK_BYTES):
                yield chunk

    def close(self) -> None:
        """Drop the buffer."""
        self.content.close()


def verified_file(
    point: StoredPoint,
    *,
    max_bytes: int,
    timeout_s: float,
    on_refused: Callable[[str], None],
) -> VerifiedFile:
    """The content of one of the point's files whose sha256 is the point's, or
    ``PointNotFoundError`` (code ``image_unavailable``) saying why none is. ``on_refused`` is
    called with the reason of each file refused (one of ``REFUSAL_REASONS``)."""
    expected = point.payload.get("sha256")
    reasons: list[str] = []
    if not isinstance(expected, str) or not _SHA256.match(expected):
        _refuse(point, NO_CONTENT_HASH, "its payload has no sha256", on_refused, reasons)
        raise _unavailable(point, reasons)
    expected = expected.lower()
    size = point.payload.get("size")
    indexed_size = size if isinstance(size, int) and 0 <= size <= max_bytes else None
    limits = ReadLimits(
        max_bytes=max_bytes if indexed_size is None else indexed_size,
        timeout_s=timeout_s,
        # Links are followed, as an index run with --follow-links did: the hash decides.
        follow_links=True,
    )
    for path in _recorded_paths(point):
        # Handed to the caller, or closed here.
        content = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        try:
            facts = copy_file(path, content, limits)
        except FileReadError as exc:
            content.close()
            larger = exc.code == ImageErrorCode.FILE_TOO_LARGE and indexed_size is not None
            reason = CONTENT_CHANGED if larger else exc.code
            _refuse(point, reason, exc.message, on_refused, reasons)
            continue
        if facts.sha256 != expected:
            content.close()
            detail = f"{path}: sha256 {facts.sha256[:16]}..., indexed {expected[:16]}..."
            _refuse(point, CONTENT_CHANGED, detail, on_refused, reasons)
            continue
        length = content.tell()  # the bytes hashed (fstat's size could be older)
        content.seek(0)
        return VerifiedFile(path, length, content)
    raise _unavailable(point, reasons)


def content_response(content: VerifiedFile, *, headers: dict[str, str]) -> Response:
    """The whole checked content, its media type from its name: in one piece when it is
    small, else streamed from its copy (with its length)."""
    media_type = mimetypes.guess_type(content.name)[0] or "application/octet-stream"
    if content.size <= SPOOL_MEMORY_BYTES:
        return Response(content.data(), media_type=media_type, headers=headers)
    headers = {**headers, "Content-Length": str(content.size)}
    return StreamingResponse(content.chunks(), media_type=media_type, headers=headers)


def _recorded_paths(point: StoredPoint) -> list[str]:
    """The paths the indexer recorded for the point (never one from the request)."""
    entries = point.payload.get("files")
    if not isinstance(entries, list):
        return []
    paths = [str(e.get("path", "")) for e in entries if isinstance(e, Mapping)]
    return [p for p in paths if p]


def _refuse(
    point: StoredPoint,
    reason: str,
    detail: str,
    on_refused: Callable[[str], None],
    reasons: list[str],
) -> None:
    log.warning("point %s: not served from a file (%s): %s", point.id, reason, detail)
    on_refused(reason)
    reasons.append(reason)


def _unavailable(point: StoredPoint, reasons: list[str]) -> PointNotFoundError:
    why = "; ".join(dict.fromkeys(REFUSAL_REASONS.get(r, r) for r in reasons)) or (
        "it records no file"
    )
    return PointNotFoundError(
        f"the image of point {point.id} is not served: {why}; re-run `dinoseek index`",
        code=UNAVAILABLE_CODE,
    )
