"""Calls to qdrant-client with bounded retries, and its errors translated into the core's.

Transient failures (connection refused, timeouts, 408/429/502/503/504) are retried with
backoff a bounded number of times, then surface as ``StoreUnavailableError``; a 404 becomes
``CollectionNotFoundError``; any other refusal a ``StoreError`` with Qdrant's reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from dinoseek.errors import (
    CollectionNotFoundError,
    PointRefusedError,
    StoreError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
_TRANSIENT_STATUS = {408, 429, 502, 503, 504}


class QdrantCalls:
    """Runs qdrant-client calls for one server (``description`` names it in errors)."""

    def __init__(self, description: str, retry_delays_s: Sequence[float] = RETRY_DELAYS_S) -> None:
        self.description = description
        self.retry_delays_s = tuple(retry_delays_s)

    def not_found_message(self, reason: str) -> str:
        """The message of ``CollectionNotFoundError``."""
        return (
            f"{reason} on the {self.description}; run `dinoseek index` first or pass --collection"
        )

    def __call__(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)``, retried while the failure is transient."""
        failure: Exception | None = None
        for attempt in range(len(self.retry_delays_s) + 1):
            try:
                return function(*args, **kwargs)
            except UnexpectedResponse as exc:
                if exc.status_code == 404:
                    raise CollectionNotFoundError(self.not_found_message(_reason(exc))) from None
                if exc.status_code not in _TRANSIENT_STATUS:
                    # 4xx: the request's data; 5xx: the server itself.
                    status = exc.status_code or 500
                    error = PointRefusedError if status < 500 else StoreError
                    raise error(
                        f"the {self.description} refused the request ({exc.status_code}): "
                        f"{_reason(exc)}"
                    ) from None
                failure = exc
            except (ResponseHandlingException, httpx.HTTPError, ConnectionError) as exc:
                failure = exc
            except ValueError as exc:
                # qdrant-client's in-process mode reports a missing collection this way.
                if "not found" in str(exc):
                    raise CollectionNotFoundError(self.not_found_message(str(exc))) from None
                raise PointRefusedError(
                    f"the {self.description} refused the request: {exc}"
                ) from None
            if attempt < len(self.retry_delays_s):
                delay = self.retry_delays_s[attempt]
                log.warning("%s: %s; retrying in %.1f s", self.description, failure, delay)
                time.sleep(delay)
        raise StoreUnavailableError(
            f"the {self.description} is unreachable ({failure}); check DINOSEEK_QDRANT_URL and "
            "that the server is running"
        )


def _reason(exc: UnexpectedResponse) -> str:
    try:
        body = json.loads(exc.content)
        return str(body.get("status", {}).get("error", body))
    except (ValueError, AttributeError):
        return exc.reason_phrase or str(exc)
