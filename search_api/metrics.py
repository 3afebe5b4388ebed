"""Prometheus metrics of one app, in its own registry (two apps in a process never clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.served_files import REFUSAL_REASONS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Label values come from a fixed set: a client-chosen method or path would be a new series
# (memory, for good) per request.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics:
    """Request latency by route and status, time per stage, batch sizes, queue depth, and
    the indexed files refused when serving (by reason)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "dinoseek_request_seconds",
            "HTTP request latency",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "dinoseek_stage_seconds",
            "Time per stage of a query",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "dinoseek_batch_size",
            "Images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dinoseek_queue_depth", "Queries waiting for a forward pass", registry=self.registry
        )
        self.refused_files = Counter(
            "dinoseek_served_file_refusals",
            "Indexed files not served: no longer the regular file with the content indexed",
            ["reason"],
            registry=self.registry,
        )
        for reason in (*REFUSAL_REASONS, "other"):
            self.refused_files.labels(reason)  # every series shown from the start, at 0

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record the time of one stage (decode, embed, search, forward)."""
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one forward pass."""
        self.batch_size.observe(size)
        self.stage_seconds.labels("forward").observe(seconds)

    def observe_refused_file(self, reason: str) -> None:
        """Count an indexed file that was not served, and why."""
        self.refused_files.labels(reason if reason in REFUSAL_REASONS else "other").inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware timing each request, labelled by its route template (not its path,
    which would make one series per point id)."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            # path_format: the template without its convertors ("/points/{point_id}").
            template = getattr(route, "path_format", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.request_seconds.labels(template, method, str(status)).observe(
                time.perf_counter() - started
            )
