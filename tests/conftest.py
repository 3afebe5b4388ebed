"""Shared fixtures.

Most tests are not about the model: they get ``embedder``, the numpy stand-in for DINOv2
(``dinoseek.fake_embedder``), which starts instantly. Tests about the model itself (parity,
fingerprint, compilation, end to end through ``from_pretrained``) get ``tiny_embedder``: a tiny
random-weight DINOv2 saved with ``save_pretrained`` and loaded through the same
``from_pretrained`` path as a real checkpoint; they are marked ``model``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# No hub in tests: a model that is not local or cached fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.runtime import ModelLoader
from dinoseek.settings import Settings
from tests.fakes import FAKE_LOADER, fake_model
from tests.helpers import refuse_to_wait

# pytest-timeout is a hang detector. A slow test (processes, servers, training) can take many
# times its quiet time on a 2-core machine running other suites, so it gets this much unless
# it names its own limit.
SLOW_TEST_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


@pytest.fixture(scope="session")
def embedder() -> FakeEmbedder:
    """The stand-in model (numpy, deterministic, content-sensitive)."""
    return fake_model("fake/dinov2")


@pytest.fixture(scope="session")
def other_embedder() -> FakeEmbedder:
    """Another stand-in model: a different embedding space."""
    return fake_model("fake/other")


@pytest.fixture(scope="session")
def fake_loader() -> ModelLoader:
    """A ``ModelLoader`` that makes a stand-in for any model id (deterministic per id)."""
    return FAKE_LOADER


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv2 (2 layers, width 32) with the real DINOv2 processor config."""
    from dinoseek.synthetic import save_random_dinov2

    return save_random_dinov2(tmp_path_factory.mktemp("tiny-dinov2"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as ``tiny_model_dir``, other random weights: a different model."""
    from dinoseek.synthetic import save_random_dinov2

    return save_random_dinov2(tmp_path_factory.mktemp("other-dinov2"), size="tiny", seed=1)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path) -> ImageEmbedder:
    """The tiny DINOv2 on the CPU in float32, through ``from_pretrained``."""
    from dinoseek.torch_embedder import Embedder

    return Embedder.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for the embedded store in a temporary directory and the stand-in model."""
    return Settings(model="fake/dinov2", device="cpu", data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The cache of the benchmark scripts (``--cache``), shared by their smoke tests. Its
    ``random:tiny`` is ``tiny_model_dir`` (the same seed and size the scripts would write), so
    no script spends a process on writing it again."""
    cache = tmp_path_factory.mktemp("bench-cache")
    shutil.copytree(tiny_model_dir, cache / "models" / "random-tiny")
    return cache


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any ``time.sleep`` in this process (``refuse_to_wait``)."""
    monkeypatch.setattr("time.sleep", refuse_to_wait)
