"""Qdrant's collection-snapshot REST API, for ``ServerStore.snapshot`` and ``restore``.

qdrant-client can create and delete snapshots but cannot download or upload them, and its
calls use the client's short timeout. These few requests go over REST with httpx instead, to
the same base URL and with the same ``api-key`` header that qdrant-client uses:

- ``POST   /collections/{name}/snapshots?wait=true``: create; answers the snapshot's
  name, size and sha256 checksum;
- ``GET    /collections/{name}/snapshots/{snapshot}``: download the file;
- ``DELETE /collections/{name}/snapshots/{snapshot}?wait=true``: delete it on the server;
- ``POST   /collections/{name}/snapshots/upload?priority=snapshot&wait=true&checksum=...``:
  recover (create or overwrite) a collection from a multipart upload, field ``snapshot``;
- ``GET    /cluster``: ``status`` is ``"enabled"`` in distributed mode.

In a Qdrant cluster a collection snapshot holds only the shards stored on the node it is
taken on (https://qdrant.tech/documentation/concepts/snapshots/): back up a cluster with
Qdrant's per-node snapshots instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from qdrant_client import QdrantClient

from dinoseek.errors import CollectionNotFoundError, StoreError, StoreUnavailableError

SNAPSHOTS_DOCS = "https://qdrant.tech/documentation/concepts/snapshots/"
NEEDS_SERVER = (
    "snapshots need a Qdrant server: qdrant-client's in-process mode (':memory:' or a local "
    "path) has no snapshot API. Set DINOSEEK_QDRANT_URL to a Qdrant server, or back up the "
    "embedded store (DINOSEEK_QDRANT_URL unset)"
)
DEFAULT_TIMEOUT_S = 3600.0
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RemoteSnapshot:
    """A snapshot made by the Qdrant server: its file name, size and sha256 (if reported)."""

    name: str
    size: int
    checksum: str | None


@dataclass(frozen=True)
class QdrantRest:
    """The snapshot endpoints of one Qdrant server (see the module doc)."""

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    description: str = "Qdrant server"
    timeout_s: float = DEFAULT_TIMEOUT_S
    transport: httpx.BaseTransport | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_client(
        cls, client: QdrantClient, *, description: str, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> QdrantRest:
        """The REST endpoint qdrant-client talks to; ``StoreError`` for its in-process mode."""
        rest_uri = getattr(getattr(client, "_client", None), "rest_uri", None)
        if not isinstance(rest_uri, str) or not rest_uri:
            raise StoreError(NEEDS_SERVER, code="snapshot_unsupported")
        options = client.init_options
        headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
        if options.get("api_key"):
            headers["api-key"] = str(options["api_key"])
        return cls(rest_uri.rstrip("/"), headers, description, timeout_s)

    def url(self, *segments: str) -> str:
        """``base_url/seg1/seg2...`` with each segment percent-encoded."""
        return "/".join([self.base_url, *(quote(s, safe="") for s in segments)])

    def create_snapshot(self, collection: str) -> RemoteSnapshot:
        """Ask the server for a snapshot of ``collection`` and wait until it is written."""
        url = self.url("collections", collection, "snapshots")
        result = self._json("POST", url, params={"wait": "true"})
        if not isinstance(result, dict) or not result.get("name"):
            raise StoreError(f"the {self.description} answered no snapshot name: {result!r}")
        checksum = result.get("checksum")
        return RemoteSnapshot(
            str(result["name"]), int(result.get("size") or 0), str(checksum) if checksum else None
        )

    def download_snapshot(self, collection: str, snapshot: RemoteSnapshot, target: Path) -> None:
        """Stream the snapshot file to ``target``, checking its size and sha256."""
        url = self.url("collections", collection, "snapshots", snapshot.name)
        digest = hashlib.sha256()
        size = 0
        try:
            with self._client() as client, client.stream("GET", url) as response:
                self._check(response, url, read=True)
                with open(target, "wb") as out:
                    for chunk in _iterate(response, self.description):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if (snapshot.size and size != snapshot.size) or (
            snapshot.checksum and digest.hexdigest() != snapshot.checksum
        ):
            raise StoreUnavailableError(
                f"the download of snapshot {snapshot.name} from the {self.description} was "
                f"damaged ({size:,} bytes, expected {snapshot.size:,}, or a wrong checksum); "
                "try again"
            )

    def delete_snapshot(self, collection: str, snapshot: str) -> None:
        """Delete a snapshot file on the server."""
        url = self.url("collections", collection, "snapshots", snapshot)
        self._json("DELETE", url, params={"wait": "true"})

    def upload_snapshot(self, collection: str, path: Path) -> None:
        """Recover ``collection`` (created or overwritten) from the snapshot file ``path``."""
        url = self.url("collections", collection, "snapshots", "upload")
        params = {"priority": "snapshot", "wait": "true", "checksum": file_sha256(path)}
        with open(path, "rb") as handle:
            files = {"snapshot": (path.name, handle, "application/octet-stream")}
            self._json("POST", url, params=params, files=files)

    def cluster_enabled(self) -> tuple[bool, int]:
        """Whether the server runs in distributed mode, and how many peers it knows."""
        result = self._json("GET", self.url("cluster"))
        if not isinstance(result, dict) or result.get("status") != "enabled":
            return False, 1
        return True, len(result.get("peers") or {})

    # -- internals --------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        timeout = httpx.Timeout(self.timeout_s, connect=min(30.0, self.timeout_s))
        return httpx.Client(headers=dict(self.headers), timeout=timeout, transport=self.transport)

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        """One request; the ``result`` of Qdrant's JSON answer."""
        try:
            with self._client() as client:
                response = client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        self._check(response, url)
        try:
            return response.json().get("result")
        except (ValueError, AttributeError):
            raise StoreError(
                f"the {self.description} answered {url} with something other than JSON"
            ) from None

    def _check(self, response: httpx.Response, url: str, *, read: bool = False) -> None:
        """Translate an error status into the core's errors."""
        if response.is_success:
            return
        if read:
            response.read()
        reason = _reason(response)
        status = response.status_code
        if status == 404 and "/collections/" in url:
            raise CollectionNotFoundError(f"{reason} on the {self.description}")
        if status in (401, 403):
            raise StoreError(
                f"the {self.description} refused the request ({status}: {reason}); "
                "check DINOSEEK_QDRANT_API_KEY"
            )
        if status in (502, 503, 504):
            raise StoreUnavailableError(
                f"the {self.description} is unavailable ({status}: {reason}); try again later"
            )
        raise StoreError(f"the {self.description} refused the request ({status}): {reason}")

    def _unreachable(self, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the {self.description} is unreachable ({exc or type(exc).__name__}); check "
            "DINOSEEK_QDRANT_URL and that the server is running"
        )


def file_sha256(path: Path) -> str:
    """The sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _iterate(response: httpx.Response, description: str) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes(CHUNK_BYTES)
    except httpx.HTTPError as exc:
        raise StoreUnavailableError(
            f"the download from the {description} broke off ({exc or type(exc).__name__}); "
            "try again"
        ) from None


def _reason(response: httpx.Response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        return response.reason_phrase or response.text[:200]
    if isinstance(body, dict):
        status = body.get("status")
        if isinstance(status, dict) and status.get("error"):
            return str(status["error"])
    return str(body)[:200]
