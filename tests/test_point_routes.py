"""Points added and deleted, collections deleted and renamed over HTTP: the real app through
its ASGI client, a real embedded store indexed by the real indexer, the stand-in model (these
tests are about the service, not the model).

The client speaks from 127.0.0.1 and the app is started with ``--allow-writes`` unless a test
says otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, point_id_for_sha256
from dinoseek.uploads import UPLOADS_DIR
from indexer.catalog import Catalog, LabelSource, build_payload
from indexer.pipeline import IndexOptions, index_folders
from search_api.app import create_app
from tests.cli_runner import invoke
from tests.helpers import bad_image_samples, encode, photo, png_header_only
from tests.label_support import data, indexed, make_client  # the fixtures data and indexed
from tests.test_api import HeldEmbedder, WatchedBody, serving

__all__ = ["data", "indexed"]  # fixtures

KEY = "point-key"
NEW = encode(photo(901, (300, 220)), "JPEG", quality=90)  # an image the collection lacks


def add(client: TestClient, data: bytes = NEW, **form: Any) -> httpx.Response:
    params = form.pop("params", {})
    return client.post("/points", files={"image": ("new.jpg", data)}, data=form, params=params)


def pool_files(data_dir: Path) -> list[Path]:
    """Every file under the upload pool (temporary ones included)."""
    return sorted(p for p in (data_dir / UPLOADS_DIR).rglob("*") if p.is_file())


def count(client: TestClient, collection: str = "images") -> int:
    body = client.get("/collections").json()
    return next(c["points"] for c in body["collections"] if c["name"] == collection)


def indexed_point(client: TestClient) -> dict[str, Any]:
    point: dict[str, Any] = client.get("/points", params={"limit": 1}).json()["points"][0]
    return point


# -- adding -------------------------------------------------------------------------------


def test_an_image_is_added_once_with_its_neighbours(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data) as client:
        before = count(client)
        first = add(client, params={"top_k": 5})
        assert first.status_code == 200, first.text
        body = first.json()
        sha256 = hashlib.sha256(NEW).hexdigest()
        assert body["id"] == point_id_for_sha256(sha256)  # the id `dinoseek index` gives it
        assert body["created"] is True
        assert body["collection"] == "images"
        assert len(body["results"]) == 5
        assert body["id"] not in {r["id"] for r in body["results"]}
        # The neighbours are those of the stored point: what /similar answers for it.
        similar = client.get(f"/points/{body['id']}/similar", params={"top_k": 5}).json()
        assert [r["id"] for r in body["results"]] == [r["id"] for r in similar["results"]]
        assert count(client) == before + 1

        again = add(client, params={"top_k": 5})
        assert again.status_code == 200
        assert again.json()["created"] is False
        assert again.json()["id"] == body["id"]
        assert again.json()["results"] == body["results"]
        assert count(client) == before + 1

    # Content-addressed, whole, and nothing else in the pool (no temporary file).
    kept = data / UPLOADS_DIR / sha256[:2] / f"{sha256}.jpg"
    assert pool_files(data) == [kept]
    assert kept.read_bytes() == NEW


def test_an_added_point_is_served_and_read_back_as_indexed_points_are(
    embedder: ImageEmbedder, data: Path, indexed: tuple[Path, Path]
) -> None:
    with make_client(embedder, data) as client:
        point_id = add(client, label="owls").json()["id"]
        payload = client.get(f"/points/{point_id}").json()["payload"]
        assert payload["label"] == "owls"
        assert payload["label_source"] == "api"
        assert payload["sha256"] == hashlib.sha256(NEW).hexdigest()
        assert payload["size"] == len(NEW)
        file = client.get(f"/points/{point_id}/image")  # passes the served-bytes hash check
        assert file.status_code == 200
        assert file.content == NEW
        assert file.headers["content-type"] == "image/jpeg"
        thumbnail = client.get(f"/points/{point_id}/image", params={"size": 64})
        assert thumbnail.status_code == 200
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 64
        # Found by its label, as any labelled point.
        found = client.get("/points", params={"label": "owls"}).json()["points"]
        assert [p["id"] for p in found] == [point_id]
    # The indexer reads it back as it is: its payload is the one the indexer would write.
    with EdgeStore(data) as store:
        store.acquire("images")
        (stored,) = store.get("images", [point_id])
        catalog = Catalog.load(store, "images")
    assert build_payload(catalog.points[point_id]) == stored.payload


def test_an_index_run_keeps_an_added_point_and_its_label(
    embedder: ImageEmbedder, data: Path, indexed: tuple[Path, Path]
) -> None:
    with make_client(embedder, data) as client:
        point_id = add(client, label="owls").json()["id"]
        before = count(client)
    options = IndexOptions(
        roots=(indexed[1],),
        collection="images",
        failures_report=data.parent / "failures.jsonl",
        workers=0,
        progress="off",
        labels=LabelSource(from_folders=True),
    )
    with EdgeStore(data) as store:
        summary = index_folders(embedder, store, options)
    assert summary.removed == 0
    with make_client(embedder, data) as client:
        assert count(client) == before
        payload = client.get(f"/points/{point_id}").json()["payload"]
        assert payload["label"] == "owls"
        assert payload["label_source"] == "api"
        assert client.get(f"/points/{point_id}/image").content == NEW


def test_a_label_given_again_labels_the_existing_point(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data) as client:
        point_id = add(client).json()["id"]
        assert client.get(f"/points/{point_id}").json()["payload"]["label"] is None
        again = add(client, label="owls")
        assert again.json()["created"] is False
        assert client.get(f"/points/{point_id}").json()["payload"]["label"] == "owls"


def test_a_missing_collection_is_created_for_the_model(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data) as client:
        added = add(client, params={"collection": "fresh"})
        assert added.status_code == 200, added.text
        assert added.json()["results"] == []  # alone in it
        assert count(client, "fresh") == 1
        listed = client.get("/collections").json()["collections"]
        assert {c["name"]: c["model"] for c in listed}["fresh"] == embedder.model_id


def test_a_failed_store_write_leaves_no_file(
    embedder: ImageEmbedder, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dinoseek.errors import StoreUnavailableError

    def refuse(*args: object) -> None:
        raise StoreUnavailableError("the store is away")

    with make_client(embedder, data) as client:
        before = count(client)
        monkeypatch.setattr(client.app.state.service.store, "upsert", refuse)  # type: ignore[attr-defined]
        response = add(client)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "store_unavailable"
        monkeypatch.undo()
        assert count(client) == before
    assert pool_files(data) == []


def test_a_file_is_never_visible_half_written(
    embedder: ImageEmbedder, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write is interrupted after the bytes are written, before the rename: nothing is
    under the pool's name meanwhile, and nothing is left after."""
    import dinoseek.uploads

    seen: list[list[Path]] = []

    def interrupted(source: str, target: str) -> None:
        seen.append(pool_files(data))
        raise OSError(28, "No space left on device")

    with make_client(embedder, data) as client:
        monkeypatch.setattr(dinoseek.uploads.os, "replace", interrupted)
        response = add(client)
        monkeypatch.undo()
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upload_not_written"
        assert "No space left on device" in response.json()["error"]["message"]
        (during,) = seen  # the whole content, under a temporary name only
        assert [p.name.startswith(".partial-") for p in during] == [True]
        assert pool_files(data) == []
        point_id = point_id_for_sha256(hashlib.sha256(NEW).hexdigest())
        assert client.get(f"/points/{point_id}").status_code == 404


