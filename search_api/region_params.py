"""The HTTP parameters and answers of search by region and of "why do these two images
match", shared by ``routes.search`` and ``match_routes``.

Each route stays thin: decode the request, call the core (``dinoseek.region_search``,
``dinoseek.correspondence``), encode the answer. Admission, the upload limit and the key are
checked in ASGI middleware first, as for every model route (``search_api.admission``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, UploadFile

from dinoseek.correspondence import MAX_PAIRS, Correspondence
from dinoseek.regions import parse_box
from dinoseek.search_types import LabelRequest, NeighbourQuery, SearchResult
from search_api.schemas import MatchedRegions, MatchResponse, Timings
from search_api.service import SearchService, StageClock

REGION_PATTERN = r"^[^,]+,[^,]+,[^,]+,[^,]+$"
RegionBox = Annotated[
    str | None,
    Query(
        description="search by this box of the query image: x,y,w,h as fractions of its "
        "width and height (e.g. 0.25,0.25,0.5,0.5); implies regions=true. The model sees the "
        "centre of a non-square image: a box in its cropped-off ends is refused (422)",
        json_schema_extra={"pattern": REGION_PATTERN},
    ),
]
Regions = Annotated[
    bool,
    Query(
        description="search by region: the images that contain something like the query "
        "(or its region), each hit with the box where it matches (collections indexed with "
        "--regions)"
    ),
]
MaxPairs = Annotated[
    int, Query(ge=1, le=MAX_PAIRS, description="at most this many pairs, strongest first")
]


async def search_by_region(
    service: SearchService,
    upload: UploadFile,
    collection: str,
    region: str | None,
    query: NeighbourQuery,
    labels: LabelRequest,
    clock: StageClock,
) -> SearchResult:
    """``POST /search`` by region: the box is checked before the image is decoded."""
    box = parse_box(region) if region is not None else None
    prepared = await service.prepare(await upload.read(), upload.filename or "upload", clock)
    return await service.search_regions(collection, prepared, box, query, labels, clock)


def match_response(
    collection: str, a: str | None, b: str, found: Correspondence, clock: StageClock
) -> MatchResponse:
    """The response of both match routes."""
    return MatchResponse(
        collection=collection,
        a=a,
        b=b,
        pairs=found.pairs,
        regions=MatchedRegions(a=found.region_a, b=found.region_b, score=found.region_score),
        timings_ms=Timings(**clock.as_dict()),
    )
