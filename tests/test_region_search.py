"""Search by region and "why do two images match" through the real CLI (click's runner),
the real app (ASGI client) and the real embedded store, with the stand-in model: its patch
tokens are each patch's mean colour projected, so images made of four solid quadrants give
exact answers (which image, which quadrant) that depend on every step being right, the
centre crop included."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.input_geometry import InputGeometry
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek.regions import Box
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.admission import AdmittedRoutes
from search_api.app import create_app
from tests.cli_runner import invoke, run_json
from tests.helpers import admits, encode

MODEL = "fake/dinov2"  # the ``embedder`` fixture's id
SIZES = [(480, 320), (320, 320), (300, 450)]  # wide, square, tall
QUADRANTS = [
    Box(0, 0, 0.5, 0.5),
    Box(0.5, 0, 0.5, 0.5),
    Box(0, 0.5, 0.5, 0.5),
    Box(0.5, 0.5, 0.5, 0.5),
]


def quadrant_image(seed: int) -> Image.Image:
    """An image of four solid colours, one per quadrant, of one of ``SIZES``."""
    rng = random.Random(seed)
    width, height = SIZES[seed % len(SIZES)]
    image = Image.new("RGB", (width, height))
    for box in QUADRANTS:
        colour = tuple(rng.randrange(256) for _ in range(3))
        left, top = round(box.x * width), round(box.y * height)
        image.paste(colour, (left, top, left + width // 2, top + height // 2))
    return image


def quadrant_crop(image: Image.Image, quadrant: int) -> Image.Image:
    box = QUADRANTS[quadrant]
    left, top = round(box.x * image.width), round(box.y * image.height)
    return image.crop((left, top, left + image.width // 2, top + image.height // 2))


def assert_within(region: dict[str, float], image: Image.Image, quadrant: int) -> None:
    """The region lies in the quadrant, in the part of the image the model sees."""
    seen = InputGeometry.of(DINOV2_PREPROCESSING, image.width, image.height).visible()
    allowed = QUADRANTS[quadrant].intersect(seen)
    assert allowed is not None
    tolerance = 1e-3
    assert region["w"] > 0.1, region
    assert region["h"] > 0.1, region
    assert region["x"] >= allowed.x - tolerance, (region, allowed)
    assert region["y"] >= allowed.y - tolerance, (region, allowed)
    assert region["x"] + region["w"] <= allowed.x + allowed.w + tolerance, (region, allowed)
    assert region["y"] + region["h"] <= allowed.y + allowed.h + tolerance, (region, allowed)


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of nine quadrant images (PNG), by label."""
    root = tmp_path_factory.mktemp("quadrants")
    for seed in range(9):
        folder = root / "photos" / ("odd" if seed % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        quadrant_image(seed).save(folder / f"q{seed}.png")
    return root


@pytest.fixture(scope="module")
def indexed(quadrants: Path) -> Path:
    """The data dir: the photos indexed, then given regions."""
    data = quadrants / "data"
    common = ("--data-dir", data, "--model", MODEL, "-c", "images", "--labels-from-folders")
    first = run_json("index", quadrants / "photos", *common)
    assert (first["embedded"], first["regions_added"]) == (9, 0)
    second = run_json("index", quadrants / "photos", *common, "--regions")
    assert (second["embedded"], second["unchanged"], second["regions_added"]) == (0, 9, 9)
    third = run_json("index", quadrants / "photos", *common, "--regions")
    assert (third["embedded"], third["regions_added"]) == (0, 0)
    return data


def path_of(quadrants: Path, seed: int) -> Path:
    return quadrants / "photos" / ("odd" if seed % 2 else "even") / f"q{seed}.png"


def test_new_images_of_a_collection_with_regions_get_them(quadrants: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(quadrants / "photos", photos)
    data = tmp_path / "data"
    fresh = run_json("index", photos, "--data-dir", data, "--model", MODEL, "--regions")
    assert (fresh["embedded"], fresh["regions_added"]) == (9, 0)
    quadrant_image(40).save(photos / "even" / "new.png")
    later = run_json("index", photos, "--data-dir", data, "--model", MODEL)  # no --regions
    assert (later["embedded"], later["unchanged"]) == (1, 9)
    with EdgeStore(data) as store:
        store.acquire("images")
        assert list(store.ids_without_regions("images")) == []
        assert store.count("images") == 10


@pytest.mark.parametrize(("seed", "quadrant"), [(0, 0), (1, 3), (2, 2), (4, 1), (8, 3)])
def test_the_cli_finds_a_crop_and_where_it_lies(
    quadrants: Path, indexed: Path, seed: int, quadrant: int
) -> None:
    source = quadrant_image(seed)
    query = quadrants / f"crop-{seed}-{quadrant}.png"
    quadrant_crop(source, quadrant).save(query)
    found = run_json("search", query, "--regions", "--data-dir", indexed, "-k", "3")
    first = found["results"][0]
    assert first["path"] == str(path_of(quadrants, seed))
    assert first["score"] > 0.999
    assert_within(first["region"], source, quadrant)
    assert all(r["region"] is not None for r in found["results"])
    table = invoke("search", query, "--regions", "--data-dir", indexed, "-k", "1")
    assert table.exit_code == 0
    assert "region (x,y,w,h)" in table.output


def test_the_cli_searches_by_a_box_of_the_query(quadrants: Path, indexed: Path) -> None:
    source = path_of(quadrants, 3)  # 480 x 320: the model sees x 0.22..0.78
    found = run_json(
        "search", source, "--region", "0.5,0.5,0.5,0.5", "--data-dir", indexed, "-k", "2"
    )
    first = found["results"][0]
    assert first["path"] == str(source)
    assert_within(first["region"], quadrant_image(3), 3)
    filtered = run_json(
        "search", source, "--region", "0.5,0.5,0.5,0.5", "--filter", "label=odd",
        "--data-dir", indexed, "-k", "9",
    )  # fmt: skip
    assert filtered["results"]
    assert {r["label"] for r in filtered["results"]} == {"odd"}


def test_the_cli_refuses_what_it_cannot_search(quadrants: Path, indexed: Path) -> None:
    source = path_of(quadrants, 3)  # 480 x 320
    for bad in ("0,0,0.1", "0.6,0,0.5,0.5", "nan,0,1,1"):
        refused = invoke("search", source, "--region", bad, "--data-dir", indexed)
        assert refused.exit_code != 0
        assert "region" in refused.output
    cut_off = invoke("search", source, "--region", "0,0,0.2,1", "--data-dir", indexed)
    assert cut_off.exit_code != 0
    assert "the model sees" in cut_off.output
    run_json("index", quadrants / "photos", "--data-dir", indexed, "--model", MODEL, "-c", "bare")
    bare = invoke("search", source, "--regions", "--data-dir", indexed, "-c", "bare")
    assert bare.exit_code != 0
    assert "no region vectors" in bare.output


def test_info_says_which_collections_hold_region_vectors(quadrants: Path, indexed: Path) -> None:
    run_json("index", quadrants / "photos", "--data-dir", indexed, "--model", MODEL, "-c", "bare")
    document = run_json("info", "--data-dir", indexed)
    held = {entry["name"]: entry["regions"] for entry in document["collections"]}
    assert held == {"images": True, "bare": False}
    text = invoke("info", "--data-dir", indexed).stdout
    assert "images: region vectors stored: `dinoseek search --regions`" in text
    assert "bare: region" not in text


@pytest.fixture
def client(embedder: ImageEmbedder, indexed: Path) -> Iterator[TestClient]:
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=indexed)
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(indexed))) as http:
        yield http


