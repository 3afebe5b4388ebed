"""Names listed in messages, bounded: the first few and a count of the rest.

A message lists what the user chose (classes, collections, probes), and there may be any
number of them: 10,000 one-image classes once made a 200 KB error line. Every such list goes
through ``short_list``.
"""

from __future__ import annotations

from collections.abc import Iterable

SHOWN = 5
# A name longer than this is cut (a label read from a CSV file can be any length).
MAX_NAME_CHARS = 60


def short_list(names: Iterable[str], *, shown: int = SHOWN, empty: str = "none") -> str:
    """``"a, b, c, d, e and 9,995 more"``; ``empty`` when there are none."""
    listed = list(names)
    if not listed:
        return empty
    head = ", ".join(_cut(name) for name in listed[:shown])
    rest = len(listed) - shown
    return f"{head} and {rest:,} more" if rest > 0 else head


def _cut(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 3] + "..."
