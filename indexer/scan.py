"""Scan: walk image folders and list the candidate files with their size and mtime.

Files are chosen by extension here; their content is confirmed later, when a decode worker
sniffs and decodes them (a ``.jpg`` that is really a PDF becomes a reported failure, not a
silent skip). Hidden entries and the usual clutter folders are excluded by default, symlinks
are skipped unless ``follow_links`` (and then directory cycles are cut).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dinoseek.images import image_extensions

# Extensions by Pillow format name; AVIF/HEIF only count when their plugin is installed.

# Names excluded unless the user scans them explicitly as a root. Matched against each file
# and folder name (and the path relative to the root) with fnmatch.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".*",  # hidden files and folders: .git, .cache, .DS_Store, ._resource forks, ...
    "node_modules",
    "__pycache__",
    "@eaDir",  # Synology thumbnails
    "#recycle",
    "$RECYCLE.BIN",
    "System Volume Information",
    "lost+found",
    "__MACOSX",
    "thumbnails",
    "Thumbnails",
    "thumbs",
    "Thumbs.db",
)


@dataclass(frozen=True)
class ScanOptions:
    """What to pick and what to skip."""

    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    follow_links: bool = False
    extensions: frozenset[str] = field(default_factory=image_extensions)
    skip_dirs: tuple[Path, ...] = ()  # e.g. the store's own data directory


@dataclass(frozen=True)
class ScannedFile:
    """A candidate image. ``path`` and ``root`` are absolute; ``relative_path`` uses '/'."""

    path: Path
    root: Path
    relative_path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    """Something under a root that could not be listed (e.g. a folder without permission)."""

    path: Path
    message: str


@dataclass
class ScanCounts:
    """What the walk passed over, for the summary."""

    excluded: int = 0
    links_skipped: int = 0
    other_files: int = 0


def scan(
    roots: Sequence[Path], options: ScanOptions, counts: ScanCounts | None = None
) -> Iterator[ScannedFile | ScanProblem]:
    """Walk each root depth-first in name order and yield candidate files and problems."""
    counts = counts if counts is not None else ScanCounts()
    skip = {_real(p) for p in options.skip_dirs}
    for root in roots:
        root = Path(os.path.abspath(root))
        visited: set[tuple[int, int]] = set()
        yield from _walk(root, root, options, counts, skip, visited)


def _walk(
    directory: Path,
    root: Path,
    options: ScanOptions,
    counts: ScanCounts,
    skip: set[str],
    visited: set[tuple[int, int]],
) -> Iterator[ScannedFile | ScanProblem]:
    try:
        identity = directory.stat()
        if (identity.st_dev, identity.st_ino) in visited:
            return  # a symlink cycle
        visited.add((identity.st_dev, identity.st_ino))
        with os.scandir(directory) as iterator:
            entries = sorted(iterator, key=lambda entry: entry.name)
    except OSError as exc:
        yield ScanProblem(directory, f"cannot list folder: {exc.strerror or exc}")
        return
    for entry in entries:
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix()
        if _excluded(entry.name, relative, options.excludes):
            counts.excluded += 1
            continue
        try:
            is_link = entry.is_symlink()
            if is_link and not options.follow_links:
                counts.links_skipped += 1
                continue
            if entry.is_dir(follow_symlinks=options.follow_links):
                if _real(path) in skip:
                    counts.excluded += 1
                    continue
                yield from _walk(path, root, options, counts, skip, visited)
                continue
            if not entry.is_file(follow_symlinks=options.follow_links):
                counts.other_files += 1
                continue
            if os.path.splitext(entry.name)[1].lower() not in options.extensions:
                counts.other_files += 1
                continue
            stat = entry.stat(follow_symlinks=options.follow_links)
        except OSError as exc:  # vanished or unreadable between listing and stat
            yield ScanProblem(path, f"cannot read file information: {exc.strerror or exc}")
            continue
        yield ScannedFile(
            path=path,
            root=root,
            relative_path=relative,
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
        )


def _excluded(name: str, relative: str, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(relative, pattern)
        for pattern in patterns
    )


def _real(path: Path) -> str:
    return os.path.realpath(path)