def test_the_api_searches_by_region(client: TestClient, quadrants: Path) -> None:
    source = quadrant_image(2)  # 300 x 450: the model sees the middle of its height
    crop = encode(quadrant_crop(source, 1), "PNG")
    response = client.post("/search", params={"regions": True}, files={"image": ("q.png", crop)})
    assert response.status_code == 200, response.text
    first = response.json()["results"][0]
    assert first["path"] == str(path_of(quadrants, 2))
    assert_within(first["region"], source, 1)
    whole = encode(source, "PNG")
    boxed = client.post(
        "/search", params={"region": "0,0.5,0.5,0.5"}, files={"image": ("q.png", whole)}
    )
    assert boxed.status_code == 200
    assert_within(boxed.json()["results"][0]["region"], source, 2)
    threshold = client.post(
        "/search",
        params={"regions": True, "score_threshold": 0.9999, "top_k": 9},
        files={"image": ("q.png", crop)},
    )
    assert [r["path"] for r in threshold.json()["results"]] == [str(path_of(quadrants, 2))]
    labelled = client.post(
        "/search",
        params={"regions": True, "with_labels": True, "label": "odd"},
        files={"image": ("q.png", crop)},
    ).json()
    assert {r["label"] for r in labelled["results"]} == {"odd"}
    assert labelled["labels"] == region_vote(client, {"regions": True}, crop)
    plain = client.post("/search", files={"image": ("q.png", crop)}).json()
    assert all(r["region"] is None for r in plain["results"])
    # A box's labels: the vote by region; a probe classifies whole images only.
    box = {"region": "0,0.5,0.5,0.5"}
    voted = client.post(
        "/search",
        params={**box, "with_labels": True, "label": "odd"},
        files={"image": ("q.png", whole)},
    ).json()
    assert voted["labels"] == region_vote(client, box, whole)
    probed = client.post(
        "/search", params={**box, "label_method": "probe"}, files={"image": ("q.png", whole)}
    )
    assert probed.status_code == 422
    assert "a probe classifies whole images" in probed.json()["error"]["message"]


