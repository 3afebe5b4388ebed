"""The kNN vote of labels is the image's, not the view's: it is taken over the nearest points
of the whole collection, whatever label filter, threshold, offset or top-k a query uses to
choose what it shows (the page predicted "squares 100%" for a circle under the squares
filter). The real app, the real CLI and a real embedded store; the stand-in model, whose
vectors follow the images' content (three classes of generated shapes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.search_types import VOTE_NEIGHBOURS
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from dinoseek.synthetic import write_image_folder
from dinoseek_cli.main import main
from search_api.app import create_app
from tests.fakes import FAKE_LOADER

CLASSES = ("circles", "stripes", "squares")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, photos): three classes of 12 generated images, labelled by folder."""
    root = tmp_path_factory.mktemp("vote")
    write_image_folder(root / "photos", count=36, classes=CLASSES, size=(200, 150))
    done = CliRunner().invoke(
        main,
        ["index", str(root / "photos"), "--model", "fake/dinov2", "--data-dir",
         str(root / "data"), "--labels-from-folders", "--workers", "0", "-q"],
        obj=FAKE_LOADER,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    return root / "data", root / "photos"


@pytest.fixture
def client(embedder: ImageEmbedder, labelled: tuple[Path, Path]) -> Iterator[TestClient]:
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=labelled[0])
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(labelled[0]))) as c:
        yield c


def a_circle(labelled: tuple[Path, Path]) -> Path:
    return sorted((labelled[1] / "circles").iterdir())[0]


def search(client: TestClient, image: Path, **params: Any) -> dict[str, Any]:
    answer = client.post(
        "/search",
        params={"with_labels": "true", "label_method": "knn", **params},
        files={"image": (image.name, image.read_bytes())},
    )
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def test_a_label_filter_chooses_what_is_shown_not_the_predicted_label(
    client: TestClient, labelled: tuple[Path, Path]
) -> None:
    circle = a_circle(labelled)
    plain = search(client, circle)
    filtered = search(client, circle, label="squares", top_k=3)
    assert {r["label"] for r in filtered["results"]} == {"squares"}  # what is shown
    assert plain["labels"][0]["label"] == "circles"
    assert filtered["labels"] == plain["labels"]  # what the image is
    assert {label["neighbours"] for label in filtered["labels"]} == {VOTE_NEIGHBOURS}
    assert {label["method"] for label in filtered["labels"]} == {"knn"}


def test_top_k_offset_and_threshold_leave_the_vote_alone(
    client: TestClient, labelled: tuple[Path, Path]
) -> None:
    circle = a_circle(labelled)
    reference = search(client, circle)["labels"]
    for params in ({"top_k": 1}, {"top_k": 36}, {"offset": 20}, {"score_threshold": 0.9999}):
        assert search(client, circle, **params)["labels"] == reference, params


def test_classify_votes_over_as_many_neighbours_as_it_is_told(
    client: TestClient, labelled: tuple[Path, Path]
) -> None:
    circle = a_circle(labelled)
    answer = client.post(
        "/classify",
        params={"label_method": "knn", "top_k": 36},
        files={"image": (circle.name, circle.read_bytes())},
    )
    assert answer.status_code == 200, answer.text
    labels = answer.json()["labels"]
    assert {label["neighbours"] for label in labels} == {36}
    assert sorted(label["label"] for label in labels) == sorted(CLASSES)  # all voted


def test_the_cli_says_what_the_vote_was_taken_over(labelled: tuple[Path, Path]) -> None:
    data, _ = labelled
    circle = a_circle(labelled)
    done = CliRunner().invoke(
        main,
        ["search", str(circle), "--data-dir", str(data), "-k", "2", "--filter", "label=squares"],
        obj=FAKE_LOADER,
    )
    assert done.exit_code == 0, done.output
    first = done.stdout.splitlines()[1]  # after "already there: ": the circle is indexed
    assert first.startswith(
        f"labels (vote of the {VOTE_NEIGHBOURS} nearest in the collection, filters aside): circles "
    )
    as_json = CliRunner().invoke(
        main,
        ["search", str(circle), "--data-dir", str(data), "--filter", "label=squares", "--json"],
        obj=FAKE_LOADER,
    )
    labels = json.loads(as_json.stdout)["labels"]
    assert labels[0]["label"] == "circles"
