"""Routes that add and delete points and delete or rename collections. Each is a write
(``openapi_extra=WRITE``: it always needs the key, ``search_api.writes``); adding an image
also runs the model, so it is admitted as the model routes are (``ADMITTED``).

- ``POST /points``: an image in, kept in the data directory's upload pool under its content
  hash and stored as a point (``dinoseek.uploads``); the same content twice is one point.
- ``DELETE /points/{id}``: a point and its added image's file; the image of a file in an
  indexed folder is refused (409): only ``dinoseek index`` takes it out, once the file is gone.
- ``DELETE /collections/{name}``, ``POST /collections/{name}/rename``: what ``dinoseek
  collection delete/rename`` do (``dinoseek.collection_admin``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from dinoseek.labelling import LABEL_PATTERN, MAX_LABEL_LENGTH
from dinoseek.search_types import Neighbour
from dinoseek.settings import COLLECTION_NAME_PATTERN, validate_collection_name
from search_api.admission import ADMITTED
from search_api.errors import ApiError
from search_api.point_writes import PointWriter
from search_api.route_params import ERROR_RESPONSES, Collection, Neighbours, PointId
from search_api.schemas import ErrorBody, Timings
from search_api.service import StageClock
from search_api.writes import WRITE

point_routes = APIRouter(responses=ERROR_RESPONSES, tags=["writes"])

WRITE_RESPONSES: dict[int | str, dict[str, object]] = {
    403: {"model": ErrorBody, "description": "writes need the key (see the description)"}
}
CollectionName = Annotated[
    str,
    Path(
        description="a collection's name",
        json_schema_extra={"pattern": COLLECTION_NAME_PATTERN.pattern},
    ),
]


class AddedResponse(BaseModel):
    """The point of an added image: `created` false when its content was a point already
    (nothing was stored again); its neighbours, itself left out."""

    id: str
    collection: str
    created: bool
    timings_ms: Timings
    results: list[Neighbour]


class DeletedPointResponse(BaseModel):
    """A point deleted; `upload_removed`: its added image's file was removed too (false
    while another collection lists the same image)."""

    id: str
    collection: str
    upload_removed: bool


class DeletedCollectionResponse(BaseModel):
    """A collection deleted, with its probes, saved catalog and failures report, and the
    number of its added images whose files were removed (those no other collection lists)."""

    collection: str
    uploads_removed: int


class RenameRequest(BaseModel):
    """The new name."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(
        description="the collection's new name",
        pattern=COLLECTION_NAME_PATTERN.pattern,
        examples=["photos-2026"],
    )


class RenamedResponse(BaseModel):
    """A collection renamed: `method` `moved` (the embedded store moves its directory) or
    `copied` (a Qdrant server copies its points to the new name, then deletes the old)."""

    collection: str
    to: str
    points: int
    probes: int
    method: str


def get_writer(request: Request) -> PointWriter:
    """The app's point writer (built by the lifespan)."""
    writer: PointWriter = request.app.state.point_writer
    return writer


Writer = Annotated[PointWriter, Depends(get_writer)]


def _checked_name(name: str) -> str:
    try:
        return validate_collection_name(name)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def _collection(writer: PointWriter, collection: str | None) -> str:
    """The collection a request names (the service's by default), checked."""
    return _checked_name(writer.service.settings.collection if collection is None else collection)


@point_routes.post(
    "/points",
    response_model=AddedResponse,
    summary="Add an image",
    openapi_extra={**WRITE, **ADMITTED},
    responses=WRITE_RESPONSES,
)
async def add_point(
    writer: Writer,
    image: Annotated[UploadFile, File(description="the image", json_schema_extra={"minLength": 1})],
    neighbours: Annotated[Neighbours, Depends()],
    label: Annotated[
        str | None,
        Form(
            description=f"its label (1 to {MAX_LABEL_LENGTH} characters, no control "
            "characters, no spaces at either end), marked `label_source: api`",
            max_length=MAX_LABEL_LENGTH,
            pattern=LABEL_PATTERN.pattern,
        ),
    ] = None,
) -> AddedResponse:
    """Add an image to the collection (created for the service's model if it does not
    exist): kept in the data directory (`DATA_DIR/.uploads`, under its sha256) and stored as
    a point whose id is the one `dinoseek index` gives the same content. The same content
    twice is one point: `created` is false the second time (a `label` given then is set on
    it). The answer has the neighbours of the point, itself left out, as `/search` has them
    (the same query parameters). Needs the key."""
    clock = StageClock()
    name = _collection(writer, neighbours.collection)
    added = await writer.add(
        name, await image.read(), image.filename or "upload", label, neighbours.query(), clock
    )
    return AddedResponse(
        id=added.id,
        collection=name,
        created=added.created,
        timings_ms=Timings(**clock.as_dict()),
        results=added.neighbours,
    )


@point_routes.delete(
    "/points/{point_id:point_id}",  # not /points/labels (search_api.route_table)
    response_model=DeletedPointResponse,
    summary="Delete a point",
    openapi_extra=WRITE,
    responses={
        **WRITE_RESPONSES,
        409: {
            "model": ErrorBody,
            "description": "the point is the image of a file in an indexed folder (or the "
            "collection was built with another model)",
        },
    },
)
async def delete_point(
    writer: Writer, point_id: PointId, collection: Collection = None
) -> DeletedPointResponse:
    """Delete a point added with `POST /points`, and its image's file unless another
    collection lists the same image. The image of a file in an indexed folder is refused with
    409: the API never deletes a file of yours; delete or move the file, then run `dinoseek
    index` on its folder. Needs the key."""
    name = _collection(writer, collection)
    deleted = await writer.delete_point(name, point_id)
    return DeletedPointResponse(
        id=deleted.id, collection=name, upload_removed=deleted.upload_removed
    )


@point_routes.delete(
    "/collections/{name}",
    response_model=DeletedCollectionResponse,
    summary="Delete a collection",
    openapi_extra=WRITE,
    responses=WRITE_RESPONSES,
)
async def delete_collection(writer: Writer, name: CollectionName) -> DeletedCollectionResponse:
    """Delete a collection, as `dinoseek collection delete` does: its points, its probes,
    its saved catalog and failures report, and the files of the images added to it that no
    other collection lists. Deleting the service's own collection leaves the service
    answering 404 for it until an image is added or `dinoseek index` builds it again. Needs
    the key."""
    deleted = await writer.delete_collection(_checked_name(name))
    return DeletedCollectionResponse(
        collection=deleted.name, uploads_removed=len(deleted.uploads_removed)
    )


@point_routes.post(
    "/collections/{name}/rename",
    response_model=RenamedResponse,
    summary="Rename a collection",
    openapi_extra=WRITE,
    responses={
        **WRITE_RESPONSES,
        409: {"model": ErrorBody, "description": "a collection of the new name exists"},
    },
)
async def rename_collection(
    writer: Writer, name: CollectionName, body: RenameRequest
) -> RenamedResponse:
    """Rename a collection, as `dinoseek collection rename` does, with its probes, saved
    catalog and failures report. A service started on the old name keeps that name as its
    default: name the new one with `?collection=` or restart it with `-c`. Needs the key."""
    old, new = _checked_name(name), _checked_name(body.to)
    done, _moved = await writer.rename_collection(old, new)
    return RenamedResponse(
        collection=done.name,
        to=done.new_name,
        points=done.points,
        probes=done.probes,
        method=done.method,
    )
