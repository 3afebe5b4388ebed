"""The embedding stages of an index run (``indexer.stages``) and the writer the Ray actors share
with the driver (``indexer.writer``), on the real embedded store with the stand-in model.
Ray's own parts run in this process here; the engine on a Ray instance is in
``test_ray_engine.py``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.embedder_protocol import Pixels, VectorOrError
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, PointRecord, point_id_for_sha256
from dinoseek.store.server import ServerStore
from indexer import stages
from indexer.catalog import LabelSource
from indexer.pipeline import IndexOptions, IndexSummary, index_folders
from indexer.ray_engine import EmbedActor, EmbedJob, RayEngine, RayOptions, decode_batch
from indexer.stages.base import EmbeddedFile, Model, stored_content
from indexer.stages.ray import RayStage
from indexer.workers import DecodedFile, WorkerConfig, prepare_file
from tests.fakes import FAKE_LOADER, fake_model
from tests.helpers import write_tree
from tests.test_ray_units import rows_for

MODEL = "fake/dinov2"


class CountingEmbedder(FakeEmbedder):
    """The stand-in model, recording the size of each forward pass; its default batch size
    for its device is ``default_batch``."""

    def __init__(self, default_batch: int = 16) -> None:
        seed = fake_model(MODEL).seed
        super().__init__(model_id=MODEL, seed=seed)
        self.default_batch = default_batch
        self.passes: list[int] = []

    def default_batch_size(self) -> int:
        return self.default_batch

    def embed_each(self, pixels: Pixels) -> list[VectorOrError]:
        self.passes.append(len(pixels))
        return super().embed_each(pixels)


def index(embedder: FakeEmbedder, data: Path, photos: Path, **overrides: object) -> IndexSummary:
    options = IndexOptions(
        roots=(photos,),
        collection="images",
        failures_report=data / "failures.jsonl",
        progress="off",
        **overrides,  # type: ignore[arg-type]
    )
    with EdgeStore(data) as store:
        return index_folders(embedder, store, options)


def stored(data: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Each point's vector and primary path."""
    with EdgeStore(data) as store:
        store.acquire("images")
        return {
            p.id: (np.asarray(p.vector), str(p.payload["path"]))
            for p in store.scroll("images", with_vectors=True)
        }


def test_batch_size_and_decode_workers_come_from_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options that name neither leave both to ``dinoseek.runtime``: the model's batch for
    its device, and the decode processes for the machine's cores."""
    write_tree(tmp_path / "photos", per_class=7, classes=("a",))
    monkeypatch.setattr("dinoseek.runtime.available_cores", lambda: 8)  # cpu: a quarter
    workers: list[int] = []
    local_stage = stages.LocalStage

    def recording(model: Model, decode_workers: int) -> stages.LocalStage:
        workers.append(decode_workers)
        return local_stage(model, decode_workers)

    monkeypatch.setattr(stages, "LocalStage", recording)
    embedder = CountingEmbedder(default_batch=3)
    summary = index(embedder, tmp_path / "data", tmp_path / "photos")
    assert summary.embedded == 7
    assert embedder.passes == [3, 3, 1]
    assert workers == [2]


def test_content_met_twice_in_a_batch_goes_through_the_model_once(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    first = write_tree(photos, per_class=2, classes=("a",))[0]
    for copy in range(3):
        (photos / "a" / f"copy_{copy}.jpg").write_bytes(first.read_bytes())
    embedder = CountingEmbedder()
    summary = index(embedder, tmp_path / "data", photos, workers=0)
    assert (summary.embedded, summary.duplicates, summary.points) == (2, 3, 2)
    assert sum(embedder.passes) == 2


def test_content_stored_when_decoded_and_gone_when_taken_is_embedded_again(
    tmp_path: Path,
) -> None:
    """Two files swap contents: as the first is taken, the content of the second leaves the
    collection (its last file changed), so the second, decoded while its content was still
    stored, is read and embedded again."""
    photos = tmp_path / "photos"
    a, b = write_tree(photos, per_class=2, classes=("a",))
    embedder = CountingEmbedder()
    index(embedder, tmp_path / "data", photos, workers=0)
    before = stored(tmp_path / "data")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    os.utime(a, ns=(1, 1))
    os.utime(b, ns=(2, 2))
    summary = index(embedder, tmp_path / "data", photos, workers=0)
    assert (summary.embedded, summary.duplicates, summary.failed) == (1, 1, 0)
    after = stored(tmp_path / "data")
    assert set(after) == set(before)
    holds_now = {str(a): str(b), str(b): str(a)}
    for point_id, (vector, path) in after.items():
        np.testing.assert_allclose(vector, before[point_id][0], atol=1e-6)
        assert path == holds_now[before[point_id][1]], "the point lists the file holding it now"


def test_the_ray_stage_embeds_content_that_left_the_collection_since_the_run_began(
    tmp_path: Path,
) -> None:
    """The decode tasks skip the pixels of content stored when the run began; content that
    is not stored any more when the driver takes the file is read and embedded there."""
    (path,) = write_tree(tmp_path, per_class=1, classes=("a",))
    embedder = fake_model(MODEL)
    config = WorkerConfig(embedder.preprocessing, max_image_pixels=40_000_000)
    decoded = prepare_file(str(path), config)
    assert isinstance(decoded, DecodedFile)
    ids = {point_id_for_sha256(decoded.sha256)}
    engine = RayEngine(RayOptions(), FAKE_LOADER, Settings())
    model = Model(embedder, None, 4, config, ids)
    stage = RayStage(engine, model, collection="images", labels=LabelSource())
    facts = stored_content(decoded)
    assert stage._still_stored(facts) == facts
    ids.clear()  # its last file changed: the point is gone
    again = stage._still_stored(facts)
    assert isinstance(again, EmbeddedFile)
    expected = embedder.embed_pixels(embedder.stack([decoded.pixels]))[0]
    np.testing.assert_allclose(again.embedded.vector, expected, atol=1e-6)


class RefusingServer(ServerStore):
    """qdrant-client's in-process mode standing in for a server that refuses the points of
    files under ``refused/`` (as a store refuses a payload it cannot hold)."""

    def upsert(self, name: str, points: Sequence[PointRecord]) -> None:
        if any("/refused/" in str(p.payload.get("path")) for p in points):
            raise TypeError("failed to extract field Helper::String.0")
        super().upsert(name, points)


def test_an_actor_writes_the_points_a_server_takes_and_reports_those_it_refuses(
    tmp_path: Path,
) -> None:
    """The actor writes through the driver's writer: the refused points are found one at a
    time and reported as the driver reports them."""
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2, classes=("a", "refused"))
    embedder = fake_model(MODEL)
    config = WorkerConfig(embedder.preprocessing, max_image_pixels=40_000_000)
    job = EmbedJob(FAKE_LOADER, Settings(), MODEL, True, "images", None)
    with RefusingServer(QdrantClient(":memory:")) as store:
        store.ensure_collection("images", embedder.space)
        actor = EmbedActor(job, store=store)
        out = actor(decode_batch(rows_for(paths, photos), config=config, known_ids=frozenset()))
        assert store.count("images") == 2
    refused = ["/refused/" in str(path) for path in out["path"]]
    assert list(out["written"]) == [not r for r in refused]
    assert list(out["ok"]) == [not r for r in refused]
    assert {str(c) for c, r in zip(out["code"], refused, strict=True) if r} == {"store_refused"}
    messages = [str(m) for m, r in zip(out["message"], refused, strict=True) if r]
    assert all("the store refused it (TypeError: failed to extract" in m for m in messages)
