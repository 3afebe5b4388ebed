"""Which image of a group of near-duplicates is kept, and why.

A rule is an ordered list of criteria; the kept point is the first in that order, and its
reason is the first criterion on which it beats the runner-up. ``--prefer`` folders come
before every rule: a point with a file under one of them wins (the first folder given beats
the next). The rules:

- ``quality`` (the default): the most pixels, then the larger file (the better encoding of
  the same pixels), then the oldest file, then the path;
- ``oldest`` / ``newest``: the file's modification time first, then as ``quality``;
- ``path``: the shortest path, then the first in alphabetical order.

Everything comes from the payload the indexer writes (``width``, ``height``, ``size``,
``path``, ``paths``, and each file's ``mtime_ns``, read through ``file_times``). A point whose
payload lacks one of them (written by other software) ranks last on that criterion; the point
id breaks exact ties.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

KEEP_RULES = ("quality", "oldest", "newest", "path")
DEFAULT_KEEP_RULE = "quality"
KEEP_FIELDS = ("path", "paths", "width", "height", "size")
OLDEST, NEWEST = "files_oldest_mtime_ns", "files_newest_mtime_ns"  # made by file_times
_LAST = float("inf")  # where an unknown value ranks


@dataclass(frozen=True)
class PointFacts:
    """What the keep rule reads of one point."""

    id: str
    path: str | None
    paths: tuple[str, ...]
    width: int | None
    height: int | None
    size: int | None
    oldest_ns: int | None
    newest_ns: int | None

    @property
    def pixels(self) -> int | None:
        """Width times height, when both are known."""
        if self.width is None or self.height is None:
            return None
        return self.width * self.height

    @classmethod
    def from_payload(cls, point_id: str, payload: Mapping[str, Any]) -> PointFacts:
        """The facts of a point from ``KEEP_FIELDS`` of its payload and its ``file_times``
        (None where the payload does not say)."""
        path = payload.get("path")
        listed = payload.get("paths")
        paths = [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
        if isinstance(path, str) and path not in paths:
            paths.append(path)
        return cls(
            id=point_id,
            path=path if isinstance(path, str) else None,
            paths=tuple(paths),
            width=_int_or_none(payload.get("width")),
            height=_int_or_none(payload.get("height")),
            size=_int_or_none(payload.get("size")),
            oldest_ns=_int_or_none(payload.get(OLDEST)),
            newest_ns=_int_or_none(payload.get(NEWEST)),
        )


def file_times(payload: Mapping[str, Any]) -> dict[str, int]:
    """The oldest and newest modification time of a point's files (its ``files`` list is
    read, not kept: for a whole collection it is most of the payloads' memory)."""
    files = payload.get("files")
    times = [
        f["mtime_ns"]
        for f in (files if isinstance(files, list) else ())
        if isinstance(f, Mapping) and _is_int(f.get("mtime_ns"))
    ]
    return {OLDEST: min(times), NEWEST: max(times)} if times else {}


@dataclass(frozen=True)
class Criterion:
    """One step of a rule: a sort key (smaller wins) and how to say why the winner won."""

    name: str
    key: Callable[[PointFacts], Any]
    explain: Callable[[PointFacts, PointFacts], str]


@dataclass(frozen=True)
class KeepRule:
    """A rule (``KEEP_RULES``) and the folders whose files win over it, first one first
    (absolute paths)."""

    rule: str = DEFAULT_KEEP_RULE
    prefer: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rule not in KEEP_RULES:
            raise ValueError(f"keep rule {self.rule!r}: use one of {', '.join(KEEP_RULES)}")

    def describe(self) -> str:
        """The rule as the report states it."""
        if not self.prefer:
            return self.rule
        return f"{self.rule}, files under {', '.join(self.prefer)} first"

    def criteria(self) -> list[Criterion]:
        """The criteria in the order they decide."""
        chain = [_preferred(self.prefer)] if self.prefer else []
        return [*chain, *_RULES[self.rule], _ID]

    def choose(self, points: Sequence[PointFacts]) -> tuple[int, str]:
        """The position of the kept point among ``points`` (two or more) and its reason."""
        criteria = self.criteria()
        order = sorted(range(len(points)), key=lambda i: [c.key(points[i]) for c in criteria])
        kept, runner_up = points[order[0]], points[order[1]]
        for criterion in criteria:
            if criterion.key(kept) != criterion.key(runner_up):
                return order[0], criterion.explain(kept, runner_up)
        return order[0], "identical by every rule"  # the same id twice: cannot happen


