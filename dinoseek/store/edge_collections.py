"""What the embedded store's helper modules (snapshots, rename) need of ``EdgeStore``: its
collections' directories and locks, and its probes. A protocol, so that they do not import
the store that imports them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Protocol

from dinoseek.space import EmbeddingSpace
from dinoseek.store.protocol import ProbeStore
from dinoseek.store.records import CollectionInfo


class EdgeCollections(Protocol):
    """The parts of ``EdgeStore`` that ``edge_snapshots`` and ``edge_rename`` use."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def probes(self) -> ProbeStore: ...

    def describe(self) -> str: ...

    def collection_dir(self, name: str) -> Path: ...

    def not_found_message(self, name: str) -> str: ...

    def collection_info(self, name: str) -> CollectionInfo: ...

    def acquire(self, name: str) -> None: ...

    def is_held(self, name: str) -> bool: ...

    def closed_but_held(self, name: str) -> AbstractContextManager[tuple[EmbeddingSpace, int]]: ...

    def take_for_swap(self, name: str) -> IO[str]: ...