# -- deleting -----------------------------------------------------------------------------


def test_delete_removes_the_point_and_its_file(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data) as client:
        before = count(client)
        point_id = add(client).json()["id"]
        assert len(pool_files(data)) == 1
        deleted = client.delete(f"/points/{point_id}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"id": point_id, "collection": "images", "upload_removed": True}
        assert pool_files(data) == []
        assert count(client) == before
        assert client.get(f"/points/{point_id}").status_code == 404
        gone = client.delete(f"/points/{point_id}")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "point_not_found"


def test_the_image_of_an_indexed_file_is_not_deleted(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data) as client:
        point = indexed_point(client)
        before = count(client)
        refused = client.delete(f"/points/{point['id']}")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "point_in_folder"
        assert point["path"] in error["message"]
        assert "dinoseek index" in error["message"]
        assert Path(point["path"]).is_file()
        assert count(client) == before
        assert client.get(f"/points/{point['id']}").status_code == 200


def test_an_image_two_collections_list_is_removed_with_the_last(
    embedder: ImageEmbedder, data: Path
) -> None:
    with make_client(embedder, data) as client:
        point_id = add(client).json()["id"]
        assert add(client, params={"collection": "other"}).json()["created"] is True
        (kept,) = pool_files(data)  # one file for both
        first = client.delete(f"/points/{point_id}")
        assert first.json()["upload_removed"] is False
        assert kept.is_file()
        assert (
            client.get(f"/points/{point_id}/image", params={"collection": "other"}).content == NEW
        )
        last = client.delete(f"/points/{point_id}", params={"collection": "other"})
        assert last.json()["upload_removed"] is True
        assert pool_files(data) == []


# -- collections --------------------------------------------------------------------------


def test_a_collection_is_renamed_and_deleted_with_its_files(
    embedder: ImageEmbedder, data: Path
) -> None:
    with make_client(embedder, data) as client:
        point_id = add(client, params={"collection": "extra"}).json()["id"]
        (data / "catalogs").mkdir(exist_ok=True)
        (data / "catalogs" / "extra.npz").write_bytes(b"a saved catalog")

        renamed = client.post("/collections/extra/rename", json={"to": "kept"})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json() == {
            "collection": "extra", "to": "kept", "points": 1, "probes": 0, "method": "moved"
        }  # fmt: skip
        assert not (data / "catalogs" / "extra.npz").exists()
        assert (data / "catalogs" / "kept.npz").read_bytes() == b"a saved catalog"
        names = {c["name"] for c in client.get("/collections").json()["collections"]}
        assert {"kept", "images"} <= names
        assert "extra" not in names
        served = client.get(f"/points/{point_id}/image", params={"collection": "kept"})
        assert served.content == NEW

        taken = client.post("/collections/kept/rename", json={"to": "images"})
        assert taken.status_code == 409
        assert taken.json()["error"]["code"] == "collection_exists"
        unknown = client.post("/collections/nothing/rename", json={"to": "else"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "collection_not_found"

        deleted = client.delete("/collections/kept")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"collection": "kept", "uploads_removed": 1}
        assert pool_files(data) == []
        assert not (data / "catalogs" / "kept.npz").exists()
        assert "kept" not in {c["name"] for c in client.get("/collections").json()["collections"]}
        again = client.delete("/collections/kept")
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "collection_not_found"
        assert count(client) > 0  # the others are untouched


def test_deleting_a_collection_keeps_the_images_another_lists(
    embedder: ImageEmbedder, data: Path
) -> None:
    with make_client(embedder, data) as client:
        add(client)
        add(client, params={"collection": "other"})
        assert client.delete("/collections/other").json()["uploads_removed"] == 0
        (kept,) = pool_files(data)
        assert kept.read_bytes() == NEW


def test_the_service_serves_its_collection_again_once_an_image_is_added(
    embedder: ImageEmbedder, data: Path
) -> None:
    with make_client(embedder, data) as client:
        assert client.delete("/collections/images").status_code == 200
        assert client.get("/points").status_code == 404
        assert add(client).json()["created"] is True
        assert count(client) == 1


# -- the write policy and admission -------------------------------------------------------

SOME_ID = "6b1c1f6e-3d0e-5b8e-9c55-2d1b0e8f4a11"
WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/points", {"files": {"image": ("new.jpg", NEW)}}),
    ("delete", f"/points/{SOME_ID}", {}),
    ("delete", "/collections/images", {}),
    ("post", "/collections/images/rename", {"json": {"to": "renamed"}}),
]


@pytest.mark.parametrize(("method", "path", "options"), WRITES)
def test_every_write_needs_the_key(
    embedder: ImageEmbedder, data: Path, method: str, path: str, options: dict[str, Any]
) -> None:
    with make_client(embedder, data, allow_writes=False) as client:
        refused = client.request(method, path, **options)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "writes_not_allowed"
    with make_client(embedder, data, api_key=KEY) as client:
        wrong = client.request(method, path, headers={"X-API-Key": "wrong"}, **options)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "unauthorized"
        assert count_with(client, KEY) > 0  # nothing was written
        done = client.request(method, path, headers={"X-API-Key": KEY}, **options)
        assert done.status_code in (200, 404), done.text  # 404: the made-up point id
        if method == "delete" and path.startswith("/points/"):
            assert done.json()["error"]["code"] == "point_not_found"
        else:
            assert done.status_code == 200


def count_with(client: TestClient, key: str) -> int:
    body = client.get("/collections", headers={"X-API-Key": key}).json()
    return sum(c["points"] for c in body["collections"])


def test_an_image_added_to_a_busy_service_is_refused_before_it_is_read(
    data: Path,
) -> None:
    held = HeldEmbedder()
    settings = Settings(model=held.model_id, device="cpu", data_dir=data, max_queue=1)
    app = create_app(settings, embedder=held, store=EdgeStore(data), allow_writes=True)
    watched = WatchedBody(NEW)
    multipart = {"content-type": "multipart/form-data; boundary=abc"}

    async def two() -> tuple[httpx.Response, httpx.Response]:
        async with serving(app) as http:
            first = asyncio.create_task(http.post("/search", files={"image": ("q.jpg", NEW)}))
            try:
                await held.wait_entered()  # the first one is in the model now
                second = await http.post("/points", content=watched, headers=multipart)
            finally:
                held.release.set()
            return await first, second

    first, second = asyncio.run(two())
    assert first.status_code == 200
    assert second.status_code == 503
    assert second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "overloaded"
    assert not watched.read, "the upload was read before the 503"
    assert pool_files(data) == []


# -- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["truncated.jpg", "noise.png", "document.jpg", "bomb.png", "empty.jpg"]
)
def test_an_unusable_upload_adds_nothing(embedder: ImageEmbedder, data: Path, name: str) -> None:
    content, code = bad_image_samples()[name]
    with make_client(embedder, data) as client:
        before = count(client)
        response = client.post("/points", files={"image": (name, content)})
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["code"] == code
        assert count(client) == before
    assert pool_files(data) == []


