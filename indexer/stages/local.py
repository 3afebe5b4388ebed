"""The local engine's stage: decode processes on this machine (``indexer.decode``), then the
model in batches on this process (``indexer.stages.batches``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from dinoseek.scan import ScannedFile
from indexer.decode import DecodePool
from indexer.stages.base import Model, StageResult
from indexer.stages.batches import embed_decoded


def decode_window(batch_size: int, workers: int) -> int:
    """Files in flight in the decode processes: enough to fill two batches and keep every
    worker busy."""
    return max(2 * batch_size, 4 * workers)


class LocalStage:
    """Decodes in ``workers`` processes (0: a thread of this process) and embeds here."""

    def __init__(self, model: Model, workers: int) -> None:
        self.model = model
        self.pool = DecodePool(model.decode, workers, decode_window(model.batch_size, workers))

    def results(
        self, files: Sequence[ScannedFile], stop: threading.Event
    ) -> Iterator[tuple[ScannedFile, StageResult]]:
        """Each file with its vectors or failure, in order, until done or ``stop`` is set."""
        yield from embed_decoded(self.pool.results(files, stop), self.model, stop)

    def close(self) -> None:
        """Stop the decode processes and free their shared memory."""
        self.pool.close()
