"""Stand-ins for what a test is not about: the model (``FakeEmbedder`` by model id)."""

from __future__ import annotations

import zlib

from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings


def fake_model(model_id: str, settings: Settings | None = None) -> FakeEmbedder:
    """The stand-in for ``model_id``: the same id gives the same model (the same vectors, in
    any process), another id another embedding space. Each call makes an instance of its
    own, as loading does: whoever loads it may close it."""
    return FakeEmbedder(model_id=model_id, seed=zlib.crc32(model_id.encode()))


FAKE_LOADER = ModelLoader(load=fake_model)