def test_a_huge_pixel_count_is_refused(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data, max_image_pixels=1_000_000) as client:
        response = client.post(
            "/points", files={"image": ("wide.png", png_header_only(2_000, 1_000))}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_many_pixels"
    assert pool_files(data) == []


def test_an_upload_over_the_limit_is_refused(embedder: ImageEmbedder, data: Path) -> None:
    with make_client(embedder, data, max_upload_bytes=len(NEW) // 2) as client:
        response = add(client)
        assert response.status_code == 413
    assert pool_files(data) == []


@pytest.mark.parametrize("label", ["../../etc/passwd", "/tmp/x", "a/../../b", "C:\\Windows"])
def test_a_path_like_label_is_only_a_label(embedder: ImageEmbedder, data: Path, label: str) -> None:
    with make_client(embedder, data) as client:
        point_id = add(client, label=label).json()["id"]
        payload = client.get(f"/points/{point_id}").json()["payload"]
        assert payload["label"] == label
        sha256 = hashlib.sha256(NEW).hexdigest()
        assert payload["path"] == str(data.resolve() / UPLOADS_DIR / sha256[:2] / f"{sha256}.jpg")
    assert [p.name for p in pool_files(data)] == [f"{sha256}.jpg"]


@pytest.mark.parametrize("label", [" padded", "line\nbreak", "x" * 201, "nul\x00"])
def test_an_invalid_label_adds_nothing(embedder: ImageEmbedder, data: Path, label: str) -> None:
    with make_client(embedder, data) as client:
        before = count(client)
        response = add(client, label=label)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert count(client) == before
    assert pool_files(data) == []


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/points/not-an-id", 422, "invalid_point_id"),
        ("/points/..%2F..%2Fetc", 404, "not_found"),
        (f"/points/{SOME_ID}x", 422, "invalid_point_id"),
        ("/points/labels", 405, "method_not_allowed"),
        ("/collections/.uploads", 422, "invalid_request"),
        ("/collections/a%20b", 422, "invalid_request"),
        ("/collections/-x", 422, "invalid_request"),
        ("/collections/" + "a" * 65, 422, "invalid_request"),
    ],
)
def test_names_that_are_not_names_are_refused(
    embedder: ImageEmbedder, data: Path, path: str, status: int, code: str
) -> None:
    with make_client(embedder, data) as client:
        before = count(client)
        response = client.delete(path)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert count(client) == before


@pytest.mark.parametrize("to", ["../x", ".uploads", "", "a/b", "x" * 65])
def test_a_rename_to_a_name_that_is_not_one_is_refused(
    embedder: ImageEmbedder, data: Path, to: str
) -> None:
    with make_client(embedder, data) as client:
        response = client.post("/collections/images/rename", json={"to": to})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request"
        assert count(client) > 0


def test_the_command_deletes_a_collection_with_its_added_images(
    embedder: ImageEmbedder, data: Path
) -> None:
    """``dinoseek collection delete`` and ``DELETE /collections/{name}`` are the same core
    function: the added images go with the last collection that lists them."""
    with make_client(embedder, data) as client:
        add(client)
        add(client, params={"collection": "other"})
    (kept,) = pool_files(data)
    other = invoke("collection", "delete", "other", "--data-dir", data, "--yes", "--json")
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)["uploads_removed"] == []
    assert kept.is_file()
    images = invoke("collection", "delete", "images", "--data-dir", data, "--yes")
    assert images.exit_code == 0, images.output
    assert images.stdout.rstrip().endswith("1 added image")
    assert pool_files(data) == []
