"""The upload warning: a search whose best hit is at or above the duplicate threshold answers
with ``near_duplicate`` (the point's id, path, score and the threshold), in ``/search``,
``/search/batch`` (per item) and ``dinoseek search --json``; absent otherwise.

The real app (ASGI client) and the real CLI on the real embedded store with the stand-in
model (a re-encoded copy is above 0.999 to its source, distinct test images at most ~0.9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.cli_runner import invoke, run_json
from tests.fakes import fake_model
from tests.helpers import encode, photo, write_tree
from tests.test_dedup import copy_of

Indexed = tuple[Path, list[Path]]


@pytest.fixture
def indexed(tmp_path: Path) -> Indexed:
    """(data dir, the photos), indexed."""
    paths = write_tree(tmp_path / "photos", per_class=5, classes=("cats", "dogs"))
    data = tmp_path / "data"
    done = invoke("index", tmp_path / "photos", "--model", "fake/dinov2", "--data-dir", data)
    assert done.exit_code == 0, done.output
    return data, paths


def client_for(data: Path, **settings: Any) -> TestClient:
    options = Settings(model="fake/dinov2", data_dir=data, **settings)
    app = create_app(options, embedder=fake_model("fake/dinov2"), store=EdgeStore(data))
    return TestClient(app)


def ids_by_path(data: Path) -> dict[str, str]:
    with EdgeStore(data) as store:
        store.acquire("images")
        return {p.payload["path"]: p.id for p in store.scroll("images")}


def test_search_warns_when_the_upload_is_already_there(indexed: Indexed, tmp_path: Path) -> None:
    data, paths = indexed
    ids = ids_by_path(data)
    upload = copy_of(paths[3], tmp_path / "upload.jpg", quality=55).read_bytes()
    unrelated = encode(photo(999, (200, 150), kind="squares"))
    with client_for(data) as client:
        found = client.post("/search", files={"image": ("u.jpg", upload)}).json()
        warning = found["near_duplicate"]
        assert warning["id"] == ids[str(paths[3])] == found["results"][0]["id"]
        assert warning["path"] == str(paths[3])
        assert 0.99 < warning["score"] < 1.0
        assert warning["score"] == found["results"][0]["score"]
        assert warning["threshold"] == 0.95
        other = client.post("/search", files={"image": ("o.jpg", unrelated)}).json()
        assert other["results"][0]["score"] < 0.95
        assert "near_duplicate" not in other
        # Whatever the query shows, the warning is about the whole collection.
        for params in ({"offset": 2, "collapse_duplicates": True}, {"path": str(paths[8])}):
            narrowed = client.post("/search", files={"image": ("u.jpg", upload)}, params=params)
            assert narrowed.json()["results"][0]["path"] != str(paths[3])
            assert narrowed.json()["near_duplicate"] == warning
        batch = client.post(
            "/search/batch",
            files=[("images", ("u.jpg", upload)), ("images", ("o.jpg", unrelated)),
                   ("images", ("bad.jpg", b"not an image"))],
        ).json()["items"]  # fmt: skip
        assert batch[0]["near_duplicate"] == warning
        assert "near_duplicate" not in batch[1]
        assert "near_duplicate" not in batch[2]
        assert batch[2]["error"]["code"] == "not_an_image"
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "near_duplicate" in schema["SearchResponse"]["properties"]
    with client_for(data, duplicate_threshold=0.99999) as strict:
        answer = strict.post("/search", files={"image": ("u.jpg", upload)}).json()
        assert "near_duplicate" not in answer


def test_the_threshold_of_the_last_dedup_wins_over_the_setting(
    indexed: Indexed, tmp_path: Path
) -> None:
    data, paths = indexed
    upload = copy_of(paths[3], tmp_path / "upload.jpg", quality=55).read_bytes()
    assert invoke("dedup", "--data-dir", data, "--threshold", "1").exit_code == 0
    with client_for(data, duplicate_threshold=0.5) as client:
        copy = client.post("/search", files={"image": ("u.jpg", upload)}).json()
        assert "near_duplicate" not in copy  # 0.99... is below the dedup's 1
        same = client.post("/search", files={"image": ("s.jpg", paths[3].read_bytes())}).json()
        assert same["near_duplicate"]["threshold"] == 1.0
        assert same["near_duplicate"]["score"] == 1.0
    assert invoke("dedup", "--data-dir", data, "--clear").exit_code == 0
    with client_for(data, duplicate_threshold=0.5) as client:
        copy = client.post("/search", files={"image": ("u.jpg", upload)}).json()
        assert copy["near_duplicate"]["threshold"] == 0.5


def test_cli_search_says_so(indexed: Indexed, tmp_path: Path) -> None:
    data, paths = indexed
    upload = copy_of(paths[3], tmp_path / "upload.jpg", quality=55)
    document = run_json("search", upload, "--data-dir", data, "-k", "2")
    assert document["near_duplicate"]["path"] == str(paths[3])
    assert document["near_duplicate"]["threshold"] == 0.95
    text = invoke("search", upload, "--data-dir", data)
    assert text.exit_code == 0, text.output
    score = document["near_duplicate"]["score"]
    assert f"already there: {paths[3]} (similarity {score:.4f}, at or above 0.95)" in text.output
    unrelated = tmp_path / "unrelated.jpg"
    unrelated.write_bytes(encode(photo(999, (200, 150), kind="squares")))
    assert "near_duplicate" not in run_json("search", unrelated, "--data-dir", data)
    assert "already there" not in invoke("search", unrelated, "--data-dir", data).output
