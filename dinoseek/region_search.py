"""Search by region: the images that contain something like the query, and where.

The query is the query image's own patch tokens, mean-pooled over a box (the whole query
when none is given), from the same forward pass as its CLS vector. Each stored image of a
collection with regions scores as its best window (``dinoseek.regions``); the best window,
mapped back through that image's resize and centre crop, is the hit's ``region``.

Filters, thresholds, collapsing and labels are the whole-image search's
(``dinoseek.search``): only the vector searched and the region of each hit differ. Labels
follow the same policy, with one difference: the kNN vote is taken over the points of the
whole collection nearest by region (no filter, threshold or offset, as every vote). A probe
classifies the query's CLS vector, which describes the whole query image: with a box, only
the vote is used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.errors import ConfigError, EmbeddingError, RegionsNotIndexedError
from dinoseek.images import PreparedImage
from dinoseek.input_geometry import InputGeometry
from dinoseek.labels import PredictedLabel
from dinoseek.regions import Box, RegionSpec, best_window, pooling_rows
from dinoseek.search import Searcher, knn_labels
from dinoseek.search_types import LabelRequest, Neighbour, NeighbourQuery, SearchResult
from dinoseek.store import SearchHit, SearchQuery

# A region search brings each hit's region vectors back; this bounds that transfer.
MAX_REGION_TOP_K = 200


@dataclass(frozen=True)
class RegionQuery:
    """A query image's vectors for a region search: its patch tokens pooled over ``box``
    (None: the whole image) and its CLS vector."""

    pooled: np.ndarray
    cls: np.ndarray
    box: Box | None


def pooling_for(embedder: ImageEmbedder, image: PreparedImage, box: Box | None) -> np.ndarray:
    """The pooling row of ``box`` (fractions of the original image) over the model's patch
    grid, for this image's geometry (``InvalidRegionError`` when the model sees too little
    of it)."""
    geometry = InputGeometry.of(embedder.preprocessing, image.width, image.height)
    inside = geometry.to_input(box or Box.whole(), embedder.patch_grid)
    return pooling_rows([inside], embedder.patch_grid)


def region_query(embedder: ImageEmbedder, image: PreparedImage, box: Box | None) -> RegionQuery:
    """One forward pass: the query's pooled tokens and CLS vector (``EmbeddingError``)."""
    pooling = pooling_for(embedder, image, box)
    (embedded,) = embedder.embed_each_pooled(embedder.stack([image.pixels]), pooling)
    if isinstance(embedded, EmbeddingError):
        raise embedded
    return RegionQuery(pooled=embedded.pooled[0], cls=embedded.cls, box=box)


def collection_spec(searcher: Searcher, collection: str) -> RegionSpec:
    """The collection's region layout, which must fit the embedder's patch grid."""
    searcher.check(collection)
    spec = searcher.store.collection_regions(collection)
    if spec is None:
        raise RegionsNotIndexedError(
            f"collection {collection!r} has no region vectors; add them with "
            f"`dinoseek index FOLDER --regions -c {collection}` (each image is embedded "
            "once more), then search by region"
        )
    if spec.patch_grid != searcher.embedder.patch_grid:
        raise RegionsNotIndexedError(
            f"collection {collection!r} holds region vectors of a "
            f"{spec.patch_grid[0]}x{spec.patch_grid[1]} patch grid; "
            f"{searcher.embedder.model_id} makes {searcher.embedder.patch_grid}"
        )
    return spec


def search_regions(
    searcher: Searcher,
    collection: str,
    queries: Sequence[RegionQuery],
    query: NeighbourQuery,
    labels: LabelRequest,
) -> list[SearchResult]:
    """Neighbours by region (one store call for all queries), each with its region, and the
    labels of each query."""
    if query.top_k > MAX_REGION_TOP_K:
        raise ConfigError(
            f"top_k {query.top_k}: a region search returns at most {MAX_REGION_TOP_K} "
            "neighbours (each brings its region vectors)"
        )
    spec = collection_spec(searcher, collection)
    requests = [dataclasses.replace(query.for_vector(q.pooled), regions=True) for q in queries]
    with searcher.using(collection):
        found = searcher.store.search(collection, requests)
    windows = spec.windows()
    results = []
    for region_query_, hits in zip(queries, found, strict=True):
        by_id = {hit.id: hit for hit in hits}
        neighbours = [
            _with_region(neighbour, by_id[neighbour.id], region_query_.pooled, windows, searcher)
            for neighbour in query.shape(hits)
        ]
        request = labels if region_query_.box is None else _box_labels(labels)
        vote = functools.partial(_region_vote, searcher, collection, region_query_.pooled, request)
        predicted = searcher.predict_labels(collection, region_query_.cls, request, vote)
        results.append(SearchResult(neighbours, predicted))
    return results


def _box_labels(labels: LabelRequest) -> LabelRequest:
    """Labels of a box: the vote when asked for (a probe classifies the query's CLS vector,
    which describes the whole query image, not the box)."""
    if labels.method == "probe":
        raise ConfigError(
            "a probe classifies whole images, and this query is a box of one: use the vote "
            "of the neighbours (label_method=knn), or search without a box"
        )
    if labels.with_labels or labels.method == "knn":
        return dataclasses.replace(labels, method="knn")
    return dataclasses.replace(labels, with_labels=False)


def _region_vote(
    searcher: Searcher, collection: str, pooled: np.ndarray, labels: LabelRequest
) -> list[PredictedLabel]:
    """The kNN vote of the ``labels.vote_neighbours`` points of the whole collection nearest
    to ``pooled`` by region."""
    nearest = SearchQuery(vector=pooled, top_k=labels.vote_neighbours, regions=True)
    with searcher.using(collection):
        (hits,) = searcher.store.search(collection, [nearest])
    return knn_labels([Neighbour.from_hit(hit) for hit in hits], labels.top_k)


def _with_region(
    neighbour: Neighbour,
    hit: SearchHit,
    pooled: np.ndarray,
    windows: list[Box],
    searcher: Searcher,
) -> Neighbour:
    """The neighbour with the box of its best window in its original image (None when its
    payload records no size or it has no region vectors)."""
    width, height = hit.payload.get("width"), hit.payload.get("height")
    if hit.regions is None or len(hit.regions) != len(windows):
        return neighbour
    if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
        return neighbour
    best, _ = best_window(pooled, hit.regions)
    geometry = InputGeometry.of(searcher.embedder.preprocessing, width, height)
    box = geometry.to_original(windows[best])
    if box is None:
        return neighbour
    return dataclasses.replace(neighbour, region=box.rounded())


def search_image_regions(
    searcher: Searcher,
    collection: str,
    image: tuple[bytes, str],
    box: Box | None,
    query: NeighbourQuery,
    labels: LabelRequest,
) -> SearchResult:
    """The whole path for one (bytes, name) image: decode, pool the box, search."""
    collection_spec(searcher, collection)  # refused before the model runs
    prepared = searcher.prepare(*image)
    (result,) = search_regions(
        searcher, collection, [region_query(searcher.embedder, prepared, box)], query, labels
    )
    return result
