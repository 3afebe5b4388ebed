"""What ``dedup`` and ``curate`` share: the runtime they open, the collection's vectors read
with a progress bar, and another set of vectors (a folder embedded on the fly, or another
collection of the same store and model) to compare the collection with."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinoseek.collection_vectors import CollectionVectors, read_vectors
from dinoseek.commandline import model_loader, store_owner
from dinoseek.errors import CollectionNotFoundError
from dinoseek.folder_vectors import embed_folder
from dinoseek.progress import Progress
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.settings import Settings


def open_runtime(settings: Settings, command: str, *, with_model: bool) -> Runtime:
    """The store with the collection acquired, and the collection's model when a folder is
    to be embedded."""
    return Runtime.open(
        settings,
        owner=store_owner(f"dinoseek {command}"),
        collection="existing",
        model=with_model,
        policy=ModelPolicy(purpose="query"),
        loader=model_loader(),
    )


def counting(total: int, description: str, mode: str) -> Progress:
    """A progress bar over points."""
    return Progress(total, description=description, mode=mode, unit="pt")


class Stages:
    """One progress bar per stage of a long computation (``StageProgress``): a new stage
    closes the bar of the one before."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.current: Progress | None = None

    def start(self, name: str, total: int) -> Callable[[int], None]:
        """A bar for stage ``name`` of ``total`` points; what advances it."""
        self.close()
        self.current = counting(total, name, self.mode)
        return self.current.advance

    def close(self) -> None:
        """Close the current stage's bar."""
        if self.current is not None:
            self.current.close()
            self.current = None

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_collection(
    runtime: Runtime,
    fields: Sequence[str],
    progress_mode: str,
    *,
    derive: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    dtype: type[np.floating[Any]] = np.float32,
) -> CollectionVectors:
    """The runtime's collection: ids, vectors (a ``dtype`` matrix) and ``fields`` of the
    payloads (and what ``derive`` makes of each, see ``read_vectors``)."""
    store, name = runtime.store, runtime.settings.collection
    reading = counting(store.count(name), "reading", progress_mode)
    data = read_vectors(store, name, fields, derive=derive, on_points=reading.advance, dtype=dtype)
    reading.close()
    return data


@dataclass(frozen=True)
class VectorSet:
    """Vectors to compare with, a description of each (``path``; ``id`` for points), and a
    name for the set (the folder, resolved, or the collection)."""

    vectors: np.ndarray
    items: list[dict[str, str]]
    name: str


def other_set(runtime: Runtime, target: str, option: str, progress_mode: str) -> VectorSet:
    """``target``: a folder (embedded with the runtime's model) or another collection of
    the store, built with the same model (``option`` names the flag in errors)."""
    store, settings = runtime.store, runtime.settings
    folder = Path(target)
    if folder.is_dir():
        files = Progress(0, description="embedding", mode=progress_mode)
        embedded = embed_folder(
            folder,
            runtime.require_embedder(),
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_file_bytes,
            batch_size=runtime.batch_size,
            on_images=files.advance,
        )
        files.close()
        items = [{"path": str(p)} for p in embedded.paths]
        return VectorSet(embedded.vectors, items, str(folder.resolve()))
    if target not in store.list_collections():
        raise CollectionNotFoundError(
            f"{option} {target!r} is neither a folder nor a collection of the {store.describe()}"
        )
    store.collection_space(settings.collection).check_compatible(
        store.collection_space(target), target
    )
    store.acquire(target)
    other = read_vectors(store, target, ("path",))
    items = [{"id": i, **p} for i, p in zip(other.ids, other.payloads, strict=True)]
    return VectorSet(other.vectors, items, target)
