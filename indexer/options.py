"""Shared pieces of the ``dinoseek`` commands: options, settings, errors, signals."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from dinoseek.errors import (
    CollectionNotFoundError,
    ConfigError,
    DinoseekError,
    StoreLockedError,
    StoreUnavailableError,
)
from dinoseek.settings import Settings
from dinoseek.store import FILTER_FIELDS, VectorStore

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("dinoseek")


def _env_help(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.default
    shown = "" if default is None else f"; default: {default}"
    return f"{info.description} [env: DINOSEEK_{field.upper()}{shown}]"


def model_options(function: Callable[P, R]) -> Callable[P, R]:
    """``--model``, ``--device``, ``--dtype``."""
    options = [
        click.option("--model", default=None, help=_env_help("model")),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default=None,
            help=_env_help("device"),
        ),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default=None,
            help=_env_help("dtype"),
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def compile_option(function: Callable[P, R]) -> Callable[P, R]:
    """``--compile``."""
    return click.option(
        "--compile",
        type=click.Choice(["off", "default", "max-autotune", "reduce-overhead"]),
        default=None,
        help=_env_help("compile"),
    )(function)


def store_options(function: Callable[P, R]) -> Callable[P, R]:
    """``--collection``, ``--data-dir``, ``--qdrant-url``."""
    options = [
        click.option("--collection", "-c", default=None, help=_env_help("collection")),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help=_env_help("data_dir"),
        ),
        click.option("--qdrant-url", default=None, help=_env_help("qdrant_url")),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def output_options(function: Callable[P, R]) -> Callable[P, R]:
    """``--json`` and ``--quiet``."""
    function = click.option(
        "--quiet", "-q", is_flag=True, help="Print only warnings, errors and the result."
    )(function)
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON document on stdout (progress and logs go to stderr).",
    )(function)


def load_settings(**flags: Any) -> Settings:
    """Settings from DINOSEEK_* variables, overridden by the flags that were given."""
    values = {key: value for key, value in flags.items() if value is not None}
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise click.UsageError(problems) from None


def configure_logging(*, quiet: bool) -> None:
    """Logs and progress go to stderr; --quiet keeps warnings and errors only."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet or not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def exit_code_for(error: DinoseekError) -> int:
    """The exit code a domain error maps to."""
    if isinstance(error, StoreLockedError | StoreUnavailableError):
        return EXIT_UNAVAILABLE
    if isinstance(error, ConfigError):
        return EXIT_USAGE
    return EXIT_ERROR


def handle_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors into a message and an exit code (never a traceback)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except DinoseekError as error:
            if kwargs.get("as_json"):
                click.echo(json.dumps({"error": {"code": error.code, "message": error.message}}))
            click.secho(f"error: {error.message}", fg="red", err=True)
            raise SystemExit(exit_code_for(error)) from None

    return wrapper


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """SIGINT or SIGTERM sets the event (finish cleanly); a second SIGINT aborts at once."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping: flushing what was done (Ctrl-C again to abort)", err=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resolve_model(settings: Settings, store: VectorStore) -> str:
    """An explicit --model/DINOSEEK_MODEL wins; else the model the collection was built with;
    else the default."""
    if "model" in settings.model_fields_set:
        return settings.model
    try:
        return store.collection_space(settings.collection).model_id
    except CollectionNotFoundError:
        return settings.model


def parse_filters(values: tuple[str, ...]) -> dict[str, str]:
    """``("label=cat", "root=/photos")`` -> payload filters."""
    filters: dict[str, str] = {}
    for value in values:
        key, sep, wanted = value.partition("=")
        key = key.strip()
        if not sep or not key or key not in FILTER_FIELDS:
            raise click.BadParameter(
                f"{value!r}: use NAME=VALUE with NAME one of {', '.join(FILTER_FIELDS)}",
                param_hint="--filter",
            )
        filters[FILTER_FIELDS[key]] = wanted
    return filters


def store_owner(command: str) -> Mapping[str, Any]:
    """What this process writes into the embedded store's lock files."""
    return {"command": command, "argv": " ".join(sys.argv[:3])}


def format_bytes(size: int) -> str:
    """``1536`` -> ``1.5 KB``."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
