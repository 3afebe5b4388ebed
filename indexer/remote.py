"""Querying through a running ``dinoseek serve`` when it holds the embedded store.

Qdrant Edge lets one process open a collection. While ``dinoseek serve`` owns it, ``search``
and ``info`` send their request to that server (its URL is in the store's lock file) instead
of failing; ``index`` cannot, and says how to proceed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dinoseek.errors import ConfigError, DinoseekError, StoreUnavailableError
from dinoseek.labelling import LabelPrediction
from dinoseek.store import SearchHit

TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SearchOutcome:
    """What ``dinoseek search`` shows: the model, the neighbours and the predicted labels."""

    model: str
    hits: list[SearchHit]
    labels: list[LabelPrediction] | None


def _client(url: str, api_key: str | None) -> httpx.Client:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S)


def _check(response: httpx.Response, url: str) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.is_success:
        return body
    error = body.get("error") or {}
    raise DinoseekError(
        f"the server at {url} answered {response.status_code}: "
        f"{error.get('message', response.text[:200])}",
        code=str(error.get("code", "server_error")),
    )


def remote_search(
    url: str,
    api_key: str | None,
    image: Path,
    *,
    collection: str,
    top_k: int,
    offset: int,
    threshold: float | None,
    filters: dict[str, str],
) -> SearchOutcome:
    """POST /search on the server (labels included)."""
    params: dict[str, Any] = {
        "top_k": top_k,
        "offset": offset,
        "collection": collection,
        "with_labels": True,
    }
    if threshold is not None:
        params["score_threshold"] = threshold
    for field, value in filters.items():
        if field not in ("label", "roots"):
            raise ConfigError(
                f"through the server, only label= and root= filters are available (got {field})"
            )
        params["label" if field == "label" else "root"] = value
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{image}: cannot be read ({exc.strerror or exc})") from None
    try:
        with _client(url, api_key) as client:
            response = client.post("/search", params=params, files={"image": (image.name, data)})
    except httpx.HTTPError as exc:
        raise StoreUnavailableError(f"the server at {url} holds the store but {exc}") from None
    body = _check(response, url)
    hits = [SearchHit(id=r["id"], score=r["score"], payload=r["payload"]) for r in body["results"]]
    labels = [
        LabelPrediction(p["label"], p["probability"], p["method"], p.get("probe"))
        for p in body.get("labels") or []
    ]
    return SearchOutcome(str(body["model"]), hits, labels)


def remote_collections(url: str, api_key: str | None) -> dict[str, Any]:
    """GET /collections on the server."""
    try:
        with _client(url, api_key) as client:
            response = client.get("/collections")
    except httpx.HTTPError as exc:
        raise StoreUnavailableError(f"the server at {url} holds the store but {exc}") from None
    return _check(response, url)
