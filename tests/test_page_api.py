"""What the search page needs from the service, through its ASGI client: the page and its
assets (open, with a same-origin Content-Security-Policy), browsing, the PCA picture, the
thumbnails' cache validators and their key cookie. The real app and a real embedded store;
the stand-in model, whose patch tokens follow the image's colours, except where the test is
about the model."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.helpers import encode, photo
from tests.indexing import indexed_tree

PER_CLASS = 5
CLASSES = ("cats", "dogs", "birds")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder) -> tuple[Path, Path]:
    """(data dir, photos dir): a labelled tree indexed into an embedded store."""
    root = tmp_path_factory.mktemp("page-api")
    return indexed_tree(root, embedder, per_class=PER_CLASS, classes=CLASSES)


def make_client(embedder: ImageEmbedder, data_dir: Path, **overrides: object) -> TestClient:
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data_dir, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data_dir)))


@pytest.fixture
def client(embedder: ImageEmbedder, indexed: tuple[Path, Path]) -> Iterator[TestClient]:
    with make_client(embedder, indexed[0]) as test_client:
        yield test_client


def some_point(client: TestClient) -> str:
    point_id: str = client.get("/points", params={"limit": 1}).json()["points"][0]["id"]
    return point_id


# -- the page ---------------------------------------------------------------------------------


def test_the_page_and_its_assets_need_no_key_and_reveal_nothing(
    embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    with make_client(embedder, indexed[0], api_key="k") as keyed:
        page = keyed.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script src="/ui/app.js"' in page.text
        for asset, kind in (
            ("/ui/app.js", "javascript"),
            ("/ui/style.css", "text/css"),
            ("/ui/icon.svg", "image/svg+xml"),
        ):
            answer = keyed.get(asset)
            assert answer.status_code == 200, asset
            assert kind in answer.headers["content-type"], asset
        everything = page.text + keyed.get("/ui/app.js").text
        assert str(indexed[1]) not in everything
        assert "cats" not in everything
        for escape in ("/ui/..%2Fauth.py", "/ui/%2e%2e/auth.py", "/ui/..%2F..%2Fpyproject.toml"):
            assert keyed.get(escape).status_code == 404, escape
        assert keyed.get("/ui/missing.js").status_code == 404
        assert keyed.get("/points", params={"limit": 1}).status_code == 401  # the data is keyed


def test_every_response_allows_only_this_origin(client: TestClient) -> None:
    for path in ("/", "/ui/app.js", "/ready", "/points?limit=1", "/nothing-here", "/docs"):
        policy = client.get(path).headers["content-security-policy"]
        assert "default-src 'self'" in policy, path
        assert "script-src 'self';" in policy, path
        assert "frame-ancestors 'none'" in policy, path
        assert "http" not in policy, path  # no other origin, no CDN


def test_the_api_docs_and_their_assets_come_from_the_service(
    embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    """Swagger UI and ReDoc load nothing from another site (tests/browser/test_docs.py shows
    them rendered offline), and need no key."""
    with make_client(embedder, indexed[0], api_key="k") as keyed:
        for page in ("/docs", "/redoc"):
            html = keyed.get(page)
            assert html.status_code == 200, page
            assert html.headers["content-type"].startswith("text/html"), page
            assert "<script>" not in html.text, page  # the policy forbids inline scripts
            sources = re.findall(r'(?:src|href)="([^"]*)"', html.text)
            assert sources, page
            for source in sources:
                assert source.startswith("/ui/"), (page, source)
                answer = keyed.get(source)
                assert answer.status_code == 200, source
                assert answer.content, source
        assert (
            keyed.get("/ui/docs/swagger-ui-bundle.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )


def test_the_page_leaves_no_inline_script_or_handler() -> None:
    """The policy forbids inline scripts: every script is a file, every handler is bound in
    JavaScript (an inline one would silently do nothing)."""
    from search_api.page import STATIC_DIR

    html = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)  # no onclick= and the like
    for name in ("app.js", "labels.js", "regions.js"):
        script = (STATIC_DIR / name).read_text()
        assert "innerHTML" not in script, name  # text goes in as text
        assert "insertAdjacentHTML" not in script, name
        assert f'<script src="/ui/{name}" defer></script>' in html, name


# -- browsing ---------------------------------------------------------------------------------


def test_browse_pages_through_every_point_once(client: TestClient) -> None:
    seen: list[str] = []
    start = None
    while True:
        params = {"limit": 4, **({"start": start} if start else {})}
        page = client.get("/points", params=params).json()
        assert len(page["points"]) <= 4
        seen += [p["id"] for p in page["points"]]
        start = page["next"]
        if start is None:
            break
    assert len(seen) == len(set(seen)) == PER_CLASS * len(CLASSES)
    assert seen == sorted(seen)  # id order
    first = client.get("/points", params={"limit": 2}).json()["points"][0]
    assert set(first) == {"id", "path", "label", "payload"}
    assert first["path"] == first["payload"]["path"]


def test_browse_from_a_random_place_and_by_label(client: TestClient) -> None:
    starts = set()
    for _ in range(12):
        page = client.get("/points", params={"limit": 3, "start": "random"}).json()
        assert len(page["points"]) == 3  # near the end, it starts again from the beginning
        starts.add(page["points"][0]["id"])
    assert len(starts) > 1, "twelve random pages all started at the same point"
    dogs = client.get("/points", params={"limit": 50, "label": "dogs"}).json()
    assert [p["label"] for p in dogs["points"]] == ["dogs"] * PER_CLASS
    assert dogs["next"] is None


def test_browse_refuses_a_start_that_is_not_a_point_id(client: TestClient) -> None:
    for start in ("../etc", "00000000-0000-0000-0000-00000000000g", "RANDOM"):
        answer = client.get("/points", params={"start": start})
        assert answer.status_code == 422, start
    assert client.get("/points", params={"limit": 0}).status_code == 422
    assert client.get("/points", params={"limit": 201}).status_code == 422


# -- what the model sees ----------------------------------------------------------------------


def pca_picture(client: TestClient, image: Image.Image, **params: object) -> np.ndarray:
    answer = client.post(
        "/embed/pca", files={"image": ("q.png", encode(image, "PNG"))}, params=params
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    decoded = Image.open(io.BytesIO(answer.content))
    assert decoded.mode == "RGB"
    return np.asarray(decoded)


def test_the_pca_picture_has_the_grid_shape_and_differs_between_images(
    client: TestClient,
) -> None:
    one = pca_picture(client, photo(1, (320, 240), kind="circles"))
    other = pca_picture(client, photo(2, (320, 240), kind="stripes"))
    assert one.shape == (224, 224, 3)  # the 16 x 16 grid of the 224 x 224 crop, 14 px a patch
    patches = one.reshape(16, 14, 16, 14, 3)
    assert (patches == patches[:, :1, :, :1]).all(), "each patch is one colour"
    assert np.abs(one.astype(int) - other.astype(int)).mean() > 10
    assert one.std() > 10, "a picture with no contrast"


def test_the_mask_blacks_out_the_background(client: TestClient) -> None:
    """A square of its own colour on a plain background, in both colourings (the sign of a
    principal component is arbitrary): the square is the foreground."""
    blue, yellow = (30, 120, 200), (250, 200, 20)
    for background, square in ((blue, yellow), (yellow, blue)):
        image = Image.new("RGB", (224, 224), background)
        image.paste(square, (56, 56, 168, 168))  # patches 4..11 of the 16 x 16 grid
        masked = pca_picture(client, image, mask="true")
        lit = masked[::14, ::14].sum(axis=2) > 0
        assert lit[5:11, 5:11].all(), f"the square is foreground on {background}"
        assert not lit[:3].any(), "the top rows are background"
        assert not lit[:, :3].any(), "the left columns are background"
        plain = pca_picture(client, image)
        assert (plain[::14, ::14].sum(axis=2) > 0).mean() > lit.mean()


def test_the_pca_picture_refuses_what_is_not_an_image(client: TestClient) -> None:
    answer = client.post("/embed/pca", files={"image": ("notes.txt", b"hello" * 100)})
    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == "not_an_image"


# -- thumbnails -------------------------------------------------------------------------------


def test_thumbnails_are_revalidated_by_etag(client: TestClient) -> None:
    point_id = some_point(client)
    first = client.get(f"/points/{point_id}/image", params={"size": 64})
    etag = first.headers["etag"]
    again = client.get(
        f"/points/{point_id}/image", params={"size": 64}, headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other_size = client.get(f"/points/{point_id}/image", params={"size": 32}).headers["etag"]
    assert other_size != etag
    original = client.get(f"/points/{point_id}/image").headers["etag"]
    assert original not in (etag, other_size)
    stale = client.get(
        f"/points/{point_id}/image", params={"size": 64}, headers={"If-None-Match": '"other"'}
    )
    assert stale.status_code == 200
    assert stale.content == first.content


def test_the_key_cookie_opens_images_only(
    embedder: ImageEmbedder, indexed: tuple[Path, Path]
) -> None:
    key = "k e/y=;"  # what a user may type; the page sends it percent-encoded
    with make_client(embedder, indexed[0], api_key=key) as keyed:
        point_id = keyed.get("/points", params={"limit": 1}, headers={"X-API-Key": key}).json()[
            "points"
        ][0]["id"]
        cookie = {"Cookie": "dinoseek_key=k%20e%2Fy%3D%3B"}
        assert (
            keyed.get(f"/points/{point_id}/image", params={"size": 32}, headers=cookie).status_code
            == 200
        )
        for path in (
            f"/points/{point_id}",
            f"/points/{point_id}/similar",
            "/points",
            "/collections",
        ):
            assert keyed.get(path, headers=cookie).status_code == 401, path
        data = encode(photo(0))
        assert (
            keyed.post("/search", files={"image": ("q.jpg", data)}, headers=cookie).status_code
            == 401
        )
        # Another app's loosely formatted cookie on the same host does not hide the key.
        crowded = {"Cookie": 'a=b c; theme={"x": 1}; dinoseek_key=k%20e%2Fy%3D%3B'}
        assert keyed.get(f"/points/{point_id}/image", headers=crowded).status_code == 200
        packed = {"Cookie": "a=b;dinoseek_key=k%20e%2Fy%3D%3B;c=d"}  # no spaces after ";"
        assert keyed.get(f"/points/{point_id}/image", headers=packed).status_code == 200
        wrong = {"Cookie": "dinoseek_key=nope"}
        assert keyed.get(f"/points/{point_id}/image", headers=wrong).status_code == 401
        broken = {"Cookie": 'dinoseek_key="unterminated'}
        assert keyed.get(f"/points/{point_id}/image", headers=broken).status_code == 401
