"""What every dinoseek command shares, whichever package defines it: the shared options
(the same flags, with ``DINOSEEK_*`` variables as defaults, mean the same everywhere),
settings from flags, logging, domain errors as a message and an exit code, signals, and the
``ModelLoader`` a caller (a test) may put in click's context object.

Domain errors live in ``dinoseek.errors``; this is the CLI's edge that translates them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import ValidationError

from dinoseek.embedder_protocol import (
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    LARGE_GPU_BATCH_SIZE,
    LARGE_GPU_BYTES,
)
from dinoseek.errors import ConfigError, DinoseekError, StoreLockedError, StoreUnavailableError
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings, validate_collection_name

EPILOG = """\b
Exit codes: 0 done (bad image files are reported, not fatal), 1 error, 2 usage error,
3 store busy or unreachable (try again later), 130 interrupted."""

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("dinoseek")


class FiniteFloat(click.FloatRange):
    """A float option's type: a number within the range, never NaN or an infinity.

    ``click.FloatRange`` lets NaN through (every comparison with it is false), and NaN as a
    threshold quietly turns a filter off; every float option of every command uses this type.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, or a usage error naming the option."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class CollectionName(click.ParamType[str, Any]):
    """A collection name given as an option (``--into``): checked as the command line is
    read, before any work."""

    name = "collection"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The name, or a usage error saying what a name may hold."""
        try:
            return validate_collection_name(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def check_output_file(path: Path, *, overwrite: bool, data_dir: Path, option: str) -> None:
    """Refuse, before any work, a file a command is to write: one inside the data directory
    (the store's own files live there), a folder, or an existing file unless ``overwrite``."""
    if path.resolve().is_relative_to(data_dir.resolve()):
        raise click.BadParameter(
            f"{path} is inside the data directory {data_dir}, which holds the store's own "
            "files; write it elsewhere",
            param_hint=f"'{option}'",
        )
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder", param_hint=f"'{option}'")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise click.BadParameter(
            f"{path} exists; pass --overwrite to replace it", param_hint=f"'{option}'"
        )


def write_output_file(path: Path, text: str, *, overwrite: bool) -> None:
    """Write ``path`` whole or not at all (a temporary file, then a link or a rename). Without
    ``overwrite`` a file that appeared meanwhile is left as it is (``ConfigError``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        partial.write_text(text, encoding="utf-8")
        if overwrite:
            os.replace(partial, path)  # a symlink is replaced, not written through
        else:
            os.link(partial, path)
    except FileExistsError:
        raise ConfigError(
            f"{path} appeared while the command ran and was left as it is; pass --overwrite "
            "to replace it"
        ) from None
    finally:
        partial.unlink(missing_ok=True)


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


def batch_size_option(function: Callable[P, R]) -> Callable[P, R]:
    """``--batch-size``."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help=f"Images per forward pass [env: DINOSEEK_BATCH_SIZE; default: {CPU_BATCH_SIZE} on "
        f"cpu; on cuda {LARGE_GPU_BATCH_SIZE} with {LARGE_GPU_BYTES // 1024**3} GiB of memory or "
        f"more, else {GPU_BATCH_SIZE}].",
    )(function)


def store_options(function: Callable[P, R]) -> Callable[P, R]:
    """``--collection``, ``--data-dir``, ``--qdrant-url``."""
    function = store_location_options(function)
    return click.option("--collection", "-c", default=None, help=_env_help("collection"))(function)


def store_location_options(function: Callable[P, R]) -> Callable[P, R]:
    """``--data-dir``, ``--qdrant-url``: where the store is (for commands that name their
    collections as arguments)."""
    options = [
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
    # The hub client prints through a handler of its own: passed on to ours as well, each of
    # its messages would be printed twice.
    logging.getLogger("huggingface_hub").propagate = False
    if quiet or not sys.stderr.isatty():
        # Read by huggingface_hub and transformers when they are first imported (later).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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


def model_loader() -> ModelLoader:
    """The ``ModelLoader`` in click's context object, if the caller put one there (tests hand
    in a stand-in this way), else the real one."""
    context = click.get_current_context(silent=True)
    found = context.find_object(ModelLoader) if context is not None else None
    return found or ModelLoader()
