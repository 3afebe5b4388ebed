"""Where a model's files come from, decided once before transformers is asked: a local
directory, the Hugging Face cache, or the hub.

Without this, a machine that cannot reach the hub spends half a minute in the hub client's
retries before saying that it could not connect. Here the hub is asked once, with a short
timeout (not at all under ``HF_HUB_OFFLINE``); when it does not answer, a cached model loads
from the cache and a model that is not cached fails at once, saying what to do.

``huggingface_hub`` is imported on first use, never with this module: it reads its settings
(``HF_HUB_DISABLE_PROGRESS_BARS``, which ``configure_logging`` sets) when it is imported.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from dinoseek.errors import ModelLoadError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
# A hub id: NAME or OWNER/NAME (what is not one, and not a directory, is a mistyped path).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?", re.ASCII)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
LOCAL_DIRECTORY_HINT = (
    "a local directory written by save_pretrained (--model DIR or DINOSEEK_MODEL=DIR; "
    "`make run IMAGES=... MODEL=DIR`)"
)


@dataclass(frozen=True)
class ModelSource:
    """How to call ``from_pretrained``: from local files only, or the hub allowed; and the
    Hugging Face cache folder."""

    local_files_only: bool
    cache_dir: str


def hub_answers(endpoint: str) -> bool:
    """Whether the hub answers at all (any HTTP status), within ``PROBE_TIMEOUT_S``, once."""
    try:
        httpx.head(endpoint, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return True


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as the hub client reads it."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return True
    values = (os.environ.get(name, "") for name in OFFLINE_VARIABLES)
    return any(value.upper() in {"1", "ON", "YES", "TRUE"} for value in values)


def model_source(model_id: str, *, reachable: Callable[[str], bool] = hub_answers) -> ModelSource:
    """Where ``model_id`` (a local directory or a hub id) loads from, or ``ModelLoadError``
    at once when it cannot load from anywhere. ``reachable`` asks whether the hub answers
    (tests give a stand-in)."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache_dir = constants.HF_HUB_CACHE
    if Path(model_id).is_dir():
        return ModelSource(local_files_only=True, cache_dir=cache_dir)
    if not HUB_ID.fullmatch(model_id):
        raise ModelLoadError(
            f"cannot load model {model_id!r}: no such directory, and not a hub id such as "
            f"facebook/dinov2-base. Pass {LOCAL_DIRECTORY_HINT} or a hub id"
        )
    cached = isinstance(try_to_load_from_cache(model_id, "config.json", cache_dir), str)
    if offline_mode():
        if cached:
            return ModelSource(local_files_only=True, cache_dir=cache_dir)
        raise ModelLoadError(
            f"cannot load model {model_id!r}: it is not in the Hugging Face cache ({cache_dir}) "
            "and HF_HUB_OFFLINE is set, so the hub is not asked. Download it once with the "
            f"network (without HF_HUB_OFFLINE), or pass {LOCAL_DIRECTORY_HINT}"
        )
    if reachable(constants.ENDPOINT):
        return ModelSource(local_files_only=False, cache_dir=cache_dir)
    if cached:
        log.info(
            "the hub (%s) does not answer: %s loads from the cache", constants.ENDPOINT, model_id
        )
        return ModelSource(local_files_only=True, cache_dir=cache_dir)
    raise ModelLoadError(
        f"cannot load model {model_id!r}: it is not in the Hugging Face cache ({cache_dir}) and "
        f"the hub ({constants.ENDPOINT}) does not answer (offline?). Download it once with the "
        f"network, or pass {LOCAL_DIRECTORY_HINT}. With HF_HUB_OFFLINE=1 the hub is never asked"
    )


@contextmanager
def hub_client_mode(source: ModelSource) -> Iterator[None]:
    """For a load from local files only, the hub client's offline mode while it lasts:
    transformers asks the hub for more than the files it is told to load locally (a PEFT
    adapter's config, the client's own registry), each with the client's retries."""
    from huggingface_hub import constants

    if not source.local_files_only:
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
