"""Labels given by hand (on the page, over HTTP), and the points to label next.

- ``set_labels`` writes a label to points' payloads, marked ``label_source: api``: an index
  run keeps such a label unless it is told to relabel (``dinoseek index --relabel``).
- ``least_certain``: the unlabelled points a probe is least sure about (the smallest margin
  between its two most probable classes), among a bounded sample of them.
- ``predict_points``: a probe's labels of stored points, from their stored vectors.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from dinoseek.errors import ConfigError, PointNotFoundError
from dinoseek.labels import PredictedLabel
from dinoseek.probe.model import LinearProbe
from dinoseek.store import UNSET, StoredPoint, VectorStore, validate_point_id

LABEL_FIELD = "label"
LABEL_SOURCE_FIELD = "label_source"
API_SOURCE = "api"  # a label set over HTTP (the page): kept by index runs
MAX_LABEL_LENGTH = 200
# A label is text without control characters, and without spaces at either end.
LABEL_PATTERN = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$")
WRITE_CHUNK = 1000
MAX_CANDIDATES = 20_000


def check_label(label: str | None) -> str | None:
    """``label`` if it is None (no label) or a valid label, else ``ConfigError``."""
    if label is None:
        return None
    if len(label) > MAX_LABEL_LENGTH or not LABEL_PATTERN.fullmatch(label):
        raise ConfigError(
            f"invalid label {label[:50]!r}: use 1 to {MAX_LABEL_LENGTH} characters without "
            "control characters or spaces at either end"
        )
    return label


def set_labels(
    store: VectorStore,
    collection: str,
    ids: Sequence[str],
    label: str | None,
    *,
    skip_missing: bool = False,
) -> list[str]:
    """Give the points of ``ids`` the label ``label`` (None: no label), marked as set over
    HTTP; the ids written, without repeats. Unless ``skip_missing`` (a cluster's members,
    some deleted since), nothing is written unless every id is a point of the acquired
    collection (``PointNotFoundError`` names those that are not)."""
    label = check_label(label)
    wanted = list(dict.fromkeys(validate_point_id(i) for i in ids))
    existing = _existing(store, collection, wanted)
    missing = [i for i in wanted if i not in existing]
    if missing and not skip_missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PointNotFoundError(
            f"no point with id {', '.join(missing[:5])}{more} in collection {collection!r}; "
            "nothing was labelled"
        )
    present = [i for i in wanted if i in existing]
    fields = {LABEL_FIELD: label, LABEL_SOURCE_FIELD: API_SOURCE}
    written: list[str] = []
    for start in range(0, len(present), WRITE_CHUNK):
        chunk = present[start : start + WRITE_CHUNK]
        try:
            store.merge_payload(collection, chunk, fields)
        except Exception:  # a point deleted meanwhile: the store refuses the whole write
            still = [p.id for p in store.get(collection, chunk)]
            if len(still) == len(chunk):
                raise
            store.merge_payload(collection, still, fields)
            chunk = still
        written += chunk
    return written


def _existing(store: VectorStore, collection: str, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), WRITE_CHUNK):
        found.update(p.id for p in store.get(collection, ids[start : start + WRITE_CHUNK]))
    return found


@dataclass(frozen=True)
class Uncertain:
    """An unlabelled point, the probe's labels of it, and the margin between its two most
    probable classes (0: a toss-up)."""

    point: StoredPoint
    margin: float
    predicted: list[PredictedLabel]


@dataclass(frozen=True)
class UncertainPage:
    """The points to label next, least certain first, and how many unlabelled points they
    were chosen among (all of them when ``candidates`` is below the sample's bound)."""

    points: list[Uncertain]
    candidates: int


def least_certain(
    store: VectorStore,
    collection: str,
    probe: LinearProbe,
    limit: int,
    *,
    max_candidates: int = MAX_CANDIDATES,
    page: int = 1024,
) -> UncertainPage:
    """The ``limit`` unlabelled points of an acquired collection with the smallest margins,
    among up to ``max_candidates`` of them read from a random place in id order (a uniform
    sample: ids are hashes)."""
    start = str(uuid.uuid4())
    unlabelled = {LABEL_FIELD: UNSET}
    ids: list[str] = []
    margins: list[np.ndarray] = []
    seen: set[str] = set()
    for first in (start, None):  # to the end, then from the beginning
        scrolled = store.scroll(
            collection, with_vectors=True, filters=unlabelled, batch_size=page, start=first
        )
        for batch in _batches(scrolled, page):
            batch = [p for p in batch if p.vector is not None and p.id not in seen]
            batch = batch[: max_candidates - len(ids)]
            if not batch:
                break
            seen.update(p.id for p in batch)
            ids += [p.id for p in batch]
            margins.append(_margins(probe.predict_proba(_vectors(batch))))
            if len(ids) >= max_candidates:
                break
        if len(ids) >= max_candidates:
            break
    if not ids:
        return UncertainPage([], 0)
    every = np.concatenate(margins)
    chosen = np.argsort(every, kind="stable")[:limit]
    points = store.get(collection, [ids[i] for i in chosen.tolist()], with_vectors=True)
    by_id = {p.id: p for p in points}
    found = [(ids[i], float(every[i])) for i in chosen.tolist() if ids[i] in by_id]
    predicted = _predict(probe, [by_id[i] for i, _ in found])
    return UncertainPage(
        [
            Uncertain(_without_vector(by_id[i]), round(margin, 6), labels)
            for (i, margin), labels in zip(found, predicted, strict=True)
        ],
        len(ids),
    )


def predict_points(
    store: VectorStore, collection: str, probe: LinearProbe, ids: Sequence[str], top_k: int = 1
) -> dict[str, list[PredictedLabel]]:
    """The probe's ``top_k`` labels of each stored point of ``ids`` (unknown ids are left
    out), from its stored vector: no image is read."""
    wanted = list(dict.fromkeys(validate_point_id(i) for i in ids))
    points = [p for p in store.get(collection, wanted, with_vectors=True) if p.vector is not None]
    return {p.id: labels for p, labels in zip(points, _predict(probe, points, top_k), strict=True)}


def _predict(
    probe: LinearProbe, points: Sequence[StoredPoint], top_k: int = 1
) -> list[list[PredictedLabel]]:
    if not points:
        return []
    return probe.predict(_vectors(points), top_k)


def _vectors(points: Sequence[StoredPoint]) -> np.ndarray:
    """The stored vectors of points read with theirs."""
    return np.stack([p.vector for p in points if p.vector is not None])


def _margins(probabilities: np.ndarray) -> np.ndarray:
    """The top probability minus the second of each row."""
    top_two = -np.partition(-probabilities, 1, axis=1)[:, :2]
    return np.asarray(top_two[:, 0] - top_two[:, 1])


def _batches(points: Iterable[StoredPoint], size: int) -> Iterator[list[StoredPoint]]:
    iterator = iter(points)
    while batch := list(islice(iterator, size)):
        yield batch


def _without_vector(point: StoredPoint) -> StoredPoint:
    return StoredPoint(point.id, point.payload)
