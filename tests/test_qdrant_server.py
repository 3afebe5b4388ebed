"""What only a real Qdrant server can show: the commands against it, snapshot restore
included (``ServerStore.restore``). No server runs here and none can be downloaded, so these
tests are marked ``qdrant_server`` and skipped unless ``DINOSEEK_TEST_QDRANT_URL`` points to
one (for example ``docker run -p 6333:6333 qdrant/qdrant``, then
``DINOSEEK_TEST_QDRANT_URL=http://127.0.0.1:6333 python -m pytest -m qdrant_server``).
Everywhere else the server store runs on qdrant-client's in-process mode (the contract and
congruence tests), which speaks the same API but is not the server."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.commands import invoke
from tests.helpers import write_tree

SERVER = os.environ.get("DINOSEEK_TEST_QDRANT_URL")
pytestmark = [
    pytest.mark.qdrant_server,
    pytest.mark.skipif(
        not SERVER, reason="no Qdrant server: set DINOSEEK_TEST_QDRANT_URL to run these"
    ),
]


@pytest.fixture
def collection() -> Iterator[str]:
    """A fresh collection name on the server, deleted afterwards."""
    name = f"dinoseek-test-{uuid.uuid4().hex[:8]}"
    yield name
    from qdrant_client import QdrantClient

    client = QdrantClient(url=SERVER)
    for leftover in (name, f"{name}-copy"):
        if client.collection_exists(leftover):
            client.delete_collection(leftover)
    client.close()


def test_index_search_snapshot_and_restore_on_a_server(collection: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=3)
    server = ("--qdrant-url", str(SERVER), "-c", collection)
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--labels-from-folders", *server)
    assert indexed.exit_code == 0, indexed.output
    found = invoke("search", paths[2], "--json", *server)
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["results"][0]["path"] == str(paths[2])
    archive = tmp_path / "snap.dinoseek-snapshot.tar.gz"
    created = invoke("snapshot", "create", archive, *server)
    assert created.exit_code == 0, created.output
    refused = invoke("snapshot", "restore", archive, *server)
    assert refused.exit_code != 0
    assert "already exists" in refused.output
    copy = ("--qdrant-url", str(SERVER), "-c", f"{collection}-copy")
    restored = invoke("snapshot", "restore", archive, "--json", *copy)
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["points"] == len(paths)
    again = invoke("search", paths[2], "--json", *copy)
    assert json.loads(again.stdout)["results"][0]["path"] == str(paths[2])
    replaced = invoke("snapshot", "restore", archive, "--replace", *server)
    assert replaced.exit_code == 0, replaced.output
