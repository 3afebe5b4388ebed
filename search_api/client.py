"""A client of a running dinoseek service, speaking the API's own schemas.

``dinoseek search`` and ``dinoseek info`` use it while ``dinoseek serve`` holds an embedded
collection (Qdrant Edge lets one process open it; the server's URL is in the lock file). The
request carries the same parameters as a local search (``dinoseek.search_types``: the filter names
are the same), and the answer is parsed with the response models of ``search_api.schemas``
back into the core's result types, so the caller cannot tell the two paths apart.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from dinoseek.errors import DinoseekError, StoreUnavailableError
from dinoseek.regions import Box
from dinoseek.search_types import LabelRequest, NeighbourQuery, SearchResult
from search_api.schemas import CollectionsResponse, ErrorBody, SearchResponse

TIMEOUT_S = 60.0
Model = TypeVar("Model", bound=BaseModel)


class ServiceClient:
    """The dinoseek service at ``url`` (with its API key, when it needs one)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=url, headers=headers, timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def search(
        self,
        data: bytes,
        name: str,
        *,
        collection: str,
        query: NeighbourQuery,
        labels: LabelRequest,
        regions: bool = False,
        box: Box | None = None,
    ) -> tuple[str, SearchResult]:
        """``POST /search`` with an image's bytes (``name`` is its file name), by region
        when asked (by ``box`` of it when given): the model's id and the result."""
        params: dict[str, Any] = {
            "top_k": query.top_k,
            "offset": query.offset,
            "collection": collection,
            **query.filters.as_params(),
        }
        if query.score_threshold is not None:
            params["score_threshold"] = query.score_threshold
        if query.collapse_duplicates:
            params["collapse_duplicates"] = True
        if labels.with_labels is not None:
            params["with_labels"] = labels.with_labels
        if labels.method is not None:
            params["label_method"] = labels.method
        if labels.probe is not None:
            params["probe"] = labels.probe
        if regions or box is not None:
            params["regions"] = True
        if box is not None:
            params["region"] = f"{box.x!r},{box.y!r},{box.w!r},{box.h!r}"
        response = self._request("POST", "/search", params=params, files={"image": (name, data)})
        body = self._parse(SearchResponse, response)
        return body.model, SearchResult(list(body.results), body.labels, body.near_duplicate)

    def collections(self) -> CollectionsResponse:
        """``GET /collections``."""
        return self._parse(CollectionsResponse, self._request("GET", "/collections"))

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"the dinoseek server at {self.url} holds the store but cannot be reached "
                f"({exc or type(exc).__name__})"
            ) from None

    def _parse(self, model: type[Model], response: httpx.Response) -> Model:
        if not response.is_success:
            raise self._error(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise DinoseekError(
                f"the server at {self.url} answered something else than dinoseek's API "
                f"({exc.error_count()} problems); is it the same version?",
                code="bad_response",
            ) from None

    def _error(self, response: httpx.Response) -> DinoseekError:
        """The server's own error (its code and message), or a description of the answer."""
        try:
            detail = ErrorBody.model_validate_json(response.content).error
            code, message = detail.code, detail.message
        except ValidationError:
            code, message = "server_error", response.text[:200]
        error = DinoseekError(
            f"the server at {self.url} answered {response.status_code}: {message}", code=code
        )
        if response.status_code == 503:
            return StoreUnavailableError(error.message, code=code)
        return error
