"""Probes end to end: labelled folders -> index -> probe train -> labels over HTTP and CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.errors import ProbeMismatchError
from dinoseek.probe import LinearProbe, ProbeCache, choose_probe
from dinoseek.probe.collection import train_collection_probe
from dinoseek.search import knn_labels
from dinoseek.search_types import Neighbour
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, StoredProbe
from dinoseek.synthetic import write_image_folder
from dinoseek_cli.main import main
from search_api.app import create_app
from tests.fakes import FAKE_LOADER

CLASSES = ("circles", "stripes", "squares")


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, obj=FAKE_LOADER)


@pytest.fixture(scope="module")
def labelled(
    tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder
) -> tuple[Path, Path]:
    """(data dir, photos): three classes of 12 images, indexed with folder labels."""
    root = tmp_path_factory.mktemp("labelled")
    photos = root / "photos"
    write_image_folder(photos, count=36, classes=CLASSES, size=(200, 150))
    result = invoke(
        "index",
        photos,
        "--model",
        "fake/dinov2",
        "--data-dir",
        root / "data",
        "--labels-from-folders",
        "--workers",
        "0",
        "-q",
    )
    assert result.exit_code == 0, result.output
    return root / "data", photos


@pytest.fixture(scope="module")
def trained(labelled: tuple[Path, Path]) -> tuple[Path, Path]:
    data, photos = labelled
    result = invoke("probe", "train", "--data-dir", data, "--min-per-class", "3", "--json")
    assert result.exit_code == 0, result.output
    return data, photos


def test_probe_train_reports_and_stores(trained: tuple[Path, Path]) -> None:
    data, _ = trained
    listed = json.loads(invoke("probe", "list", "--data-dir", data, "--json").stdout)
    assert listed["default"] == "default"
    (probe,) = listed["probes"]
    assert sorted(probe["classes"]) == sorted(CLASSES)
    assert probe["train_size"] > 0
    text = invoke("probe", "list", "--data-dir", data).stdout
    assert "default" in text
    evaluated = json.loads(invoke("probe", "eval", "--data-dir", data, "--json").stdout)
    assert evaluated["current"]["points"] == 36
    assert 0.0 <= evaluated["current"]["accuracy"] <= 1.0
    report = evaluated["training_report"]
    assert report["holdout_nll_after"] <= report["holdout_nll_before"] + 1e-9


def test_probe_eval_counts_abstentions_apart_from_errors(
    labelled: tuple[Path, Path], tmp_path: Path
) -> None:
    """A --min-confidence probe is judged on what it answers, and says how much that is;
    the reference is computed here from the stored vectors and the probe's probabilities."""
    import shutil

    from dinoseek.probe import labelled_vectors, load_probe

    data = tmp_path / "data"
    shutil.copytree(labelled[0], data)
    for name, floor in (("half", "0.39"), ("never", "1.0")):
        trained = invoke("probe", "train", "--data-dir", data, "--min-per-class", "3",
                         "--min-confidence", floor, "--name", name)  # fmt: skip
        assert trained.exit_code == 0, trained.output
    with EdgeStore(data) as store:
        store.acquire("images")
        probe = load_probe(store.probes, "images", "half", store.collection_space("images"))
        vectors, labels = labelled_vectors(store, "images")
    probabilities = probe.predict_proba(vectors)
    truth = np.array(labels, dtype=object)
    right = np.array(probe.classes, dtype=object)[probabilities.argmax(axis=1)] == truth
    answered = probabilities.max(axis=1) >= 0.39
    assert 0 < answered.sum() < len(labels)  # the case: some answered, some not
    current = json.loads(invoke("probe", "eval", "half", "--data-dir", data, "--json").stdout)[
        "current"
    ]
    assert current["min_confidence"] == 0.39
    assert (current["points"], current["answered"]) == (36, int(answered.sum()))
    assert current["coverage"] == round(answered.mean(), 4)
    assert current["accuracy"] == round(right[answered].mean(), 4)
    assert current["accuracy_if_all_answered"] == round(right.mean(), 4)
    for label, row in current["per_class"].items():
        mine = truth == label
        assert row["coverage"] == round(answered[mine].mean(), 4)
        assert row["accuracy"] == round(right[mine & answered].mean(), 4)
    text = invoke("probe", "eval", "half", "--data-dir", data).stdout
    assert f"answers {answered.mean():.1%} of them (coverage; the rest 'unknown')" in text
    assert f"{right[answered].mean():.1%} of those correctly" in text
    never = json.loads(invoke("probe", "eval", "never", "--data-dir", data, "--json").stdout)
    assert never["current"]["coverage"] == 0.0
    assert never["current"]["accuracy"] is None  # not 0%: it made no mistake, it abstained
    assert "answers none of them" in invoke("probe", "eval", "never", "--data-dir", data).stdout


