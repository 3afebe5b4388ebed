"""A collection's vectors in one matrix, read from the store a page at a time.

The vectors go straight into a preallocated matrix (never a list of arrays), with the point
ids and the few payload fields a job asks for beside them, kept by field
(``dinoseek.payload_table``: a dict per point costs several hundred bytes a point). The matrix
is float32, or float16 to halve the memory of a large collection (dedup: the store's own
mapping of the vectors is resident beside it); a float16 matrix only finds candidates, and
``CollectionVectors.exact`` fetches the stored float32 vectors of the rows to decide on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dinoseek.payload_table import PayloadTable
from dinoseek.store import VectorStore

PAGE = 2048


@dataclass(frozen=True)
class CollectionVectors:
    """Point ids, their vectors (N, dim) and the chosen payload fields, in id order; and, for
    a float16 matrix, how to fetch the stored float32 vectors by id."""

    ids: list[str]
    vectors: np.ndarray
    payloads: PayloadTable
    fetch: Callable[[Sequence[str]], dict[str, np.ndarray]] | None = None

    def without_vectors(self) -> CollectionVectors:
        """The same points and payloads without the matrix (what writing marks needs), so
        that dropping this object's last reference frees the matrix."""
        empty = np.empty((0, self.vectors.shape[1]), dtype=self.vectors.dtype)
        return replace(self, vectors=empty, fetch=None)

    def exact(self, rows: np.ndarray) -> np.ndarray:
        """The float32 vectors of ``rows``: the matrix's own, or the stored ones for a float16
        matrix (a point deleted since it was read keeps its float16 copy)."""
        if self.vectors.dtype == np.float32 or self.fetch is None:
            return np.asarray(self.vectors[rows], dtype=np.float32)
        found = np.asarray(self.vectors[rows], dtype=np.float32)
        stored = self.fetch([self.ids[int(row)] for row in rows])
        for position, row in enumerate(rows.tolist()):
            vector = stored.get(self.ids[row])
            if vector is not None:
                found[position] = vector
        return found


def read_vectors(
    store: VectorStore,
    collection: str,
    fields: Sequence[str],
    *,
    derive: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    on_points: Callable[[int], None] | None = None,
    dtype: type[np.floating[Any]] = np.float32,
) -> CollectionVectors:
    """Every point of an acquired collection with its vector and ``fields`` of its payload,
    plus what ``derive`` makes of the whole payload (a few facts instead of a field too
    large to keep for every point), in a matrix of ``dtype`` (float32 or float16).
    ``on_points(n)`` is called as pages arrive."""
    dim = store.collection_space(collection).dim
    capacity = max(1, store.count(collection))
    vectors = np.empty((capacity, dim), dtype=dtype)
    ids: list[str] = []
    payloads = PayloadTable(capacity)
    pending = 0
    for point in store.scroll(collection, with_vectors=True, batch_size=PAGE):
        if point.vector is None:
            continue
        if len(ids) == capacity:  # points added while reading
            capacity *= 2
            vectors = np.resize(vectors, (capacity, dim))
        vectors[len(ids)] = point.vector
        ids.append(point.id)
        kept = {key: point.payload[key] for key in fields if key in point.payload}
        payloads.append(kept if derive is None else {**kept, **derive(point.payload)})
        pending += 1
        if on_points is not None and pending == PAGE:
            on_points(pending)
            pending = 0
    if on_points is not None and pending:
        on_points(pending)
    fetch = None if dtype == np.float32 else _fetcher(store, collection)
    return CollectionVectors(ids, vectors[: len(ids)], payloads, fetch)


def _fetcher(
    store: VectorStore, collection: str
) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
    def fetch(ids: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), PAGE):
            for point in store.get(collection, ids[start : start + PAGE], with_vectors=True):
                if point.vector is not None:
                    found[point.id] = np.asarray(point.vector, dtype=np.float32)
        return found

    return fetch
