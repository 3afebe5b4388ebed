"""The options that say how folders are indexed, shared by ``dinoseek index`` and
``dinoseek serve --watch`` (which the command group composes from this and the service).

``folder_options`` adds the flags and hands the command one ``FolderChoices``;
``watch_flags`` adds ``--poll`` and ``--poll-interval``. ``index_options`` turns the choices
into the pipeline's ``IndexOptions``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dinoseek.commandline import FiniteFloat
from dinoseek.labels_csv import read_labels_csv
from dinoseek.scan import DEFAULT_EXCLUDES, ScanOptions
from dinoseek.settings import Settings
from indexer.catalog import LabelSource
from indexer.catalog_cache import catalog_cache_path
from indexer.options import IndexOptions
from indexer.report import failures_report_path
from indexer.watch import WatchOptions


@dataclass(frozen=True)
class FolderChoices:
    """What the folder flags chose."""

    labels_from_folders: bool = False
    labels_csv: Path | None = None
    relabel: bool = False
    excludes: tuple[str, ...] = ()
    no_default_excludes: bool = False
    follow_links: bool = False
    no_prune: bool = False
    retry_failed: bool = False
    workers: int | None = None

    def check(self) -> None:
        """Refuse flags that contradict each other."""
        if self.relabel and not (self.labels_from_folders or self.labels_csv):
            raise click.UsageError(
                "--relabel replaces labels set in the page with those of --labels-from-folders "
                "or --labels-csv: give one of them"
            )

    def labels(self) -> LabelSource:
        """Where labels come from (the CSV read now: a bad one is said at once)."""
        return LabelSource(
            from_folders=self.labels_from_folders,
            mapping=read_labels_csv(self.labels_csv) if self.labels_csv else {},
        )

    def given(self) -> bool:
        """Whether any flag was given (``serve`` accepts them with ``--watch`` only)."""
        return self != FolderChoices()


FOLDER_FLAGS = [
    click.option(
        "--labels-from-folders",
        is_flag=True,
        help="Label each image with the name of its parent folder (relative to FOLDER).",
    ),
    click.option(
        "--labels-csv",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="CSV of path,label rows (absolute paths or paths relative to FOLDER).",
    ),
    click.option(
        "--relabel",
        is_flag=True,
        help="Labels of --labels-from-folders or --labels-csv replace labels set in the page "
        "or over HTTP (kept otherwise).",
    ),
    click.option(
        "--exclude",
        "excludes",
        multiple=True,
        metavar="GLOB",
        help="Skip files and folders matching GLOB (name or relative path); repeatable.",
    ),
    click.option(
        "--no-default-excludes",
        is_flag=True,
        help=f"Also scan what is skipped by default: {', '.join(DEFAULT_EXCLUDES)}.",
    ),
    click.option(
        "--follow-links", is_flag=True, help="Follow symbolic links (directory cycles are cut)."
    ),
    click.option(
        "--no-prune", is_flag=True, help="Keep points of files that vanished from FOLDER."
    ),
    click.option(
        "--retry-failed",
        is_flag=True,
        help="Retry files that failed before even if they have not changed.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="Decode processes (0: decode in this process) [default: all cores (at most 16) on "
        "cuda; on cpu none up to 4 cores, else a quarter of them].",
    ),
]
FOLDER_FIELDS = tuple(FolderChoices.__dataclass_fields__)


def folder_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The folder flags, handed to ``function`` as ``choices: FolderChoices``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        choices = FolderChoices(**{name: kwargs.pop(name) for name in FOLDER_FIELDS})
        return function(*args, choices=choices, **kwargs)

    for option in reversed(FOLDER_FLAGS):
        wrapper = option(wrapper)
    return wrapper


def watch_flags(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--poll`` and ``--poll-interval``, handed to ``function`` as ``watching: WatchOptions``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        poll = kwargs.pop("poll")
        interval = kwargs.pop("poll_interval")
        watching = WatchOptions(poll=True if poll else None, poll_interval_s=interval)
        return function(*args, watching=watching, **kwargs)

    wrapper = click.option(
        "--poll-interval",
        type=FiniteFloat(min=0.1),
        default=WatchOptions.poll_interval_s,
        show_default=True,
        metavar="SECONDS",
        help="With --poll: how often every watched folder is listed again.",
    )(wrapper)
    return click.option(
        "--poll",
        is_flag=True,
        help="With --watch: find changes by listing the folders again every --poll-interval "
        "instead of by file-system events (automatic on network file systems such as NFS "
        "or SMB, and where events cannot be had).",
    )(wrapper)


def index_options(
    settings: Settings, folders: tuple[Path, ...], choices: FolderChoices, **more: Any
) -> IndexOptions:
    """The pipeline's options for ``folders`` with ``choices`` (``more``: other fields of
    ``IndexOptions``, e.g. the index command's own)."""
    fields: dict[str, Any] = {
        "roots": tuple(Path(os.path.abspath(f)) for f in folders),
        "collection": settings.collection,
        "failures_report": failures_report_path(settings.data_dir, settings.collection),
        "batch_size": settings.batch_size,
        "workers": choices.workers,
        "max_image_pixels": settings.max_image_pixels,
        "max_file_bytes": settings.max_file_bytes,
        "decode_timeout_s": settings.decode_timeout_s,
        "labels": more.pop("labels", None) or choices.labels(),
        "relabel": choices.relabel,
        "scan": ScanOptions(
            excludes=(() if choices.no_default_excludes else DEFAULT_EXCLUDES) + choices.excludes,
            follow_links=choices.follow_links,
            skip_dirs=(settings.data_dir,),
        ),
        "prune": not choices.no_prune,
        "retry_failed": choices.retry_failed,
        "catalog_cache": catalog_cache_path(settings.data_dir, settings.collection),
    }
    fields.update({k: v for k, v in more.items() if v is not None})
    return IndexOptions(**fields)
