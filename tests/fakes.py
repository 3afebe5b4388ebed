"""Stand-ins for what a test is not about: the model (``FakeEmbedder`` by model id)."""

from __future__ import annotations

import zlib

from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings

_MADE: dict[str, FakeEmbedder] = {}


def fake_model(model_id: str, settings: Settings | None = None) -> FakeEmbedder:
    """The stand-in for ``model_id``: the same id gives the same model (one instance per
    process), another id another embedding space."""
    if model_id not in _MADE:
        _MADE[model_id] = FakeEmbedder(model_id=model_id, seed=zlib.crc32(model_id.encode()))
    return _MADE[model_id]


FAKE_LOADER = ModelLoader(load=fake_model)
