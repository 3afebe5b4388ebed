"""The app factory: ``create_app(settings, runtime=...)``.

The runtime (store, collection, model) is passed in by ``dinoseek serve``, which opens it
before the server listens; tests pass a store and an embedder of their own, and the lifespan
completes the same startup (``Runtime.open``). With neither, the lifespan opens everything
from ``settings``. At shutdown the runtime is closed: the store flushed, its locks released.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from dinoseek import __version__
from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.runtime import ModelLoader, ModelPolicy, Runtime
from dinoseek.settings import Settings
from dinoseek.store import VectorStore
from search_api.admission import Admission, AdmittedRoutes
from search_api.auth import ApiKeyCheck
from search_api.cluster_routes import cluster_routes
from search_api.errors import install_error_handlers
from search_api.extras import Companion, ServiceExtras
from search_api.label_routes import label_routes
from search_api.labelling_service import LabellingService
from search_api.limits import BodySizeLimit
from search_api.match_routes import match_routes
from search_api.metrics import RequestMetrics, ServiceMetrics
from search_api.page import (
    ASSETS_PREFIX,
    DOCS_ASSETS_PREFIX,
    SecurityHeaders,
    assets,
    docs_assets,
    page_routes,
)
from search_api.point_routes import point_routes
from search_api.point_writes import PointWriter
from search_api.routes import open_routes, routes
from search_api.service import SearchService
from search_api.shutdown import RequestsInFlight, ShutdownCutoff
from search_api.writes import WritePolicy, WriteRoutes

log = logging.getLogger(__name__)

SERVING = ModelPolicy(purpose="serve")
# At shutdown, how long the requests the server cut off get to send their 503 before the
# store is closed.
CUTOFF_ANSWER_S = 2.0

DESCRIPTION = """\
Image similarity search on DINOv2 features. Upload an image to `/search` and get its nearest
neighbours from the collection, with scores and payloads. Every error has the body
`{"error": {"code": "...", "message": "..."}}`. When `DINOSEEK_API_KEY` is set, every route
but `/health`, `/ready`, these docs and the search page at `/` needs the header `X-API-Key`.
"""

# Documents the header in OpenAPI; ApiKeyCheck enforces it before the body is read.
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    store: VectorStore | None = None,
    embedder: ImageEmbedder | None = None,
    loader: ModelLoader | None = None,
    owner: Mapping[str, Any] | None = None,
    allow_writes: bool = False,
    extras: ServiceExtras | None = None,
) -> FastAPI:
    """Build the app. ``owner`` describes this server in an embedded store's locks;
    ``allow_writes`` lets a client on a loopback address write without a key when no key is
    set (``search_api.writes``: ``dinoseek serve --allow-writes``, on loopback only);
    ``extras``: work run beside the service on its runtime (``search_api.extras``)."""
    extras = extras or ServiceExtras()
    metrics = ServiceMetrics()
    in_flight = RequestsInFlight()

    def open_runtime() -> Runtime:
        return Runtime.open(
            settings,
            owner=owner,
            collection="optional",
            policy=SERVING,
            loader=loader,
            store=store,
            embedder=embedder,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = runtime if runtime is not None else await run_in_threadpool(open_runtime)
        service = SearchService(started, metrics=metrics, watch=extras.watch)
        labelling = LabellingService(service)
        app.state.service = service
        app.state.labelling = labelling
        app.state.point_writer = PointWriter(service)
        running: list[Companion] = []
        try:
            await service.start()
            for companion in extras.companions:
                companion.start()
                running.append(companion)
            log.info(
                "ready: %s on %s, %s",
                service.embedder.model_id,
                service.embedder.device,
                service.store.describe(),
            )
            yield
        finally:
            for companion in reversed(running):
                await run_in_threadpool(companion.stop)
            await in_flight.settle(CUTOFF_ANSWER_S)
            await labelling.stop()
            await service.stop()

    app = FastAPI(
        title="dinoseek",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # A slash redirect is built from the client's Host header (an open redirect); a path
        # with a slash too many is a 404 like any other unknown path.
        redirect_slashes=False,
        # The docs are the package's own pages (search_api.page), with no CDN.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)
    app.include_router(open_routes)
    app.include_router(page_routes)
    app.mount(DOCS_ASSETS_PREFIX, docs_assets(), name="docs-assets")
    app.mount(ASSETS_PREFIX, assets(), name="assets")
    app.include_router(routes, dependencies=[Depends(API_KEY_HEADER)])
    app.include_router(match_routes, dependencies=[Depends(API_KEY_HEADER)])
    app.include_router(label_routes, dependencies=[Depends(API_KEY_HEADER)])
    app.include_router(cluster_routes, dependencies=[Depends(API_KEY_HEADER)])
    app.include_router(point_routes, dependencies=[Depends(API_KEY_HEADER)])
    writes = WriteRoutes(app.routes)
    # Middleware wraps in reverse order of addition: the security headers see a request
    # first, then CORS, the metrics, the shutdown's cut-off, the upload limit, the API key,
    # the write policy and the admission, which alone reads the body (of the model routes,
    # once the key, the write policy and the limits let it).
    app.add_middleware(
        Admission,
        admitted=AdmittedRoutes(app.routes),
        limit=settings.max_queue,
        max_bytes=settings.max_inflight_bytes,
        max_reading_bytes=settings.max_reading_bytes,
        unknown_length_bytes=settings.max_upload_bytes,
        min_upload_rate=settings.min_upload_rate,
        timeout_s=settings.request_timeout_s,
        writes=writes,
    )
    app.add_middleware(
        WritePolicy,
        writes=writes,
        key_set=settings.api_key is not None,
        allow_writes=allow_writes,
    )
    if settings.api_key is not None:
        app.add_middleware(ApiKeyCheck, key=settings.api_key.get_secret_value())
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ShutdownCutoff, in_flight=in_flight)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["X-API-Key"],
        )
    app.add_middleware(SecurityHeaders)
    return app
