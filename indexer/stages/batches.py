"""Batching for the stages that decode on this machine (``local`` and ``gpu``): decoded files
in, each file's vectors or failure out, in the order they were decoded.

Files are held until ``batch_size`` distinct new contents are decoded (or many files are held:
a long run of unchanged content still moves on), then that batch goes through the model in
one forward pass. Pixels are kept only for content the collection does not hold; a file with
the content of another file of the same batch shares its vectors. An image the model cannot
embed (out of memory even alone: the embedder halves its batches first) is a failure of its
own files, never of the batch.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator

from dinoseek.errors import EmbeddingError
from dinoseek.scan import ScannedFile
from dinoseek.store import point_id_for_sha256
from indexer.regions import Embedded, embed_batch
from indexer.stages.base import (
    Model,
    StageResult,
    embed_again,
    embedded_file,
    embedding_failure,
    facts_of,
    stored_content,
)
from indexer.workers import DecodedFile, FailedFile, FileFacts

HELD_BATCHES = 4  # files held at most, in batches: unchanged content still moves on

Held = tuple[ScannedFile, DecodedFile | FileFacts | FailedFile]


def embed_decoded(
    decoded: Iterable[tuple[ScannedFile, DecodedFile | FailedFile]],
    model: Model,
    stop: threading.Event,
) -> Iterator[tuple[ScannedFile, StageResult]]:
    """Each decoded file with its vectors (or failure), a batch at a time (module doc)."""
    held: list[Held] = []
    new: set[str] = set()
    for file, result in decoded:
        if isinstance(result, DecodedFile):
            point_id = point_id_for_sha256(result.sha256)
            if point_id in model.stored:
                held.append((file, facts_of(result)))  # its pixels are not needed
            else:
                held.append((file, result))
                new.add(point_id)
        else:
            held.append((file, result))
        if len(new) >= model.batch_size or len(held) >= HELD_BATCHES * model.batch_size:
            if not (yield from _embed_and_yield(held, model, stop)):
                return
            held, new = [], set()
    if held and not stop.is_set():
        yield from _embed_and_yield(held, model, stop)


def _embed_and_yield(
    held: list[Held], model: Model, stop: threading.Event
) -> Generator[tuple[ScannedFile, StageResult], None, bool]:
    """Embed the new content of ``held``, then yield every held file in order; False if
    ``stop`` was set meanwhile. Whether content is stored is asked again as each file is
    yielded: the run updates it as it takes the files before."""
    vectors = _embed_new(held, model)
    for file, result in held:
        yield file, _result(result, vectors, model)
        if stop.is_set():
            return False
    return True


def _embed_new(held: list[Held], model: Model) -> dict[str, Embedded | EmbeddingError]:
    """One forward pass over the distinct new contents of ``held``, by point id."""
    todo: dict[str, DecodedFile] = {}
    for _, result in held:
        if isinstance(result, DecodedFile):
            todo.setdefault(point_id_for_sha256(result.sha256), result)
    if not todo:
        return {}
    pixels = model.embedder.stack([decoded.pixels for decoded in todo.values()])
    embedded = embed_batch(model.embedder, pixels, model.regions)
    return dict(zip(todo, embedded, strict=True))


def _result(
    result: DecodedFile | FileFacts | FailedFile,
    vectors: dict[str, Embedded | EmbeddingError],
    model: Model,
) -> StageResult:
    if isinstance(result, FailedFile):
        return result
    vector = vectors.get(point_id_for_sha256(result.sha256))
    if isinstance(vector, EmbeddingError):
        return embedding_failure(result.path, vector)
    if vector is not None:
        return embedded_file(result, vector)
    if point_id_for_sha256(result.sha256) in model.stored:
        return stored_content(result)
    return embed_again(result.path, model)
