"""Helpers of the Ray engine's tests: a local Ray instance that can import ``tests``, and a
stand-in model whose actors say who they are and take their time."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from dinoseek.embedder_protocol import Pixels, VectorOrError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings
from tests.fakes import fake_model

REPO = Path(__file__).parent.parent


def ray_env() -> dict[str, str]:
    """The environment under which Ray's workers can import this repository's ``tests``
    (the stand-in model lives there): Ray's processes inherit it from whoever starts Ray."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), path) if p)}


class SlowFakeEmbedder(FakeEmbedder):
    """The stand-in model, ``delay_s`` slower per batch. Each instance leaves a file named by
    its process id in ``pids`` (so that a test can kill the process of an actor), with a
    line per image it embeds (so that it can tell which process embedded). With ``hold``,
    every batch after the first waits until that file exists (``release(pids)``): a test
    can act on an actor that has embedded and has work left, whatever the machine's speed."""

    def __init__(
        self, model_id: str, pids: Path, delay_s: float, seed: int, *, hold: bool = False
    ) -> None:
        super().__init__(model_id=model_id, seed=seed)
        self.delay_s = delay_s
        self.record = pids / str(os.getpid())
        self.record.touch()
        self.released = pids.parent / (pids.name + ".released") if hold else None
        self.batches = 0

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        self.batches += 1
        while self.batches > 1 and self.released is not None and not self.released.exists():
            time.sleep(0.02)
        time.sleep(self.delay_s)
        vectors = super().embed_each(pixels)
        with self.record.open("a") as record:
            record.write("embedded\n" * len(vectors))
        return vectors


def release(pids: Path) -> None:
    """Let the held actors of ``slow_loader(pids, ..., hold=True)`` go on."""
    (pids.parent / (pids.name + ".released")).touch()


def embedded_by(pids: Path) -> dict[int, int]:
    """Process id -> images it embedded (``SlowFakeEmbedder``)."""
    return {int(p.name): len(p.read_text().splitlines()) for p in pids.iterdir()}


def _slow_model(
    pids: str, delay_s: float, hold: bool, model_id: str, settings: Settings
) -> FakeEmbedder:
    seed = fake_model(model_id, settings).seed  # the same vectors as the plain stand-in
    return SlowFakeEmbedder(model_id, Path(pids), delay_s, seed, hold=hold)


def slow_loader(pids: Path, delay_s: float, *, hold: bool = False) -> ModelLoader:
    """A ``ModelLoader`` of ``SlowFakeEmbedder`` (picklable: Ray sends it to its actors)."""
    pids.mkdir(parents=True, exist_ok=True)
    return ModelLoader(load=functools.partial(_slow_model, str(pids), delay_s, hold))
