"""Keeping a batch job's memory near what it holds, where the C library allows it.

dedup and curate work through a million vectors in pieces of a few to tens of megabytes
(a block of queries copied to float32, a block of similarities). glibc serves a piece of at
least its mmap threshold with a mapping of its own, returned to the system when freed, but it
raises that threshold to the size of each such piece freed (up to 32 MiB): after the first
few, the pieces come from the heap, and a heap keeps what it is given back (behind anything
allocated after it), so the job's peak grows by what it freed. Elsewhere (musl, macOS) both
functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
BATCH_MMAP_THRESHOLD = 16 * 1024 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(library, "mallopt") or not hasattr(library, "malloc_trim"):
        return None
    return library


def map_large_blocks(threshold: int = BATCH_MMAP_THRESHOLD) -> bool:
    """Serve every block of at least ``threshold`` bytes by a mapping of its own from now on
    (a fixed threshold: glibc stops raising it). True where that took effect."""
    library = _glibc()
    return library is not None and library.mallopt(M_MMAP_THRESHOLD, threshold) == 1


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (between a job's stages). True where
    the C library could do it."""
    library = _glibc()
    if library is None:
        return False
    library.malloc_trim(0)
    return True
