"""A collection's vectors in one float32 matrix, read from the store a page at a time.

The vectors go straight into a preallocated matrix (never a list of arrays), with the point
ids and the few payload fields a job asks for beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseek.store import VectorStore

PAGE = 2048


@dataclass(frozen=True)
class CollectionVectors:
    """Point ids, their vectors (N, dim) and the chosen payload fields, in id order."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]


def read_vectors(
    store: VectorStore,
    collection: str,
    fields: Sequence[str],
    *,
    derive: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    on_points: Callable[[int], None] | None = None,
) -> CollectionVectors:
    """Every point of an acquired collection with its vector and ``fields`` of its payload,
    plus what ``derive`` makes of the whole payload (a few facts instead of a field too
    large to keep for every point). ``on_points(n)`` is called as pages arrive."""
    dim = store.collection_space(collection).dim
    capacity = max(1, store.count(collection))
    vectors = np.empty((capacity, dim), dtype=np.float32)
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []
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
    return CollectionVectors(ids, vectors[: len(ids)], payloads)
