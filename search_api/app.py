"""The app factory: ``create_app(settings, embedder=..., store=...)``.

The model and the store are passed in (tests give a tiny model and a temporary store) or, when
absent, loaded by the lifespan from ``settings``. Start-up loads the model once, opens the
store, refuses a collection built with another model, warms the model up, then starts the
micro-batcher.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from dinoseek import __version__
from dinoseek.embedder import Embedder
from dinoseek.settings import Settings
from dinoseek.store import VectorStore, open_store
from search_api.errors import install_error_handlers
from search_api.limits import BodySizeLimit
from search_api.metrics import RequestMetrics, ServiceMetrics
from search_api.routes import open_routes, routes
from search_api.service import SearchService

log = logging.getLogger(__name__)

DESCRIPTION = """\
Image similarity search on DINOv2 features. Upload an image to `/search` and get its nearest
neighbours from the collection, with scores and payloads. Every error has the body
`{"error": {"code": "...", "message": "..."}}`. When `DINOSEEK_API_KEY` is set, every route
but `/health` and `/ready` needs the header `X-API-Key`.
"""


def create_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
    store_owner: Mapping[str, Any] | None = None,
) -> FastAPI:
    """Build the app. ``store_owner`` describes this server in an embedded store's locks."""

    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await run_in_threadpool(
            _build_service, settings, embedder, store, store_owner, metrics
        )
        app.state.service = service
        try:
            await service.start()
            log.info(
                "ready: %s on %s, %s",
                service.embedder.model_id,
                service.embedder.device,
                service.store.describe(),
            )
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="dinoseek",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(open_routes)
    app.include_router(routes)
    # Middleware wraps in reverse order of addition: the size limit sees the request first.
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app


def _build_service(
    settings: Settings,
    embedder: Embedder | None,
    store: VectorStore | None,
    owner: Mapping[str, Any] | None,
    metrics: ServiceMetrics,
) -> SearchService:
    if embedder is None:
        embedder = Embedder.from_pretrained(
            settings.model, device=settings.device, dtype=settings.dtype
        )
    if store is None:
        store = open_store(settings, owner=owner)
    return SearchService(settings, embedder, store, metrics=metrics)
