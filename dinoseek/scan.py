"""Scan: walk image folders and list the candidate files with their size and mtime.

Files are chosen by extension here; their content is confirmed later, when a decode worker
sniffs and decodes them (a ``.jpg`` that is really a PDF becomes a reported failure, not a
silent skip). Hidden entries and the usual clutter folders are excluded by default, symlinks
are skipped unless ``follow_links`` (and then directory cycles are cut).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator, Sequence
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


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """A candidate image. ``path`` and ``root`` are absolute; ``relative_path`` uses '/'.
    Plain strings: a scan makes one per file, a million on a large folder."""

    path: str
    root: str
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
    roots: Sequence[Path | str], options: ScanOptions, counts: ScanCounts | None = None
) -> Iterator[ScannedFile | ScanProblem]:
    """Walk each root depth-first in name order and yield candidate files and problems."""
    counts = counts if counts is not None else ScanCounts()
    walk = _Walk(options, counts, {_real(p) for p in options.skip_dirs})
    for root in roots:
        root_text = os.path.abspath(root)
        yield from walk.folder(root_text, root_text, set())


class _Walk:
    """One scan's settings, shared by every folder it lists."""

    def __init__(self, options: ScanOptions, counts: ScanCounts, skip: set[str]) -> None:
        self.options = options
        self.counts = counts
        self.skip = skip
        self.excluded = exclusion_matcher(options.excludes)

    def folder(
        self, directory: str, root: str, visited: set[tuple[int, int]]
    ) -> Iterator[ScannedFile | ScanProblem]:
        """The candidates under ``directory`` (``root`` is the scanned root it belongs to)."""
        try:
            identity = os.stat(directory)
            if (identity.st_dev, identity.st_ino) in visited:
                return  # a symlink cycle
            visited.add((identity.st_dev, identity.st_ino))
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as exc:
            yield ScanProblem(Path(directory), f"cannot list folder: {exc.strerror or exc}")
            return
        follow = self.options.follow_links
        extensions = self.options.extensions
        counts = self.counts
        for entry in entries:
            relative = _relative(entry.path, root)
            if self.excluded(entry.name) or self.excluded(relative):
                counts.excluded += 1
                continue
            try:
                if entry.is_symlink() and not follow:
                    counts.links_skipped += 1
                    continue
                if entry.is_dir(follow_symlinks=follow):
                    if self.skip and _real(entry.path) in self.skip:
                        counts.excluded += 1
                        continue
                    yield from self.folder(entry.path, root, visited)
                    continue
                if not entry.is_file(follow_symlinks=follow):
                    counts.other_files += 1
                    continue
                if os.path.splitext(entry.name)[1].lower() not in extensions:
                    counts.other_files += 1
                    continue
                stat = entry.stat(follow_symlinks=follow)
            except OSError as exc:  # vanished or unreadable between listing and stat
                message = f"cannot read file information: {exc.strerror or exc}"
                yield ScanProblem(Path(entry.path), message)
                continue
            yield ScannedFile(entry.path, root, relative, stat.st_size, stat.st_mtime_ns)


def exclusion_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Whether a name (or relative path) matches one of the fnmatch ``patterns``, case
    sensitive: one compiled expression for all of them, tried once per name."""
    if not patterns:
        return lambda text: False
    expression = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda text: expression.match(text) is not None


def _relative(path: str, root: str) -> str:
    """``path`` below ``root``, with '/' between its parts."""
    relative = path[len(root) :].lstrip(os.sep)
    return relative if os.sep == "/" else relative.replace(os.sep, "/")


def _real(path: str | Path) -> str:
    return os.path.realpath(path)
