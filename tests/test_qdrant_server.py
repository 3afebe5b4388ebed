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

from tests.cli_runner import invoke
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
    for leftover in (name, f"{name}-copy", f"{name}-ray"):
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


@pytest.mark.ray
def test_ray_actors_write_to_the_server_what_the_local_engine_writes(
    collection: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a server, the embedding actors upsert their points themselves and the driver
    only merges duplicates: the same points as the local engine (qdrant-client's in-process
    mode cannot stand in here: it belongs to one process, and the actors are others)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from qdrant_client import QdrantClient

    from tests.ray_support import ray_env

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=4)
    (photos / "cats" / "copy.jpg").write_bytes(paths[5].read_bytes())
    common = ("--model", "fake/dinov2", "--labels-from-folders", "--qdrant-url", str(SERVER))
    local = invoke("index", photos, *common, "-c", collection)
    assert local.exit_code == 0, local.output
    distributed = invoke(
        "index", photos, *common, "-c", f"{collection}-ray", "--engine", "ray",
        "--ray-address", "local", "--json",
    )  # fmt: skip
    assert distributed.exit_code == 0, distributed.output
    assert json.loads(distributed.stdout)["duplicates"] == 1
    client = QdrantClient(url=SERVER)

    def points(name: str) -> dict[str, dict[str, object]]:
        found, _ = client.scroll(name, limit=1000, with_payload=True)
        return {
            str(p.id): {k: v for k, v in (p.payload or {}).items() if k != "indexed_at"}
            for p in found
        }

    assert points(f"{collection}-ray") == points(collection)
    client.close()


def test_a_collection_created_with_int8_and_hnsw_settings_on_a_server(
    collection: str, tmp_path: Path
) -> None:
    from qdrant_client import QdrantClient

    photos = tmp_path / "photos"
    write_tree(photos, per_class=2)
    indexed = invoke(
        "index", photos, "--model", "fake/dinov2", "--qdrant-url", str(SERVER), "-c",
        collection, "--quantization", "int8", "--hnsw-m", "24",
    )  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    client = QdrantClient(url=SERVER)
    config = client.get_collection(collection).config
    client.close()
    assert config.hnsw_config.m == 24
    assert config.quantization_config is not None
