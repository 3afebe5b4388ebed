"""Shared fixtures: a tiny random-weight DINOv2 saved with save_pretrained, loaded through the
same from_pretrained path as a real checkpoint, and generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No hub in tests: a model that is not local or cached fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dinoseek.embedder import Embedder
from dinoseek.settings import Settings
from dinoseek.synthetic import save_random_dinov2


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv2 (2 layers, width 32) with the real DINOv2 processor config."""
    return save_random_dinov2(tmp_path_factory.mktemp("tiny-dinov2"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as ``tiny_model_dir``, other random weights: a different model."""
    return save_random_dinov2(tmp_path_factory.mktemp("other-dinov2"), size="tiny", seed=1)


@pytest.fixture(scope="session")
def embedder(tiny_model_dir: Path) -> Embedder:
    """The tiny model on the CPU in float32."""
    return Embedder.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """Settings for the embedded store in a temporary directory and the tiny model."""
    return Settings(model=str(tiny_model_dir), device="cpu", data_dir=tmp_path / "data")
