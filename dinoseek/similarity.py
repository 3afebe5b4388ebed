"""Every pair of vectors above a cosine similarity, by blocked matrix products.

The vectors are unit length, so a dot product is the cosine. Rows are compared a block at a
time, so memory stays at one block of similarities (``block_rows`` x columns) whatever the
collection's size. On a GPU the products run in bfloat16 (the pairs are then checked again
in float32 on the CPU, so a rounding never adds a pair below the threshold); on a CPU in
float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Similarities held at once: block_rows x columns values (float32 on a CPU, bfloat16 on a
# GPU).
BLOCK_ELEMENTS = 16 * 1024 * 1024
BLOCK_ELEMENTS_GPU = 256 * 1024 * 1024
# A bfloat16 product is within this of the float32 one for unit vectors of DINOv2's sizes.
BF16_MARGIN = 0.02


@dataclass(frozen=True)
class Pairs:
    """Pairs (rows[k], columns[k]) with similarity scores[k], as arrays."""

    rows: np.ndarray
    columns: np.ndarray
    scores: np.ndarray


def pairs_above(
    queries: np.ndarray,
    base: np.ndarray,
    threshold: float,
    *,
    query_offset: int | None = None,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[Pairs]:
    """Pairs (i, j) with ``queries[i] . base[j] >= threshold``, a block of rows at a time.

    With ``query_offset``, ``queries`` are ``base[query_offset:...]`` and only pairs with
    ``j > query_offset + i`` are compared and returned (each pair once, no point with
    itself). ``on_rows(n)`` is called after each block with the rows it covered.
    """
    import torch  # here: the search path imports this module's callers without torch

    use_bf16 = device.startswith("cuda")
    budget = BLOCK_ELEMENTS_GPU if use_bf16 else BLOCK_ELEMENTS
    block = max(1, min(queries.shape[0], budget // max(1, base.shape[0])))
    base_t = _tensor(base, device, use_bf16)
    cut = threshold - BF16_MARGIN if use_bf16 else threshold
    for start in range(0, queries.shape[0], block):
        stop = min(start + block, queries.shape[0])
        rows_t = _tensor(queries[start:stop], device, use_bf16)
        first_column = 0 if query_offset is None else query_offset + start
        hit = (rows_t @ base_t[first_column:].T) >= cut
        if query_offset is not None:  # the block's own diagonal and what lies left of it
            hit = torch.triu(hit, diagonal=1)
        found = hit.nonzero().cpu().numpy()
        if found.size:
            rows = found[:, 0] + start
            columns = found[:, 1] + first_column
            exact = np.einsum("ij,ij->i", queries[rows], base[columns]).astype(np.float32)
            keep = exact >= threshold
            yield Pairs(rows[keep], columns[keep], exact[keep])
        if on_rows is not None:
            on_rows(stop - start)


def compute_device(name: str) -> str:
    """``auto``, ``cpu`` or ``cuda`` -> the device the products run on (``ConfigError`` for
    cuda without one)."""
    from dinoseek.embedder import resolve_device

    return resolve_device(name).type


def _tensor(array: np.ndarray, device: str, bf16: bool) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    return tensor.to(torch.bfloat16) if bf16 else tensor


def best_matches(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index in ``base`` of its most similar vector and the
    similarity (float32, as computed on ``device``)."""
    count = queries.shape[0]
    best = np.zeros(count, dtype=np.int64)
    scores = np.full(count, -np.inf, dtype=np.float32)
    if base.shape[0] == 0:
        return best, scores
    budget = BLOCK_ELEMENTS_GPU if device.startswith("cuda") else BLOCK_ELEMENTS
    block = max(1, min(count, budget // base.shape[0]))
    base_t = _tensor(base, device, False)
    for start in range(0, count, block):
        stop = min(start + block, count)
        similarity = _tensor(queries[start:stop], device, False) @ base_t.T
        value, index = similarity.max(dim=1)
        best[start:stop] = index.cpu().numpy()
        scores[start:stop] = value.float().cpu().numpy()
        if on_rows is not None:
            on_rows(stop - start)
    return best, scores


def top_matches(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    *,
    device: str = "cpu",
    on_rows: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the indices in ``base`` of its ``k`` most similar vectors, best
    first, and their similarities (k is capped at the size of ``base``)."""
    import torch

    k = max(1, min(k, base.shape[0]))
    count = queries.shape[0]
    index = np.zeros((count, k), dtype=np.int64)
    scores = np.zeros((count, k), dtype=np.float32)
    budget = BLOCK_ELEMENTS_GPU if device.startswith("cuda") else BLOCK_ELEMENTS
    block = max(1, min(count, budget // max(1, base.shape[0])))
    base_t = _tensor(base, device, False)
    for start in range(0, count, block):
        stop = min(start + block, count)
        found = torch.topk(_tensor(queries[start:stop], device, False) @ base_t.T, k, dim=1)
        index[start:stop] = found.indices.cpu().numpy()
        scores[start:stop] = found.values.float().cpu().numpy()
        if on_rows is not None:
            on_rows(stop - start)
    return index, scores