def in_folder(path: str, folder: str) -> bool:
    """Whether ``path`` lies under ``folder`` (both absolute)."""
    folder = folder.rstrip(os.sep) or os.sep
    return path == folder or path.startswith(folder if folder == os.sep else folder + os.sep)


def _preferred(folders: tuple[str, ...]) -> Criterion:
    def rank(point: PointFacts) -> int:
        for position, folder in enumerate(folders):
            if any(in_folder(path, folder) for path in point.paths):
                return position
        return len(folders)

    def explain(kept: PointFacts, other: PointFacts) -> str:
        return f"under --prefer {folders[rank(kept)]}"

    return Criterion("prefer", rank, explain)


def _pixels_text(point: PointFacts) -> str:
    return "unknown size" if point.pixels is None else f"{point.width}x{point.height}"


def _size_text(point: PointFacts) -> str:
    """Bytes exactly: two encodings of one image can differ by a few bytes only."""
    return "unknown" if point.size is None else f"{point.size:,} bytes"


def _time_text(ns: int | None, *, fraction: bool = False) -> str:
    if ns is None:
        return "unknown"
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{ns % 1_000_000_000:09d} UTC" if fraction else f"{stamp} UTC"


def _times_text(kept: int | None, other: int | None) -> str:
    """Both times, to the nanosecond where they differ by less than a second (copies made in
    one go often do), so the reason never reads "x against x"."""
    fraction = _time_text(kept) == _time_text(other) and kept != other
    return f"{_time_text(kept, fraction=fraction)} against {_time_text(other, fraction=fraction)}"


def _negated(value: int | None) -> float:
    return _LAST if value is None else -value


def _ascending(value: int | None) -> float:
    return _LAST if value is None else value


_PIXELS = Criterion(
    "pixels",
    lambda p: _negated(p.pixels),
    lambda k, o: f"most pixels: {_pixels_text(k)} against {_pixels_text(o)}",
)
_SIZE = Criterion(
    "size",
    lambda p: _negated(p.size),
    lambda k, o: f"larger file: {_size_text(k)} against {_size_text(o)}",
)
_OLDEST = Criterion(
    "oldest",
    lambda p: _ascending(p.oldest_ns),
    lambda k, o: f"older file: {_times_text(k.oldest_ns, o.oldest_ns)}",
)
_NEWEST = Criterion(
    "newest",
    lambda p: _negated(p.newest_ns),
    lambda k, o: f"newer file: {_times_text(k.newest_ns, o.newest_ns)}",
)
_SHORTEST_PATH = Criterion(
    "path",
    lambda p: (_LAST, "") if p.path is None else (len(p.path), p.path),
    lambda k, o: (
        "shorter path"
        if k.path is not None and o.path is not None and len(k.path) < len(o.path)
        else "path first in alphabetical order"
    ),
)
_ID = Criterion("id", lambda p: p.id, lambda k, o: "identical by every rule: the smaller id")
_RULES: dict[str, list[Criterion]] = {
    "quality": [_PIXELS, _SIZE, _OLDEST, _SHORTEST_PATH],
    "oldest": [_OLDEST, _PIXELS, _SIZE, _SHORTEST_PATH],
    "newest": [_NEWEST, _PIXELS, _SIZE, _SHORTEST_PATH],
    "path": [_SHORTEST_PATH],
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return value if _is_int(value) else None
