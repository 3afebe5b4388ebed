"""``dinoseek.heap``: with glibc, blocks freed by a batch job go back to the system instead of
staying in the heap behind a later allocation. Each case runs in a fresh interpreter, whose
heap this test owns."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt and malloc_trim are glibc's"
)

# Frees a 30 MiB block (glibc then raises its mmap threshold to 30 MiB), allocates five
# 20 MiB blocks each followed by a small array that outlives it, frees the blocks, and prints
# how many MiB of anonymous memory the process kept for them.
SCRIPT = """
import sys
import numpy as np
from dinoseek.heap import map_large_blocks, release_free_memory

def anonymous_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) // 1024

if sys.argv[1] == "mapped":
    assert map_large_blocks()
freed = np.ones(30 * 2**20 // 8)
del freed
before = anonymous_mib()
blocks, small = [], []
for _ in range(5):
    blocks.append(np.ones(20 * 2**20 // 8))
    small.append(np.ones(64))
del blocks
if sys.argv[1] == "released":
    assert release_free_memory()
print(anonymous_mib() - before)
"""


def kept_mib(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_freed_blocks_are_kept_by_default_and_returned_once_mapped_or_released() -> None:
    assert kept_mib("default") >= 20  # what the module is for
    assert kept_mib("mapped") < 5
    assert kept_mib("released") < 5
