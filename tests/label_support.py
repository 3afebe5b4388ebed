"""What the tests of the labelling and cluster routes share: the app on a copy of a small
indexed store, its ASGI client speaking from 127.0.0.1, and waiting for background work."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.indexing import indexed_tree

LOOPBACK = ("127.0.0.1", 50000)
HANG_S = 120  # a hang detector: the waits below end as soon as the service is done


def make_client(
    embedder: ImageEmbedder,
    data: Path,
    *,
    allow_writes: bool = True,
    client: tuple[str, int] = LOOPBACK,
    **settings: Any,
) -> TestClient:
    configured = Settings(model=embedder.model_id, device="cpu", data_dir=data, **settings)
    app = create_app(
        configured, embedder=embedder, store=EdgeStore(data), allow_writes=allow_writes
    )
    return TestClient(app, client=client)


def ids_by_name(client: TestClient) -> dict[str, str]:
    page = client.get("/points", params={"limit": 200}).json()
    return {Path(p["path"]).name: p["id"] for p in page["points"]}


def wait_for(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` until it returns something true (a hang detector, not a speed limit)."""
    deadline = time.monotonic() + HANG_S
    while not (found := check()):
        assert time.monotonic() < deadline, f"still waiting for {what} after {HANG_S} s"
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder) -> tuple[Path, Path]:
    """(data dir, photos dir): 3 classes of 5 photos, labelled by folder."""
    root = tmp_path_factory.mktemp("labels")
    return indexed_tree(root, embedder, per_class=5, classes=("cats", "dogs", "birds"))


@pytest.fixture
def data(indexed: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the indexed store this test may write to."""
    shutil.copytree(indexed[0], tmp_path / "data")
    return tmp_path / "data"
