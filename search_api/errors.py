"""The API's edge for errors: domain errors become an HTTP status and one JSON body shape,
``{"error": {"code": "...", "message": "..."}}``, everywhere, including FastAPI's own
validation errors and unknown routes. No input produces a 5xx."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dinoseek.errors import (
    ClusterNotFoundError,
    ClustersChangedError,
    CollectionExistsError,
    CollectionMismatchError,
    CollectionNotFoundError,
    ConfigError,
    DinoseekError,
    EmbeddingError,
    ImageError,
    ImageErrorCode,
    InvalidPointIdError,
    InvalidRegionError,
    ModelLoadError,
    PointInFolderError,
    PointNotFoundError,
    ProbeMismatchError,
    ProbeNotFoundError,
    ProbeTrainingError,
    StoreLockedError,
    StoreUnavailableError,
)
from search_api.route_table import allowed_methods

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1

_IMAGE_STATUS = {
    ImageErrorCode.UNSUPPORTED_FORMAT: 415,
    ImageErrorCode.NOT_AN_IMAGE: 415,
    ImageErrorCode.TOO_MANY_PIXELS: 413,
    ImageErrorCode.FILE_TOO_LARGE: 413,
}


class ApiError(Exception):
    """An error raised by the API layer itself (auth, limits, overload)."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The one error body: ``{"error": {"code": ..., "message": ...}}``."""
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    retry_after_s: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The one error body (``headers``: those the answer needs, e.g. ``Allow`` for a 405)."""
    sent = dict(headers or {})
    if retry_after_s is not None:
        sent["Retry-After"] = str(retry_after_s)
    return JSONResponse(error_body(code, message), status_code=status, headers=sent or None)


def status_for(error: DinoseekError) -> int:
    """HTTP status of a domain error."""
    if isinstance(error, ImageError):
        return _IMAGE_STATUS.get(error.code, 422)
    if isinstance(error, CollectionNotFoundError | PointNotFoundError | ProbeNotFoundError):
        return 404
    if isinstance(error, ClusterNotFoundError):
        return 404
    if isinstance(error, CollectionMismatchError | ProbeMismatchError):
        return 409
    if isinstance(error, ClustersChangedError | CollectionExistsError | PointInFolderError):
        return 409
    if isinstance(error, StoreLockedError | StoreUnavailableError | ModelLoadError):
        return 503
    if isinstance(
        error,
        InvalidPointIdError
        | InvalidRegionError
        | ConfigError
        | EmbeddingError
        | ProbeTrainingError,
    ):
        return 422
    return 500


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same body."""

    @app.exception_handler(DinoseekError)
    async def domain_error(request: Request, error: DinoseekError) -> JSONResponse:
        status = status_for(error)
        retry = RETRY_AFTER_S if status == 503 else None
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, error.message)
        return error_response(status, error.code, error.message, retry_after_s=retry)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(
            error.status, error.code, error.message, retry_after_s=error.retry_after_s
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'query', 'path'))}: "
            f"{e['msg']}"
            for e in error.errors()
        )
        return error_response(422, "invalid_request", problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "upload_too_large",
        }
        code = codes.get(error.status_code, f"http_{error.status_code}")
        message = str(error.detail) if error.detail else code.replace("_", " ")
        if error.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; see /docs"
        headers = dict(error.headers or {})
        if error.status_code == 405:  # every router's methods of this path, not the first's
            headers["Allow"] = ", ".join(allowed_methods(request.app.routes, request.scope))
        return error_response(error.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")
