"""The embedding stage: the seam between an index run and its engines.

A stage turns the files a run planned into vectors or failures. ``results(files, stop)``
yields each file with one of:

- ``EmbeddedFile``: its facts and its vectors;
- ``WrittenFile``: a Ray actor embedded it and wrote its point to the server itself;
- ``StoredContent``: its content is a point of the collection already, so it needs no vector;
- ``FailedFile``: why it cannot be used.

A stage embeds only content the collection does not hold: ``Model.stored`` is the run's own
live set of point ids. It yields ``StoredContent`` only for content still stored when the run
takes the file, so a run never lacks a vector it needs (``embed_again`` covers content whose
last file changed in between).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.errors import EmbeddingError
from dinoseek.regions import RegionSpec
from dinoseek.scan import ScannedFile
from indexer.regions import Embedded, embed_batch
from indexer.workers import FailedFile, FileFacts, WorkerConfig, prepare_file


@dataclass(frozen=True)
class EmbeddedFile(FileFacts):
    """A file and its vectors (the CLS vector; region vectors in a run with regions)."""

    embedded: Embedded


@dataclass(frozen=True)
class WrittenFile(FileFacts):
    """A file whose point a Ray actor wrote itself, with the payload of this one file, at
    ``indexed_at``."""

    indexed_at: str


@dataclass(frozen=True)
class StoredContent(FileFacts):
    """A file whose content the collection holds already: not embedded again."""


StageResult = EmbeddedFile | WrittenFile | StoredContent | FailedFile


class EmbeddingStage(Protocol):
    """Turns planned files into vectors or failures (module doc)."""

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, StageResult]]:
        """Each of ``files`` with its result, until done or ``stop`` is set."""
        ...

    def close(self) -> None:
        """Release the stage's processes, threads or cluster connection."""
        ...


@dataclass(frozen=True)
class Model:
    """What a stage embeds with: the model, the region layout of the run (None: no region
    vectors), images per forward pass, the decode limits, and the ids of the points the
    collection holds now (a live view: the run updates it as it takes files)."""

    embedder: ImageEmbedder
    regions: RegionSpec | None
    batch_size: int
    decode: WorkerConfig
    stored: Collection[str]


def facts_of(file: FileFacts) -> FileFacts:
    """Only the facts of ``file``."""
    return FileFacts(**file.facts())


def embedded_file(file: FileFacts, embedded: Embedded) -> EmbeddedFile:
    """``file`` with its vectors."""
    return EmbeddedFile(**file.facts(), embedded=embedded)


def stored_content(file: FileFacts) -> StoredContent:
    """``file`` as content the collection holds."""
    return StoredContent(**file.facts())


def embedding_failure(path: str, error: EmbeddingError) -> FailedFile:
    """The failure of a file the model could not embed (out of memory, alone as well)."""
    return FailedFile(path, error.code, f"{path}: {error.message}")


def embed_again(path: str, model: Model) -> EmbeddedFile | FailedFile:
    """Read, decode and embed one file here and now: content that was stored when the file
    was decoded (so not embedded then) and is not any more (its last file changed since)."""
    decoded = prepare_file(path, model.decode)
    if isinstance(decoded, FailedFile):
        return decoded
    pixels = model.embedder.stack([decoded.pixels])
    (result,) = embed_batch(model.embedder, pixels, model.regions)
    if isinstance(result, EmbeddingError):
        return embedding_failure(path, result)
    return embedded_file(decoded, result)