def test_too_few_labels_are_refused_with_a_reason(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, count=4, classes=("a",), size=(64, 64))
    invoke(
        "index",
        photos,
        "--model",
        "fake/dinov2",
        "--data-dir",
        tmp_path / "d",
        "--labels-from-folders",
        "--workers",
        "0",
        "-q",
    )
    result = invoke("probe", "train", "--data-dir", tmp_path / "d")
    assert result.exit_code == 1
    assert "class" in result.stderr


def test_training_on_an_unlabelled_collection_says_how_to_label(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image_folder(photos, count=6, classes=("a", "b"), size=(64, 64))
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", tmp_path / "d",
                     "--workers", "0", "-q")  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    result = invoke("probe", "train", "--data-dir", tmp_path / "d")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "no labelled vectors to train on (none has a 'label')" in message
    assert "`dinoseek index FOLDER --labels-from-folders`" in message
    assert "`--labels-csv FILE` (path,label rows)" in message
    assert "the search page of `dinoseek serve`" in message


@pytest.fixture
def client(trained: tuple[Path, Path], embedder: ImageEmbedder) -> Iterator[TestClient]:
    data, _ = trained
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data)
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data))) as test:
        yield test


def query(photos: Path) -> dict[str, tuple[str, bytes]]:
    path = sorted((photos / "stripes").glob("*.jpg"))[0]
    return {"image": (path.name, path.read_bytes())}


def test_search_returns_probe_labels_that_sum_to_one(
    client: TestClient, trained: tuple[Path, Path]
) -> None:
    body = client.post("/search", files=query(trained[1]), params={"top_k": 5}).json()
    labels = body["labels"]
    assert {label["method"] for label in labels} == {"probe"}
    assert {label["probe"] for label in labels} == {"default"}
    assert sorted(label["label"] for label in labels) == sorted(CLASSES)
    assert sum(label["probability"] for label in labels) == pytest.approx(1.0, abs=1e-5)
    assert labels == sorted(labels, key=lambda label: -label["probability"])
    without = client.post("/search", files=query(trained[1]), params={"with_labels": False})
    assert without.json()["labels"] is None


def test_knn_labels_on_request(client: TestClient, trained: tuple[Path, Path]) -> None:
    body = client.post(
        "/search", files=query(trained[1]), params={"label_method": "knn", "top_k": 10}
    ).json()
    labels = body["labels"]
    assert {label["method"] for label in labels} == {"knn"}
    assert sum(label["probability"] for label in labels) == pytest.approx(1.0, abs=1e-5)
    neighbour_labels = {r["label"] for r in body["results"]}
    assert {label["label"] for label in labels} <= neighbour_labels


def test_classify_probes_and_batch(client: TestClient, trained: tuple[Path, Path]) -> None:
    classified = client.post("/classify", files=query(trained[1])).json()
    assert classified["labels"][0]["method"] == "probe"
    assert sum(label["probability"] for label in classified["labels"]) == pytest.approx(1.0)
    by_knn = client.post("/classify", files=query(trained[1]), params={"label_method": "knn"})
    assert by_knn.json()["labels"][0]["method"] == "knn"
    probes = client.get("/probes").json()
    assert probes["default"] == "default"
    assert probes["probes"][0]["name"] == "default"
    missing = client.post("/search", files=query(trained[1]), params={"probe": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "probe_not_found"
    image = query(trained[1])["image"]
    batch = client.post("/search/batch", files=[("images", image), ("images", image)]).json()
    assert all(item["labels"][0]["method"] == "probe" for item in batch["items"])


def test_without_a_probe_labels_are_opt_in_and_come_from_neighbours(
    labelled: tuple[Path, Path], embedder: ImageEmbedder, tmp_path: Path
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(labelled[0], data)
    for path in (data / "images" / "probes").glob("*"):
        path.unlink()
    settings = Settings(model=embedder.model_id, device="cpu", data_dir=data)
    with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data))) as client:
        default = client.post("/search", files=query(labelled[1])).json()
        assert default["labels"] is None
        asked = client.post("/search", files=query(labelled[1]), params={"with_labels": True})
        assert asked.json()["labels"][0]["method"] == "knn"
        forced = client.post(
            "/classify", files=query(labelled[1]), params={"label_method": "probe"}
        )
        assert forced.status_code == 404


