"""The one search path: image bytes -> pixels -> vector -> neighbours -> labels.

``Searcher`` is used by ``dinoseek search`` and by every HTTP route of the service, and the
client that goes through a running server speaks the same types (``dinoseek.search_types``),
so the answer to a query does not depend on where it is asked. The label policy lives here
only.

The service runs the steps on its own threads (decode pool, micro-batcher); the CLI calls
``search_images``, which runs them in order. Both follow one ``QueryBatch``.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any

import numpy as np

from dinoseek.dedup import DEFAULT_THRESHOLD, GROUP, KEEP, REASON, ROLE, THRESHOLD
from dinoseek.embedder_protocol import ImageEmbedder, VectorOrError, split_embedded
from dinoseek.errors import DinoseekError, PointNotFoundError, ProbeNotFoundError
from dinoseek.images import PreparedImage, prepare_image
from dinoseek.labels import PredictedLabel, knn_vote
from dinoseek.probe import ProbeCache
from dinoseek.search_types import (
    FILTER_FIELDS,
    BrowsePage,
    DuplicateGroupView,
    DuplicatesPage,
    Filters,
    LabelRequest,
    ListedPoint,
    NearDuplicate,
    Neighbour,
    NeighbourQuery,
    SearchResult,
)
from dinoseek.store import (
    UNSET,
    FilterValue,
    SearchHit,
    SearchQuery,
    StoredPoint,
    StoredProbe,
    VectorStore,
    validate_point_id,
)

# The others listed with each group of near-duplicates (a page must stay small).
MAX_GROUP_LISTED = 100


class Searcher:
    """Queries one store with one embedder's vectors (the collection must fit the embedder).

    The collections in ``keep`` (the one a runtime acquired) are held for the searcher's
    lifetime. Any other collection a query names is acquired for that query only and
    released after it, so that a server asked about another collection does not keep it from
    the processes that need it (``dinoseek index -c other``).

    Released, a collection may be replaced by another process (``dinoseek snapshot restore
    --replace`` with a snapshot of another model), and on a Qdrant server any client may
    replace one at any time. So a collection's space is checked again whenever its content
    may have changed: under each acquisition, when its state token is not the one it was
    checked at, and before and after each use where the store has no token (a server). A
    query never gets neighbours from vectors of another model: it gets
    ``CollectionMismatchError``.
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: ImageEmbedder,
        *,
        max_image_pixels: int,
        keep: Iterable[str] = (),
        probe_ttl_s: float = 10.0,
        duplicate_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self.store = store
        self.duplicate_threshold = duplicate_threshold
        self.embedder = embedder
        self.max_image_pixels = max_image_pixels
        self.probe_cache = ProbeCache(store.probes, embedder.space, ttl_s=probe_ttl_s)
        self._kept = set(keep)
        # Collection -> the state token its space was last found compatible at (None: the
        # store gave none).
        self._checked: dict[str, str | None] = {}
        self._users: Counter[str] = Counter()
        self._lock = threading.Lock()

    def check(self, name: str) -> None:
        """Refuse a collection built with another model before any work is done for it (once
        found compatible, this is not asked again: ``using`` checks again whenever the
        collection may have changed)."""
        if name not in self._checked:
            self._check_space(name, None)

    def _check_space(self, name: str, token: str | None) -> None:
        """Compare the collection's recorded space with the embedder's; remember the token it
        was found compatible at, or forget it when it no longer is."""
        try:
            self.embedder.space.check_compatible(self.store.collection_space(name), name)
        except DinoseekError:
            with self._lock:
                self._checked.pop(name, None)
            raise
        with self._lock:
            self._checked[name] = token

    def keep(self, name: str) -> None:
        """Check ``name`` and hold it from now on (the collection a server serves)."""
        self.check(name)
        with self._lock:
            self.store.acquire(name)
            self._kept.add(name)

    @contextmanager
    def using(self, name: str) -> Iterator[None]:
        """``name`` acquired for the duration of the block, its space checked again if its
        content may have changed since it was last checked (see the class doc)."""
        self.check(name)
        self._take(name)
        try:
            token = self.store.state_token(name)
            if token is None or self._checked.get(name) != token:
                self._check_space(name, token)
            yield
            if token is None:  # the store cannot tell what changed while the block ran
                self._check_space(name, None)
        finally:
            self._give_back(name)

    @contextmanager
    def holding(self, name: str) -> Iterator[None]:
        """``name`` acquired for the duration of the block, as ``using`` does but without
        checking its space: for reading payloads of any collection (whatever its model)."""
        self._take(name)
        try:
            yield
        finally:
            self._give_back(name)

    def _take(self, name: str) -> None:
        with self._lock:
            if name in self._kept:
                self.store.acquire(name)  # idempotent: held from the first time on
                return
            if not self._users[name]:
                self.store.acquire(name)
            self._users[name] += 1

    def _give_back(self, name: str) -> None:
        if name in self._kept:
            return
        with self._lock:
            self._users[name] -= 1
            if not self._users[name]:
                self.store.release(name)

    # -- the steps --------------------------------------------------------------------------

    def prepare(self, data: bytes, name: str) -> PreparedImage:
        """Bytes -> model-ready pixels (``ImageError`` for anything that is not an image)."""
        return prepare_image(
            data, self.embedder.preprocessing, max_pixels=self.max_image_pixels, name=name
        )

    def search_vectors(
        self,
        collection: str,
        vectors: Sequence[np.ndarray],
        query: NeighbourQuery,
        labels: LabelRequest,
    ) -> list[SearchResult]:
        """Neighbours (one store call for all vectors, with each one's most similar point when
        the neighbours may not show it), labels, and the point each near-duplicates."""
        searches = [query.for_vector(v) for v in vectors]
        if not query.shows_best_hit:
            searches += [SearchQuery(vector=v, top_k=1) for v in vectors]
        with self.using(collection):
            hits = self.store.search(collection, searches)
            found_hits, best = hits[: len(vectors)], hits[len(vectors) :] or hits
            results = []
            for vector, found, nearest in zip(vectors, found_hits, best, strict=True):
                predicted = self.predict_labels(collection, vector, labels)
                already = self.near_duplicate(nearest[:1])
                results.append(SearchResult(query.shape(found), predicted, already))
        return results

    def near_duplicate(self, best: Sequence[SearchHit]) -> NearDuplicate | None:
        """The best hit as a ``NearDuplicate`` when its score (as shown) is at or above the
        threshold of the last dedup that compared it, else ``duplicate_threshold``."""
        if not best:
            return None
        hit = Neighbour.from_hit(best[0])
        recorded = hit.payload.get(THRESHOLD)
        threshold = (
            float(recorded)
            if isinstance(recorded, int | float)
            and not isinstance(recorded, bool)
            and 0 < recorded <= 1
            else self.duplicate_threshold
        )
        if hit.score < threshold:
            return None
        return NearDuplicate(hit.id, hit.path, hit.score, threshold)

    def predict_labels(
        self,
        collection: str,
        vector: np.ndarray,
        request: LabelRequest,
        vote: Callable[[], list[PredictedLabel]] | None = None,
    ) -> list[PredictedLabel] | None:
        """The label policy: a probe when there is one (or ``method`` asks for it), else the
        kNN vote of the nearest points (``vote``: another way to find them, for a search by
        region); nothing when not asked for and there is no probe."""
        if request.with_labels is False:
            return None
        if vote is None:
            vote = functools.partial(self.vote, collection, vector, request)
        if request.method == "knn":
            return vote()
        probe = self.probe_cache.get(collection, request.probe)
        if probe is not None:
            return probe.predict(np.asarray(vector, dtype=np.float32)[None], request.top_k)[0]
        if request.method == "probe":
            raise ProbeNotFoundError(
                f"collection {collection!r} has no probe; train one with `dinoseek probe "
                "train`, or use the vote of the neighbours (label_method=knn)"
            )
        return vote() if request.with_labels else None

    def vote(
        self, collection: str, vector: np.ndarray, request: LabelRequest
    ) -> list[PredictedLabel]:
        """The kNN vote of the ``request.vote_neighbours`` nearest points of the whole
        collection (no filter, threshold or offset)."""
        nearest = SearchQuery(vector=vector, top_k=request.vote_neighbours)
        with self.using(collection):
            (hits,) = self.store.search(collection, [nearest])
        return knn_labels([Neighbour.from_hit(hit) for hit in hits], request.top_k)

    # -- whole searches ---------------------------------------------------------------------

    def search_images(
        self,
        collection: str,
        images: Sequence[tuple[bytes, str]],
        query: NeighbourQuery,
        labels: LabelRequest,
    ) -> list[SearchResult | DinoseekError]:
        """The whole path for (bytes, name) images, in order: each gets its result, or the
        error that stopped it (not an image, cannot be embedded)."""
        self.check(collection)
        batch = QueryBatch(len(images))
        ready = batch.prepared([self._prepared_or_error(data, name) for data, name in images])
        pixels = [image.pixels for image in ready]
        vectors = batch.embedded(
            self.embedder.embed_each(self.embedder.stack(pixels)) if pixels else []
        )
        return batch.searched(self.search_vectors(collection, vectors, query, labels))

    def _prepared_or_error(self, data: bytes, name: str) -> PreparedImage | DinoseekError:
        try:
            return self.prepare(data, name)
        except DinoseekError as error:
            return error

    def similar(self, collection: str, point_id: str, query: NeighbourQuery) -> list[Neighbour]:
        """Neighbours of a stored point (itself excluded), without a model call."""
        with self.using(collection):
            point = self.point(collection, point_id, with_vector=True)
            assert point.vector is not None, "fetched with its vector"
            nearest = query.for_vector(point.vector, exclude=[point.id])
            (hits,) = self.store.search(collection, [nearest])
        return query.shape(hits)

    def point(self, collection: str, point_id: str, *, with_vector: bool = False) -> StoredPoint:
        """A stored point (``InvalidPointIdError``, ``PointNotFoundError``)."""
        point_id = validate_point_id(point_id)
        with self.using(collection):
            found = self.store.get(collection, [point_id], with_vectors=with_vector)
        if not found or (with_vector and found[0].vector is None):
            raise PointNotFoundError(f"no point with id {point_id} in collection {collection!r}")
        return found[0]

    def browse(
        self,
        collection: str,
        *,
        limit: int,
        start: str | None,
        filters: Filters,
        unlabelled: bool = False,
    ) -> BrowsePage:
        """Up to ``limit`` points in id order from ``start`` (a point id; "random" for a
        random place), with where the next page starts; only points without a label when
        ``unlabelled``. Point ids are hashes, so id order is a random sample of the
        collection, and a random place a new one."""
        random = start == "random"
        first = str(uuid.uuid4()) if random else None if start is None else validate_point_id(start)
        conditions: dict[str, FilterValue] = {**filters.conditions()}
        if unlabelled:
            if filters.label is not None:  # a label, and none: nothing matches
                return BrowsePage([], None)
            conditions[FILTER_FIELDS["label"]] = UNSET
        with self.using(collection):
            points = self._page(collection, first, limit, conditions)
            if random and len(points) <= limit:  # too near the end: from the beginning
                points = self._page(collection, None, limit, conditions)
        following = points[limit].id if len(points) > limit else None
        return BrowsePage([ListedPoint.from_stored(p) for p in points[:limit]], following)

    def duplicates(self, collection: str, *, limit: int, start: str | None) -> DuplicatesPage:
        """Up to ``limit`` groups of near-duplicates from the kept point ``start``, each with
        at most ``MAX_GROUP_LISTED`` others (the kept point's ``duplicate_count`` says how
        many there are)."""
        first = None if start is None else validate_point_id(start)
        with self.using(collection):
            keepers = self._page(collection, first, limit, {ROLE: KEEP})
            groups = [
                DuplicateGroupView(
                    ListedPoint.from_stored(keeper),
                    [
                        ListedPoint.from_stored(member)
                        for member in islice(
                            self.store.scroll(collection, filters={GROUP: keeper.id}),
                            MAX_GROUP_LISTED + 1,
                        )
                        if member.id != keeper.id
                    ][:MAX_GROUP_LISTED],
                    _reason(keeper.payload),
                )
                for keeper in keepers[:limit]
            ]
        following = keepers[limit].id if len(keepers) > limit else None
        return DuplicatesPage(groups, following)

    def _page(
        self,
        collection: str,
        start: str | None,
        limit: int,
        filters: Filters | Mapping[str, FilterValue],
    ) -> list[StoredPoint]:
        """``limit`` + 1 points from ``start``: the last one is where the next page starts."""
        conditions = filters.conditions() if isinstance(filters, Filters) else filters
        scrolled = self.store.scroll(
            collection, filters=conditions, batch_size=limit + 1, start=start
        )
        return list(islice(scrolled, limit + 1))

    def probes(self, collection: str) -> list[StoredProbe]:
        """The collection's probes (cached for a few seconds)."""
        return self.probe_cache.list(collection)


