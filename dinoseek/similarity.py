"""Every pair of vectors above a cosine similarity, by blocked matrix products.

The vectors are unit length, so a dot product is the cosine. Rows are compared a block at a
time, so memory stays at one block of similarities (``block_rows`` x columns) whatever the
collection's size. The products run in float32 on a CPU and in bfloat16 on a GPU, and only
find candidates (at ``candidate_cut``, a little below the threshold); each candidate is
then decided by ``exact_scores``: the similarity in float64, rounded to the 6 digits every
report shows, at or above the threshold. So a pair shown at exactly the threshold is in, and
identical vectors are at 1.0 whatever the rounding of a float32 product.
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
# A float32 product of unit vectors is within this of the exact one, and one of their
# float16 copies within the second.
FLOAT32_MARGIN = 1e-5
FLOAT16_MARGIN = 2e-3
# Similarities are decided, and shown, at this many decimal digits.
SCORE_DIGITS = 6


@dataclass(frozen=True)
class Pairs:
    """Pairs (rows[k], columns[k]) with similarity scores[k] (``exact_scores``), as arrays."""

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
    cut = candidate_cut(threshold, device)
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
            exact = exact_scores(queries[rows], base[columns])
            keep = exact >= threshold
            yield Pairs(rows[keep], columns[keep], exact[keep])
        if on_rows is not None:
            on_rows(stop - start)


def candidate_cut(threshold: float, device: str) -> float:
    """The similarity at which a product on ``device`` makes a pair a candidate: below the
    threshold by more than the product's rounding."""
    return threshold - (BF16_MARGIN if device.startswith("cuda") else FLOAT32_MARGIN)


def exact_scores(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The similarity of each row of ``first`` with the same row of ``second``, in float64
    and rounded to ``SCORE_DIGITS``: the number decided on and shown."""
    products: np.ndarray = np.einsum(
        "ij,ij->i", first.astype(np.float64), second.astype(np.float64)
    )
    return np.round(products, SCORE_DIGITS)


def rounded(scores: np.ndarray) -> np.ndarray:
    """Similarities rounded as ``exact_scores`` rounds them."""
    return np.round(scores.astype(np.float64), SCORE_DIGITS)


def compute_device(name: str) -> str:
    """``auto``, ``cpu`` or ``cuda`` -> the device the products run on (``ConfigError`` for
    cuda without one)."""
    from dinoseek.torch_embedder import resolve_device

    return resolve_device(name).type


def _tensor(array: np.ndarray, device: str, bf16: bool) -> torch.Tensor:
    """``array`` (float32 or float16) on ``device`` as float32, or bfloat16."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return tensor.to(torch.bfloat16 if bf16 else torch.float32)


def as_tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """``array`` (float32 or float16) as a float32 tensor on ``device``."""
    return _tensor(array, device, False)


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
