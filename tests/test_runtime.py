"""The one startup: store, explicit acquisition, model resolution, compatibility, policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    StoreLockedError,
    StoreUnavailableError,
)
from dinoseek.fake_embedder import FakeEmbedder
from dinoseek.runtime import (
    SERVE_MAX_BATCH,
    ModelLoader,
    ModelPolicy,
    Runtime,
    default_decode_workers,
)
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, ServerStore
from tests.fakes import fake_model


class RecordingModel(FakeEmbedder):
    """The stand-in model, recording what the runtime asks of it."""

    def __init__(self, model_id: str) -> None:
        super().__init__(model_id=model_id, seed=fake_model(model_id).seed)
        self.compiled: list[tuple[str, int | None]] = []
        self.warmed: list[list[int]] = []

    def compile(self, mode: str = "default", *, max_batch: int | None = None) -> None:
        self.compiled.append((mode, max_batch))
        super().compile(mode, max_batch=max_batch)

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        self.warmed.append(list(batch_sizes))


class Loader:
    """A ``ModelLoader`` that records which model ids were asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.made: list[RecordingModel] = []

    def load(self, model_id: str, settings: Settings) -> ImageEmbedder:
        self.asked.append(model_id)
        self.made.append(RecordingModel(model_id))
        return self.made[-1]

    @property
    def loader(self) -> ModelLoader:
        return ModelLoader(load=self.load)


def collection_of(data_dir: Path, model_id: str) -> None:
    with EdgeStore(data_dir) as store:
        store.ensure_collection("images", fake_model(model_id).space)


def test_the_model_is_the_one_given_else_the_collections_else_the_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    loader = Loader()
    with Runtime.open(Settings(data_dir=data), collection="optional", loader=loader.loader):
        pass
    assert loader.asked == ["facebook/dinov2-base"]  # no collection yet: the default
    collection_of(data, "fake/built-with")
    with Runtime.open(Settings(data_dir=data), loader=loader.loader) as runtime:
        assert runtime.require_embedder().model_id == "fake/built-with"
    explicit = Settings(data_dir=data, model="fake/built-with")
    with Runtime.open(explicit, loader=loader.loader):
        pass
    assert loader.asked[1:] == ["fake/built-with", "fake/built-with"]
    with pytest.raises(CollectionMismatchError, match="different model"):
        Runtime.open(Settings(data_dir=data, model="fake/other"), loader=loader.loader)


def test_the_collection_is_acquired_explicitly_and_released_on_close(tmp_path: Path) -> None:
    data = tmp_path / "data"
    collection_of(data, "fake/a")
    with pytest.raises(CollectionNotFoundError):
        Runtime.open(Settings(data_dir=data, collection="nope"), loader=Loader().loader)
    runtime = Runtime.open(Settings(data_dir=data), model=False)
    other = EdgeStore(data)
    try:
        with pytest.raises(StoreLockedError):
            other.acquire("images")
        assert runtime.store.collection_info("images").points == 0
        runtime.close()
        other.acquire("images")  # released
    finally:
        other.close()


def test_a_startup_that_fails_releases_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    collection_of(data, "fake/a")
    with pytest.raises(CollectionMismatchError):
        Runtime.open(Settings(data_dir=data, model="fake/b"), loader=Loader().loader)
    with EdgeStore(data) as store:
        store.acquire("images")  # nothing held it after the failure


def test_nothing_is_acquired_when_the_command_needs_no_collection(tmp_path: Path) -> None:
    data = tmp_path / "data"
    collection_of(data, "fake/a")
    with (
        Runtime.open(Settings(data_dir=data), collection="none", model=False),
        EdgeStore(data) as other,
    ):
        other.acquire("images")


def test_serving_warms_up_every_batch_it_can_send(tmp_path: Path) -> None:
    loader = Loader()
    settings = Settings(data_dir=tmp_path, batch_size=200)
    serving = ModelPolicy(purpose="serve")
    with Runtime.open(settings, collection="optional", policy=serving, loader=loader.loader) as rt:
        assert rt.max_batch == SERVE_MAX_BATCH
    assert loader.made[0].warmed == [[1, SERVE_MAX_BATCH]]
    assert loader.made[0].compiled == []
    graphs = Settings(data_dir=tmp_path, batch_size=8, compile="reduce-overhead")
    with Runtime.open(graphs, collection="optional", policy=serving, loader=loader.loader):
        pass
    assert loader.made[1].compiled == [("reduce-overhead", 8)]
    assert loader.made[1].warmed == [list(range(1, 9))]


def test_indexing_compiles_for_its_batch_and_sizes_the_decode_pool(tmp_path: Path) -> None:
    loader = Loader()
    settings = Settings(data_dir=tmp_path, batch_size=12, compile="default")
    policy = ModelPolicy(purpose="index", decode_workers=0)
    with Runtime.open(settings, collection="optional", policy=policy, loader=loader.loader) as rt:
        assert (rt.batch_size, rt.max_batch, rt.decode_workers) == (12, 12, 0)
    assert loader.made[0].compiled == [("default", 12)]
    assert loader.made[0].warmed == [[12]]
    default = Settings(data_dir=tmp_path)
    with Runtime.open(default, collection="optional", loader=loader.loader) as rt:
        assert rt.batch_size == 16  # the embedder's own default on a CPU
    assert loader.made[1].warmed == []
    assert default_decode_workers("cuda", 64) == 16
    assert default_decode_workers("cpu", 2) == 0
    assert default_decode_workers("cpu", 16) == 4


def test_an_unreachable_qdrant_stops_a_command_but_not_a_server(tmp_path: Path) -> None:
    # A real qdrant-client against a closed port (no Qdrant server runs here), retrying briefly.
    def unreachable() -> ServerStore:
        return ServerStore.connect("http://127.0.0.1:9", timeout_s=1, retry_delays_s=(0.01,))

    implicit = Settings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:9")
    explicit = Settings(data_dir=tmp_path, qdrant_url="http://127.0.0.1:9", model="fake/given")
    loader = Loader()
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        Runtime.open(explicit, collection="optional", loader=loader.loader, store=unreachable())
    serving = ModelPolicy(purpose="serve")
    # A server starts without its Qdrant only when it need not ask it which model to load.
    with pytest.raises(StoreUnavailableError, match="give the model"):
        Runtime.open(
            implicit,
            collection="optional",
            policy=serving,
            loader=loader.loader,
            store=unreachable(),
        )
    runtime = Runtime.open(
        explicit, collection="optional", policy=serving, loader=loader.loader, store=unreachable()
    )
    runtime.close()
    assert loader.asked == ["fake/given"]


def test_a_one_off_query_is_never_compiled(tmp_path: Path) -> None:
    loader = Loader()
    settings = Settings(data_dir=tmp_path, compile="default")
    with Runtime.open(settings, collection="optional", loader=loader.loader):
        pass
    assert loader.made[0].compiled == []
    assert loader.made[0].warmed == []


def test_a_given_store_and_embedder_go_through_the_same_startup(
    tmp_path: Path, other_embedder: ImageEmbedder
) -> None:
    data = tmp_path / "data"
    collection_of(data, "fake/dinov2")
    with pytest.raises(CollectionMismatchError):
        Runtime.open(Settings(data_dir=data), store=EdgeStore(data), embedder=other_embedder)
    with Runtime.open(
        Settings(data_dir=data), store=EdgeStore(data), embedder=fake_model("fake/dinov2")
    ) as runtime:
        assert runtime.store.count("images") == 0  # acquired by the startup
