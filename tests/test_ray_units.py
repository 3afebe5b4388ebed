"""The Ray engine's parts without a Ray instance (fast): the decode task and the embedding
actor called in this process, what the driver makes of a worker's answers, and the command's
errors. The engine on a real local Ray instance is in ``test_ray_engine.py``."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.errors import ImageErrorCode
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.scan import ScannedFile
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, point_id_for_sha256
from dinoseek.store.server import ServerStore
from indexer import pipeline
from indexer.catalog import FileEntry, LabelSource, PointEntry, build_payload
from indexer.pipeline import IndexOptions, IndexRun
from indexer.ray_engine import (
    NOT_ON_WORKER,
    WORKER_LOST,
    EmbedActor,
    EmbedJob,
    RayEngine,
    RayOptions,
    decode_batch,
)
from indexer.report import load_failures
from indexer.stages.base import WrittenFile
from indexer.stages.ray import results_of
from indexer.workers import FailedFile, WorkerConfig
from tests.cli_runner import invoke
from tests.fakes import FAKE_LOADER
from tests.helpers import write_bad_files, write_tree

MODEL = "fake/dinov2"


def rows_for(paths: Sequence[Path], root: Path) -> dict[str, np.ndarray]:
    """The rows the driver hands to the decode tasks."""
    return {
        "path": np.array([str(p) for p in paths]),
        "root": np.array([str(root)] * len(paths)),
        "relative_path": np.array([p.relative_to(root).as_posix() for p in paths]),
        "label": np.array([p.parent.name for p in paths]),
    }


@pytest.fixture
def config(embedder: FakeEmbedder) -> WorkerConfig:
    return WorkerConfig(embedder.preprocessing, max_image_pixels=40_000_000)


def test_the_decode_task_prepares_new_content_and_reports_bad_files(
    config: WorkerConfig, tmp_path: Path
) -> None:
    paths = write_tree(tmp_path, per_class=2)
    bad = write_bad_files(tmp_path / "broken")
    bad_paths = sorted((tmp_path / "broken").iterdir())
    known = decode_batch(rows_for(paths[:1], tmp_path), config=config, known_ids=frozenset())
    known_id = point_id_for_sha256(str(known["sha256"][0]))

    out = decode_batch(
        rows_for([*paths, *bad_paths], tmp_path), config=config, known_ids=frozenset({known_id})
    )
    assert out["pixels"].shape == (len(paths) + len(bad_paths), 224, 224, 3)
    assert list(out["ok"]) == [True] * len(paths) + [False] * len(bad_paths)
    assert list(out["embed"]) == [False] + [True] * (len(paths) - 1) + [False] * len(bad_paths)
    assert not out["pixels"][0].any(), "content already stored travels without its pixels"
    assert out["pixels"][1].any()
    codes = {Path(p).name: str(c) for p, c in zip(out["path"], out["code"], strict=True)}
    assert {name: codes[name] for name in bad} == bad
    assert list(out["label"]) == [p.parent.name for p in [*paths, *bad_paths]]


def test_a_path_the_driver_sees_but_a_worker_does_not_is_not_on_worker(tmp_path: Path) -> None:
    seen = tmp_path / "seen.jpg"
    seen.write_bytes(b"x")
    gone = tmp_path / "gone.jpg"
    batch = {
        "path": np.array([str(seen), str(gone)]),
        "ok": np.array([False, False]),
        "code": np.array([ImageErrorCode.FILE_NOT_FOUND] * 2),
        "message": np.array([f"{seen}: vanished before reading", f"{gone}: vanished"]),
        "node": np.array(["node-7", "node-7"]),
    }
    first, second = results_of(batch)
    assert isinstance(first, FailedFile)
    assert first.code == NOT_ON_WORKER
    assert first.message.startswith(f"{seen}: the Ray worker on node-7 cannot find it")
    assert "must see the folders at the same path" in first.message
    assert isinstance(second, FailedFile)
    assert second.code == ImageErrorCode.FILE_NOT_FOUND


def test_an_actor_writes_its_points_to_a_server_with_the_drivers_payload(
    embedder: FakeEmbedder, config: WorkerConfig, tmp_path: Path
) -> None:
    """qdrant-client's in-process mode stands in for the server: one process only, so the
    actor is called here rather than in a Ray worker (the real run: test_qdrant_server)."""
    photos = tmp_path / "photos"
    paths = write_tree(photos, per_class=2)
    job = EmbedJob(FAKE_LOADER, Settings(), MODEL, True, "images", None)
    with ServerStore(QdrantClient(":memory:")) as store:
        store.ensure_collection("images", embedder.space)
        actor = EmbedActor(job, store=store)
        decoded = decode_batch(rows_for(paths, photos), config=config, known_ids=frozenset())
        out = actor(decoded)
        assert list(out["written"]) == [True] * len(paths)
        assert not out["has_vector"].any(), "written vectors travel back"
        assert "pixels" not in out
        stored = {p.id: p for p in store.scroll("images", with_vectors=True)}
    for row, path in enumerate(paths):
        result = results_of(out)[row]
        assert isinstance(result, WrittenFile), "written, its vector not sent back"
        point_id = point_id_for_sha256(result.sha256)
        entry = FileEntry(
            str(path), str(photos), path.relative_to(photos).as_posix(),
            result.size, result.mtime_ns, path.parent.name,
        )  # fmt: skip
        content = {
            "sha256": result.sha256, "size": result.size, "width": result.width,
            "height": result.height, "format": result.format, "model_id": MODEL,
            "indexed_at": result.indexed_at,
        }  # fmt: skip
        expected = build_payload(PointEntry(point_id, {str(path): entry}, content))
        assert stored[point_id].payload == expected
        pixels = embedder.stack([decoded["pixels"][row]])
        np.testing.assert_allclose(
            stored[point_id].vector, embedder.embed_pixels(pixels)[0], atol=1e-6
        )


class StandInStage:
    """A cluster whose worker cannot see one file and loses another's task (neither can
    happen on one machine): the answers a RayStage gives then."""

    def __init__(self, lost: str, unseen: str) -> None:
        self.lost, self.unseen = lost, unseen

    def results(
        self, files: Sequence[ScannedFile], stop: object
    ) -> Iterator[tuple[ScannedFile, FailedFile]]:
        for file in files:
            code = WORKER_LOST if str(file.path) == self.lost else NOT_ON_WORKER
            yield file, FailedFile(str(file.path), code, f"{file.path}: {code}")

    def close(self) -> None:
        pass


def test_files_lost_by_the_cluster_are_retried_by_the_next_run(
    embedder: FakeEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    lost, unseen = (str(p) for p in write_tree(photos, per_class=1))
    report = tmp_path / "failures.jsonl"
    options = IndexOptions(
        roots=(photos,), collection="images", failures_report=report, progress="off",
        labels=LabelSource(from_folders=True),
        ray=RayEngine(RayOptions(), FAKE_LOADER, Settings()),
    )  # fmt: skip
    monkeypatch.setattr(pipeline, "open_stage", lambda *_, **__: StandInStage(lost, unseen))
    with EdgeStore(tmp_path / "data") as store:
        summary = IndexRun(embedder, store, options).run()
    assert summary.failed_by_reason == {NOT_ON_WORKER: 1, WORKER_LOST: 1}
    failures = load_failures(report)
    assert {path: (f.size, f.mtime_ns) for path, f in failures.items()} == {
        lost: (None, None),
        unseen: (None, None),
    }, "recorded without size and mtime, so that the next run tries them again"

    monkeypatch.undo()  # the next run, on the local engine: both files are tried again
    local = IndexOptions(roots=(photos,), collection="images", failures_report=report)
    with EdgeStore(tmp_path / "data") as store:
        rerun = IndexRun(embedder, store, local).run()
    assert (rerun.embedded, rerun.known_failures_skipped, rerun.failed) == (2, 0, 0)


def test_ray_flags_need_the_ray_engine(tmp_path: Path) -> None:
    result = invoke("index", tmp_path, "--ray-address", "auto", "--data-dir", tmp_path / "d")
    assert result.exit_code == 2
    assert "--ray-address and --ray-actors need --engine ray" in result.output


def test_the_ray_engine_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    result = invoke("index", tmp_path, "--engine", "ray", "--data-dir", tmp_path / "d")
    assert result.exit_code != 0
    assert "--engine ray needs Ray Data" in result.output
    assert "pip install 'dinoseek[ray]'" in result.output
    assert not (tmp_path / "d").exists(), "the store was opened before the check"