def test_a_probe_of_another_model_is_refused(
    trained: tuple[Path, Path],
    other_embedder: ImageEmbedder,
    tmp_path: Path,
    embedder: ImageEmbedder,
) -> None:
    data, _ = trained
    with EdgeStore(data) as store:
        stored = LinearProbe.from_bytes(store.probes.load("images", "default"))
    other = other_embedder
    with pytest.raises(ProbeMismatchError, match="different model"):
        stored.check_compatible(other.model_id, other.dim, other.space.fingerprint)
    stored.check_compatible(embedder.model_id, embedder.dim, embedder.space.fingerprint)
    # Served: a probe made for another model answers 409, not a silent wrong label.
    foreign = LinearProbe(
        classes=("a", "b"),
        weight=np.zeros((2, 32), np.float32),
        bias=np.zeros(2, np.float32),
        temperature=1.0,
        name="foreign",
        model_id=other.model_id,
        dim=32,
        accuracy=1.0,
        trained_at="2026-01-01T00:00:00+00:00",
        train_size=2,
        fingerprint=other.space.fingerprint,
    )
    with EdgeStore(data) as store:
        store.probes.save("images", "foreign", foreign.to_bytes(), foreign.metadata())
    try:
        settings = Settings(model=embedder.model_id, device="cpu", data_dir=data)
        with TestClient(create_app(settings, embedder=embedder, store=EdgeStore(data))) as client:
            refused = client.post("/search", files=query(trained[1]), params={"probe": "foreign"})
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "probe_mismatch"
    finally:
        with EdgeStore(data) as store:
            store.probes.delete("images", "foreign")


def test_cli_search_shows_labels(trained: tuple[Path, Path]) -> None:
    data, photos = trained
    path = sorted((photos / "circles").glob("*.jpg"))[0]
    text = invoke("search", path, "--data-dir", data, "-k", "3").stdout
    already, labels = text.splitlines()[:2]  # the query is an indexed file: already there
    assert already.startswith(f"already there: {path} (similarity 1.0000")
    assert labels.startswith("labels (probe 'default'): ")
    document = json.loads(invoke("search", path, "--data-dir", data, "--json").stdout)
    assert sum(label["probability"] for label in document["labels"]) == pytest.approx(1.0)


def test_probe_delete(trained: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    assert invoke("probe", "delete", "default", "--data-dir", data).exit_code == 0
    gone = invoke("probe", "delete", "default", "--data-dir", data)
    assert gone.exit_code == 1
    assert "no probe 'default'" in gone.stderr


def test_probe_cache_sees_new_probes_after_its_ttl(
    labelled: tuple[Path, Path], embedder: ImageEmbedder, tmp_path: Path
) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(labelled[0], data)
    with EdgeStore(data) as store:
        for path in (data / "images" / "probes").glob("*"):
            path.unlink()
        cache = ProbeCache(store.probes, embedder.space, ttl_s=0.0)
        assert cache.get("images", None) is None
        store.acquire("images")
        train_collection_probe(store, "images", min_per_class=3)
        probe = cache.get("images", None)
        assert probe is not None
        assert probe.name == "default"


def test_choose_probe_and_knn_helpers() -> None:
    assert choose_probe([]) is None
    probes = [
        StoredProbe("b", {"trained_at": "2026-02"}),
        StoredProbe("a", {"trained_at": "2026-03"}),
    ]
    assert choose_probe(probes) == "a"
    assert choose_probe([*probes, StoredProbe("default", {})]) == "default"
    hits = [
        Neighbour("1", 0.9, None, "x", {}),
        Neighbour("2", 0.3, None, "y", {}),
        Neighbour("3", 0.5, None, None, {}),
    ]
    votes = knn_labels(hits)
    assert [v.label for v in votes] == ["x", "y"]
    assert votes[0].probability == pytest.approx(0.75)
