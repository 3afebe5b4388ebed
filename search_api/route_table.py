"""The app's API routes, those of the routers it includes with them, for the middleware and
the error handlers that need to know which route a request is for before (or without) the
router deciding it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

# Routes of their own beside /points/{point_id}: not point ids.
RESERVED_POINT_SEGMENTS = ("labels",)


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every ``APIRoute``, those of included routers with them (FastAPI includes a router as
    one route that holds it; the app's routers take no prefix when included)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods of the routes of the request's path (the ``Allow`` of a 405), across
    routers: those of its most specific template (``/points/labels`` before
    ``/points/{point_id}``)."""
    matching = [route for route in api_routes(routes) if route.matches(scope)[0] is not Match.NONE]
    if not matching:
        return []
    fewest = min(len(route.param_convertors) for route in matching)
    methods: set[str] = set()
    for route in matching:
        if len(route.param_convertors) == fewest:
            methods |= route.methods or set()
    return sorted(methods)


class PointIdSegment(Convertor[str]):
    """The ``{point_id}`` of ``/points/{point_id}``: any segment but the names of the routes
    beside it (``/points/labels``), so that another method on those is a 405, not a bad id."""

    regex = "(?!(?:" + "|".join(RESERVED_POINT_SEGMENTS) + ")$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("point_id", PointIdSegment())
