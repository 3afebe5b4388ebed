"""A collection replaced under a running server by one of another model. The server releases
a collection other than its own between queries, and once remembered such a collection as
compatible for ever: after ``dinoseek snapshot restore SNAP -c B --replace`` with a snapshot
of another model it went on answering 200 for ``?collection=B``, searching one model's
vectors with another's queries. The answer is 409, never a mixed result.

The real app through its ASGI client and the real ``dinoseek`` command on the same embedded
store (one process: the locks are per open file, so the command meets the server's locks as
another process would), with the stand-in models; the server-store path on qdrant-client's
in-process mode, where another client replaces the collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, PointRecord, ServerStore
from search_api.app import create_app
from tests.cli_runner import invoke
from tests.helpers import encode, photo, unit_vectors, write_tree

QUERY = encode(photo(5))


def search(client: TestClient, collection: str | None = None) -> tuple[int, dict[str, object]]:
    params = {} if collection is None else {"collection": collection}
    response = client.post("/search", files={"image": ("q.jpg", QUERY)}, params=params)
    return response.status_code, response.json()


def index(photos: Path, data: Path, model: str, collection: str) -> None:
    result = invoke("index", photos, "--model", model, "--data-dir", data, "-c", collection,
                    "--workers", "0", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.fixture
def served(tmp_path: Path, embedder: ImageEmbedder) -> Iterator[tuple[TestClient, Path, Path]]:
    """(the app serving ``images``, its data dir with a second collection ``B`` of the same
    model, a snapshot of a collection of another model)."""
    photos, data, elsewhere = tmp_path / "photos", tmp_path / "data", tmp_path / "elsewhere"
    write_tree(photos, per_class=3, classes=("cats", "dogs"))
    index(photos, data, "fake/dinov2", "images")
    index(photos, data, "fake/dinov2", "B")
    index(photos, elsewhere, "fake/other", "images")
    snapshot = tmp_path / "other-model.snapshot"
    created = invoke("snapshot", "create", snapshot, "--data-dir", elsewhere)
    assert created.exit_code == 0, created.output
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data)
    app = create_app(settings, embedder=embedder, store=EdgeStore(data))
    with TestClient(app) as client:
        yield client, data, snapshot


def test_a_restore_of_another_model_under_a_served_collection_answers_409(
    served: tuple[TestClient, Path, Path], tmp_path: Path
) -> None:
    client, data, snapshot = served
    assert search(client, "B")[0] == 200  # remembered as compatible, then released
    restored = invoke("snapshot", "restore", snapshot, "-c", "B", "--replace", "--data-dir", data)
    assert restored.exit_code == 0, restored.output
    status, body = search(client, "B")
    assert status == 409
    assert set(body) == {"error"}
    assert body["error"]["code"] == "collection_mismatch"  # type: ignore[index]
    assert "fake/other" in body["error"]["message"]  # type: ignore[index]
    for route in ("/points", "/duplicates"):
        assert client.get(route, params={"collection": "B"}).status_code == 409
    assert search(client)[0] == 200  # its own collection is untouched
    # Back to a collection of its model: checked again, compatible, served as restored.
    write_tree(tmp_path / "more", per_class=2, classes=("birds",))
    index(tmp_path / "more", tmp_path / "same", "fake/dinov2", "images")
    same = tmp_path / "same-model.snapshot"
    assert invoke("snapshot", "create", same, "--data-dir", tmp_path / "same").exit_code == 0
    restored = invoke("snapshot", "restore", same, "-c", "B", "--replace", "--data-dir", data)
    assert restored.exit_code == 0, restored.output
    status, body = search(client, "B")
    assert status == 200
    paths = {hit["path"] for hit in body["results"]}  # type: ignore[attr-defined]
    assert paths == {str(path) for path in (tmp_path / "more" / "birds").iterdir()}


def test_a_restore_of_the_served_collection_is_refused_before_it_is_unpacked(
    served: tuple[TestClient, Path, Path],
) -> None:
    """Its own collection the server holds: the restore refuses at once, before it reads
    more of the archive than its manifest (the rest of this one is cut off)."""
    client, data, snapshot = served
    _, before = search(client)
    snapshot.write_bytes(snapshot.read_bytes()[:-200])
    refused = invoke("snapshot", "restore", snapshot, "--replace", "--data-dir", data)
    assert refused.exit_code == 3, refused.output
    assert "is in use by process" in refused.output
    status, after = search(client)
    assert (status, after["results"]) == (200, before["results"])


# -- a Qdrant server: any client may replace a collection at any time ----------------------


def fill(store: ServerStore, name: str, model: ImageEmbedder, seed: int) -> None:
    store.ensure_collection(name, model.space)
    vectors = unit_vectors(4, model.space.dim, seed=seed)
    store.upsert(
        name,
        [PointRecord(f"00000000-0000-0000-0000-00000000000{i}", v, {}) for i, v in
         enumerate(vectors)],
    )  # fmt: skip


@pytest.mark.parametrize("replaced", ["B", "images"])
def test_a_collection_replaced_on_the_server_answers_409(
    embedder: ImageEmbedder, other_embedder: ImageEmbedder, replaced: str
) -> None:
    qdrant = QdrantClient(location=":memory:")
    server = ServerStore(qdrant)
    fill(server, "images", embedder, seed=1)
    fill(server, "B", embedder, seed=2)
    settings = Settings(model=embedder.model_id, device="cpu", qdrant_url="http://unused")
    with TestClient(create_app(settings, embedder=embedder, store=server)) as client:
        wanted = None if replaced == "images" else replaced
        assert search(client, wanted)[0] == 200
        another = ServerStore(qdrant)  # another client of the same server
        another.delete_collection(replaced)
        fill(another, replaced, other_embedder, seed=3)
        status, body = search(client, wanted)
        assert status == 409
        assert body["error"]["code"] == "collection_mismatch"  # type: ignore[index]
