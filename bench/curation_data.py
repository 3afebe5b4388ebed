"""The data of ``bench/curation.py``: clustered unit vectors with planted near-duplicates, in
dinoseek's embedded store, and the exact answers the recall is measured against.

Points of a cluster are alike but below the threshold (about 0.55 with each other at 768
dimensions); a planted near-duplicate is a copy of a point with noise of norm 0.05 to 0.30
(similarity about 0.96 to 0.999 at 768 dimensions, spread over that range so that many pairs
lie close to the threshold). A fifth of the planted copies form families of twelve (a point,
its copies, copies of copies), the rest single copies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinoseek.runtime import Runtime
from dinoseek.settings import Settings
from dinoseek.similarity import exact_scores, pairs_above
from dinoseek.space import EmbeddingSpace
from dinoseek.store import PointRecord, VectorStore

CLUSTER_SIZE = 50
FAMILY = 12
NOISE = (0.05, 0.30)
CHUNK = 65_536
BATCH = 1024


@dataclass(frozen=True)
class Planted:
    """Vectors and the planted (source, copy) pairs: copies are rows of ``vectors``, sources
    too, or rows of the earlier set the copies were made of."""

    vectors: np.ndarray
    pairs: np.ndarray


class Generator:
    """Clustered vectors from one set of cluster centres, with planted near-duplicates."""

    def __init__(self, count: int, dim: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        centres = self.rng.standard_normal((max(1, count // CLUSTER_SIZE), dim))
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)

    def originals(self, out: np.ndarray) -> None:
        """Fill ``out`` with points of random clusters (a chunk at a time: float32 only)."""
        for start in range(0, len(out), CHUNK):
            stop = min(len(out), start + CHUNK)
            rows = self.centres[self.rng.integers(0, len(self.centres), stop - start)]
            noise = self.rng.standard_normal((stop - start, self.dim), dtype=np.float32)
            out[start:stop] = _unit(rows + noise * np.float32(0.9 / np.sqrt(self.dim)))

    def copy_of(self, source: np.ndarray) -> np.ndarray:
        """A near-duplicate of ``source`` (rows), noise drawn from ``NOISE``."""
        scale = self.rng.uniform(*NOISE, len(source)).astype(np.float32) / np.sqrt(self.dim)
        noise = self.rng.standard_normal(source.shape, dtype=np.float32) * scale[:, None]
        return _unit(source + noise)

    def build(self, count: int, planted: int, *, base: np.ndarray | None = None) -> Planted:
        """``count`` vectors whose last ``planted`` are copies: of their own originals, or
        of rows of ``base`` when given (their source rows then index ``base``)."""
        vectors = np.empty((count, self.dim), dtype=np.float32)
        originals = count - planted
        self.originals(vectors[:originals])
        pool = base if base is not None else vectors[:originals]
        families = planted // 5 // (FAMILY - 1) if base is None else 0
        pairs: list[tuple[int, int]] = []
        chosen = self.rng.choice(len(pool), planted, replace=False)
        row = originals
        for family in range(families):  # a source, copies of it and copies of copies
            members = [int(chosen[family])]
            for _ in range(FAMILY - 1):
                parent = members[int(self.rng.integers(len(members)))]
                vectors[row] = self.copy_of(vectors[parent][None])[0]
                pairs.append((parent, row))
                members.append(row)
                row += 1
        singles = chosen[families : families + count - row]
        vectors[row:] = self.copy_of(pool[singles])
        pairs += [(int(s), row + k) for k, s in enumerate(singles)]
        return Planted(vectors, np.asarray(pairs, dtype=np.int64).reshape(-1, 2))


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def point_id(row: int) -> str:
    """The point id of a row (their order is the store's order)."""
    return str(uuid.UUID(int=row + 1))


def runtime_store(directory: Path) -> VectorStore:
    """dinoseek's embedded store, opened by the runtime as a command opens it."""
    settings = Settings(data_dir=directory, collection="bench")
    return Runtime.open(settings, collection="none", model=False).store


def fill(store: VectorStore, name: str, vectors: np.ndarray, first_row: int = 0) -> None:
    """Upsert ``vectors`` as rows ``first_row`` on (creating the collection)."""
    fingerprint = (1.0,) + (0.0,) * (vectors.shape[1] - 1)
    space = EmbeddingSpace("bench/random", vectors.shape[1], {}, fingerprint)
    store.ensure_collection(name, space)
    store.acquire(name)
    for start in range(0, len(vectors), BATCH):
        stop = min(start + BATCH, len(vectors))
        rows = range(first_row + start, first_row + stop)
        store.upsert(
            name,
            [
                PointRecord(point_id(r), vectors[r - first_row], {"path": f"/bench/{r:07d}.jpg"})
                for r in rows
            ],
        )


def pairs_at(vectors: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """The planted pairs whose exact similarity is at or above ``threshold``."""
    scores = exact_scores(vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    return pairs[scores >= threshold]


def sample_pairs(
    vectors: np.ndarray, sample: int, threshold: float, seed: int
) -> tuple[np.ndarray, int]:
    """Every pair at or above ``threshold`` that involves one of ``sample`` random rows,
    found by comparing those rows with every row (exact); and the rows compared."""
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), sample, replace=False))
    found = []
    for pairs in pairs_above(vectors[rows], vectors, threshold):
        first, second = rows[pairs.rows], pairs.columns
        other = first != second
        found.append(np.stack([first[other], second[other]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64), len(rows)
    both = np.sort(np.concatenate(found), axis=1)
    return np.unique(both, axis=0), len(rows)
