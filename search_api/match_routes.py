"""``GET /points/{a}/match/{b}`` and ``POST /points/{b}/match``: why two images match
(their path parameters are named ``point_id`` and ``other_id``, as on the other point
routes).

The corresponding patches of two images (mutual nearest neighbours of their patch tokens,
``dinoseek.correspondence``), from one forward pass of both: the stored images are read
again from their checked files (``served_files``), an upload is decoded like any query.
Admitted like every model route (``search_api.admission``); the work is two decodes, one
forward pass of two images and one 256 x 256 similarity matrix, whatever is asked.
"""

from __future__ import annotations

from fastapi import APIRouter

from search_api.admission import ADMITTED
from search_api.region_params import MaxPairs, match_response
from search_api.route_params import (
    ERROR_RESPONSES,
    Collection,
    ImageUpload,
    PointId,
    Service,
    collection_of,
)
from search_api.schemas import MatchResponse
from search_api.service import StageClock

match_routes = APIRouter(responses=ERROR_RESPONSES)


@match_routes.get(
    "/points/{point_id}/match/{other_id}",
    response_model=MatchResponse,
    summary="Why two indexed images match",
    openapi_extra=ADMITTED,
)
async def match_points(
    service: Service,
    point_id: PointId,
    other_id: PointId,
    max_pairs: MaxPairs = 20,
    collection: Collection = None,
) -> MatchResponse:
    """The corresponding patches of two stored images (``a`` is ``point_id``, ``b``
    ``other_id``), strongest first, positions as fractions of each original image, and the
    pair of regions that match best."""
    clock = StageClock()
    name = collection_of(service, collection)
    first = await service.prepare_point(name, point_id, clock)
    second = await service.prepare_point(name, other_id, clock)
    found = await service.match(first, second, max_pairs, clock)
    return match_response(name, point_id, other_id, found, clock)


@match_routes.post(
    "/points/{point_id}/match",
    response_model=MatchResponse,
    summary="Why an image matches an indexed one",
    openapi_extra=ADMITTED,
)
async def match_upload(
    service: Service,
    point_id: PointId,
    image: ImageUpload,
    max_pairs: MaxPairs = 20,
    collection: Collection = None,
) -> MatchResponse:
    """The corresponding patches of an uploaded image (``a``) and a stored one (``b``)."""
    clock = StageClock()
    name = collection_of(service, collection)
    first = await service.prepare(await image.read(), image.filename or "upload", clock)
    second = await service.prepare_point(name, point_id, clock)
    found = await service.match(first, second, max_pairs, clock)
    return match_response(name, None, point_id, found, clock)
