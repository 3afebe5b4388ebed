"""The one search path (``dinoseek.search``): filters, the searcher and its label policy, on
the real embedded store with the stand-in model."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder, VectorOrError
from dinoseek.errors import (
    ConfigError,
    DinoseekError,
    EmbeddingError,
    InvalidPointIdError,
    PointNotFoundError,
    ProbeNotFoundError,
)
from dinoseek.search import Searcher
from dinoseek.search_types import Filters, LabelRequest, NeighbourQuery, SearchResult
from dinoseek.store import EdgeStore, point_id_for_sha256
from indexer.catalog import LabelSource
from indexer.pipeline import IndexOptions, index_folders
from tests.helpers import write_tree


def test_filters_parse_the_names_users_write() -> None:
    filters = Filters.parse(["label=cats", "root=/photos", "path=/photos/a=b.jpg"])
    assert filters == Filters(label="cats", root="/photos", path="/photos/a=b.jpg")
    assert filters.as_params() == {"label": "cats", "root": "/photos", "path": "/photos/a=b.jpg"}
    assert filters.conditions() == {"label": "cats", "roots": "/photos", "paths": "/photos/a=b.jpg"}
    assert Filters.parse([]).conditions() == {}
    for bad in ("colour=red", "label", "=cats"):
        with pytest.raises(ConfigError, match="NAME=VALUE"):
            Filters.parse([bad])


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder
) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("search")
    paths = write_tree(root / "photos", per_class=4, classes=("cats", "dogs"))
    options = IndexOptions(
        roots=(root / "photos",),
        collection="images",
        failures_report=root / "failures.jsonl",
        workers=0,
        progress="off",
        labels=LabelSource(from_folders=True),
    )
    with EdgeStore(root / "data") as store:
        index_folders(embedder, store, options)
    return root / "data", paths


@pytest.fixture
def searcher(indexed: tuple[Path, list[Path]], embedder: ImageEmbedder) -> Iterator[Searcher]:
    store = EdgeStore(indexed[0])
    try:
        yield Searcher(store, embedder, max_image_pixels=10**8)
    finally:
        store.close()


def point_id(path: Path) -> str:
    return point_id_for_sha256(hashlib.sha256(path.read_bytes()).hexdigest())


def test_an_image_finds_its_exact_copy_first(
    searcher: Searcher, indexed: tuple[Path, list[Path]]
) -> None:
    _, paths = indexed
    outcomes = searcher.search_images(
        "images",
        [(paths[1].read_bytes(), "a.jpg"), (b"not an image", "b.jpg"), (paths[6].read_bytes(), "")],
        NeighbourQuery(top_k=3),
        LabelRequest(),
    )
    first, bad, third = outcomes
    assert isinstance(first, SearchResult)
    assert isinstance(third, SearchResult)
    assert first.neighbours[0].path == str(paths[1])
    assert first.neighbours[0].score >= 0.999
    assert first.neighbours[0].id == point_id(paths[1])
    assert third.neighbours[0].path == str(paths[6])
    assert isinstance(bad, DinoseekError)
    assert bad.code == "not_an_image"
    assert first.labels is None  # no probe, not asked for


class RefusesDarkImages:
    """The stand-in model, except that it cannot embed an all-dark image (as the real one
    cannot embed an image it gives a non-finite vector)."""

    def __init__(self, inner: ImageEmbedder) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed_each(self, pixels: np.ndarray) -> list[VectorOrError]:
        return [
            EmbeddingError("produced a non-finite embedding") if image.max() < 16 else vector
            for image, vector in zip(pixels, self._inner.embed_each(pixels), strict=True)
        ]


def test_each_image_of_a_search_keeps_its_place_whichever_step_stops_it(
    indexed: tuple[Path, list[Path]], embedder: ImageEmbedder
) -> None:
    data, paths = indexed
    dark = io.BytesIO()
    Image.new("RGB", (64, 48)).save(dark, format="PNG")
    refusing = cast(ImageEmbedder, RefusesDarkImages(embedder))
    with EdgeStore(data) as store:
        outcomes = Searcher(store, refusing, max_image_pixels=10**8).search_images(
            "images",
            [
                (dark.getvalue(), "dark.png"),
                (paths[3].read_bytes(), "b.jpg"),
                (b"not an image", "c.jpg"),
                (dark.getvalue(), "dark-again.png"),
                (paths[5].read_bytes(), "e.jpg"),
            ],
            NeighbourQuery(top_k=1),
            LabelRequest(),
        )
    assert [getattr(o, "code", None) for o in outcomes] == [
        "embedding_failed",
        None,
        "not_an_image",
        "embedding_failed",
        None,
    ]
    assert [o.neighbours[0].path for o in outcomes if isinstance(o, SearchResult)] == [
        str(paths[3]),
        str(paths[5]),
    ]


def test_filters_reach_the_store(searcher: Searcher, indexed: tuple[Path, list[Path]]) -> None:
    _, paths = indexed
    query = searcher.embedder.embed_pixels(
        searcher.prepare(paths[0].read_bytes(), "q").pixels[None]
    )

    def found(**filters: str) -> list[str | None]:
        (result,) = searcher.search_vectors(
            "images",
            [query[0]],
            NeighbourQuery(top_k=20, filters=Filters(**filters)),
            LabelRequest(),
        )
        return [n.path for n in result.neighbours]

    assert found(path=str(paths[5])) == [str(paths[5])]
    assert sorted(found(label="dogs")) == sorted(str(p) for p in paths[4:])
    assert found(sha256=hashlib.sha256(paths[2].read_bytes()).hexdigest()) == [str(paths[2])]
    assert len(found(format="JPEG")) == 8
    assert found(format="PNG") == []
    assert found(root="/elsewhere") == []


def test_the_label_policy(searcher: Searcher, indexed: tuple[Path, list[Path]]) -> None:
    _, paths = indexed
    image = [(paths[0].read_bytes(), "q.jpg")]
    query = NeighbourQuery(top_k=4)

    def labels(request: LabelRequest) -> object:
        (result,) = searcher.search_images("images", image, query, request)
        assert isinstance(result, SearchResult)
        return result.labels

    assert labels(LabelRequest()) is None  # no probe: labels only on request
    assert labels(LabelRequest(with_labels=False)) is None
    voted = labels(LabelRequest(with_labels=True))
    assert isinstance(voted, list)
    assert {label.method for label in voted} == {"knn"}
    assert sum(label.probability for label in voted) == pytest.approx(1.0)
    with pytest.raises(ProbeNotFoundError, match="label_method=knn"):
        labels(LabelRequest(method="probe"))


def test_neighbours_of_a_stored_point(searcher: Searcher, indexed: tuple[Path, list[Path]]) -> None:
    _, paths = indexed
    neighbours = searcher.similar("images", point_id(paths[3]), NeighbourQuery(top_k=5))
    assert len(neighbours) == 5
    assert point_id(paths[3]) not in {n.id for n in neighbours}
    scores = [n.score for n in neighbours]
    assert scores == sorted(scores, reverse=True)
    only_dogs = searcher.similar(
        "images", point_id(paths[3]), NeighbourQuery(top_k=8, filters=Filters(label="dogs"))
    )
    assert {n.label for n in only_dogs} == {"dogs"}
    with pytest.raises(PointNotFoundError):
        searcher.similar("images", "00000000-0000-0000-0000-000000000000", NeighbourQuery())
    with pytest.raises(InvalidPointIdError):
        searcher.similar("images", "../etc/passwd", NeighbourQuery())


def test_the_label_policy_with_a_probe(
    indexed: tuple[Path, list[Path]], embedder: ImageEmbedder, tmp_path: Path
) -> None:
    import shutil

    from dinoseek.probe.collection import train_collection_probe

    data = tmp_path / "data"
    shutil.copytree(indexed[0], data)
    with EdgeStore(data) as store:
        store.acquire("images")
        train_collection_probe(store, "images", min_per_class=2, holdout=0.25)
        searcher = Searcher(store, embedder, max_image_pixels=10**8, probe_ttl_s=0)
        image = [(indexed[1][0].read_bytes(), "q.jpg")]

        def labels(request: LabelRequest) -> list[tuple[str, str | None]] | None:
            (result,) = searcher.search_images("images", image, NeighbourQuery(top_k=4), request)
            assert isinstance(result, SearchResult)
            if result.labels is None:
                return None
            return sorted({(label.method, label.probe) for label in result.labels})

        assert labels(LabelRequest()) == [("probe", "default")]  # a probe: labels by default
        assert labels(LabelRequest(method="knn")) == [("knn", None)]  # asked for the vote
        assert labels(LabelRequest(with_labels=False)) is None
        assert labels(LabelRequest(probe="default", method="probe")) == [("probe", "default")]
        with pytest.raises(ProbeNotFoundError, match="'nope'"):
            labels(LabelRequest(probe="nope"))