def _reason(payload: Mapping[str, Any]) -> str | None:
    reason = payload.get(REASON)
    return reason if isinstance(reason, str) else None


def knn_labels(neighbours: Sequence[Neighbour], top_k: int = 5) -> list[PredictedLabel]:
    """The similarity-weighted vote of the neighbours' labels."""
    return knn_vote([n.label for n in neighbours], [n.score for n in neighbours], top_k=top_k)


class QueryBatch:
    """The images of one search with several images, from first step to last: each ends
    with its result or the error that stopped it (not an image, cannot be embedded), and the
    others are still answered. ``Searcher.search_images`` and the service's batch route run
    the steps where each runs them, and hand each step's outcomes here in order."""

    def __init__(self, count: int) -> None:
        self._outcomes: list[SearchResult | DinoseekError | None] = [None] * count
        self._live = list(range(count))

    def prepared(self, outcomes: Sequence[PreparedImage | BaseException]) -> list[PreparedImage]:
        """The images that decoded; the others keep their domain error (any other exception
        is raised: a bug, not a bad image)."""
        ready: list[tuple[int, PreparedImage]] = []
        for index, outcome in zip(self._live, outcomes, strict=True):
            if isinstance(outcome, DinoseekError):
                self._outcomes[index] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                ready.append((index, outcome))
        self._live = [index for index, _ in ready]
        return [image for _, image in ready]

    def embedded(self, outcomes: Sequence[VectorOrError]) -> list[np.ndarray]:
        """The vectors of the images that were embedded; the others keep their error."""
        embedded, failed = split_embedded(self._live, outcomes)
        for index, error in failed:
            self._outcomes[index] = error
        self._live = [index for index, _ in embedded]
        return [vector for _, vector in embedded]

    def searched(self, results: Sequence[SearchResult]) -> list[SearchResult | DinoseekError]:
        """Each image's result or error, in the order of the images."""
        for index, result in zip(self._live, results, strict=True):
            self._outcomes[index] = result
        return [outcome for outcome in self._outcomes if outcome is not None]