def region_vote(client: TestClient, params: dict[str, Any], image: bytes) -> list[dict[str, Any]]:
    """The reference vote: every point of the collection (nine, fewer than the ten a vote
    takes) weighted by its region score, whatever filter the labelled query had."""
    found = client.post(
        "/search", params={**params, "top_k": 9}, files={"image": ("q.png", image)}
    ).json()["results"]
    assert len(found) == 9
    votes: dict[str, float] = {}
    for hit in found:
        votes[hit["label"]] = votes.get(hit["label"], 0.0) + max(hit["score"], 0.0)
    ranked = sorted(votes.items(), key=lambda item: -item[1])
    return [
        {
            "label": label,
            "probability": pytest.approx(weight / sum(votes.values()), abs=1e-5),
            "method": "knn",
            "probe": None,
            "neighbours": 9,
        }
        for label, weight in ranked
    ]


@pytest.mark.parametrize(
    "region",
    ["0,0,0.5", "0,0,0,0.5", "nan,0,0.5,0.5", "-1,0,0.5,0.5", "0.9,0.9,0.5,0.5", "0,0,1,0.005"],
)
def test_the_api_refuses_a_bad_box_with_the_error_body(client: TestClient, region: str) -> None:
    data = encode(quadrant_image(2), "PNG")
    response = client.post("/search", params={"region": region}, files={"image": ("q.png", data)})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_region"
    assert set(response.json()["error"]) == {"code", "message"}


def test_the_api_refuses_region_search_on_a_collection_without_regions(
    client: TestClient, quadrants: Path, indexed: Path
) -> None:
    run_json("index", quadrants / "photos", "--data-dir", indexed, "--model", MODEL, "-c", "bare")
    data = encode(quadrant_image(2), "PNG")
    response = client.post(
        "/search", params={"regions": True, "collection": "bare"}, files={"image": ("q.png", data)}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "regions_not_indexed"
    listed = {c["name"]: c["regions"] for c in client.get("/collections").json()["collections"]}
    assert listed == {"images": True, "bare": False}  # what the page offers drawing a box on
    too_many = client.post(
        "/search", params={"regions": True, "top_k": 500}, files={"image": ("q.png", data)}
    )
    assert too_many.status_code == 422


def point_id(client: TestClient, path: Path) -> str:
    found = client.post("/search", files={"image": (path.name, path.read_bytes())})
    return str(found.json()["results"][0]["id"])


def test_why_two_images_match(client: TestClient, quadrants: Path) -> None:
    a_path, b_path = path_of(quadrants, 4), path_of(quadrants, 7)
    a, b = point_id(client, a_path), point_id(client, b_path)
    response = client.get(f"/points/{a}/match/{b}", params={"max_pairs": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["a"], body["b"]) == (a, b)
    assert 0 < len(body["pairs"]) <= 7
    scores = [pair["score"] for pair in body["pairs"]]
    assert scores == sorted(scores, reverse=True)
    seen = {
        side: InputGeometry.of(DINOV2_PREPROCESSING, *Image.open(path).size).visible()
        for side, path in (("a", a_path), ("b", b_path))
    }
    for pair in body["pairs"]:
        for side in ("a", "b"):
            box, x, y = seen[side], pair[side]["x"], pair[side]["y"]
            assert box.x <= x <= box.x + box.w
            assert box.y <= y <= box.y + box.h
    assert set(body["regions"]) == {"a", "b", "score"}

    # An image against itself: every pair joins two patches of one quadrant (of one colour).
    same = client.get(f"/points/{a}/match/{a}", params={"max_pairs": 100}).json()
    assert same["pairs"]
    assert all(same_quadrant(p) for p in same["pairs"])
    assert any(p["a"] == p["b"] for p in same["pairs"])
    # The upload is ``a``: the stored image uploaded matches itself the same way.
    uploaded = client.post(
        f"/points/{a}/match", files={"image": ("a.png", a_path.read_bytes())}
    ).json()
    assert uploaded["a"] is None
    assert uploaded["b"] == a
    assert uploaded["pairs"] == same["pairs"]
    assert uploaded["regions"] == same["regions"]


def same_quadrant(pair: dict[str, dict[str, float]]) -> bool:
    a, b = pair["a"], pair["b"]
    return (a["x"] < 0.5) == (b["x"] < 0.5) and (a["y"] < 0.5) == (b["y"] < 0.5)


def test_the_match_routes_bound_their_work_and_refuse_clearly(
    client: TestClient, quadrants: Path
) -> None:
    a = point_id(client, path_of(quadrants, 0))
    for params in ({"max_pairs": 0}, {"max_pairs": 101}):
        assert client.get(f"/points/{a}/match/{a}", params=params).status_code == 422
    unknown = "00000000-0000-5000-8000-000000000000"
    missing = client.get(f"/points/{a}/match/{unknown}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "point_not_found"
    assert client.get(f"/points/{a}/match/not-a-uuid").status_code == 422
    broken = client.post(f"/points/{a}/match", files={"image": ("x.png", b"not an image")})
    assert broken.status_code == 415
    assert set(broken.json()["error"]) == {"code", "message"}
    admitted = AdmittedRoutes(client.app.routes)  # type: ignore[attr-defined]
    assert admits(admitted, "GET", f"/points/{a}/match/{a}")
    assert admits(admitted, "POST", f"/points/{a}/match")
    assert not admits(admitted, "GET", f"/points/{a}")
    assert not admits(admitted, "POST", f"/points/{a}/match/{a}")


def test_the_openapi_document_states_the_region_parameters(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    search = {p["name"]: p for p in document["paths"]["/search"]["post"]["parameters"]}
    assert {"regions", "region"} <= set(search)
    assert "/points/{point_id}/match/{other_id}" in document["paths"]
    assert "/points/{point_id}/match" in document["paths"]
    assert json.dumps(document)  # serialisable as it is served
