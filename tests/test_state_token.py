"""The store's state token (``VectorStore.state_token``): the same token means the same content,
on the real embedded store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.regions import RegionSpec
from dinoseek.space import EmbeddingSpace
from dinoseek.store import EdgeStore, PointRecord
from dinoseek.store.server import ServerStore
from tests.helpers import unit_vectors

DIM = 8
IDS = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 4)]


def space() -> EmbeddingSpace:
    return EmbeddingSpace("test/model", DIM, {}, (1.0,))


def points() -> list[PointRecord]:
    vectors = unit_vectors(len(IDS), DIM)
    return [PointRecord(i, v, {"label": "a", "n": 1}) for i, v in zip(IDS, vectors, strict=True)]


@pytest.fixture
def store(tmp_path: Path) -> EdgeStore:
    opened = EdgeStore(tmp_path / "data")
    opened.ensure_collection("images", space())
    opened.upsert("images", points())
    return opened


WRITES: dict[str, Callable[[EdgeStore], None]] = {
    "upsert": lambda s: s.upsert("images", points()[:1]),
    "set_payload": lambda s: s.set_payload("images", IDS[0], {"label": "b"}),
    "merge_payload": lambda s: s.merge_payload("images", IDS[:2], {"label": "c"}),
    "delete_payload_fields": lambda s: s.delete_payload_fields("images", IDS[:1], ["n"]),
    "delete": lambda s: s.delete("images", IDS[:1]),
    "set_regions": lambda s: set_regions(s),
}


def set_regions(store: EdgeStore) -> None:
    """Region vectors added to a collection that had none, for one point."""
    spec = RegionSpec((4, 4))
    store.ensure_regions("images", spec)
    store.set_regions("images", {IDS[0]: unit_vectors(spec.count, DIM, seed=3)})


def test_the_token_stays_while_nothing_is_written(store: EdgeStore) -> None:
    first = store.state_token("images")
    store.search("images", [])
    list(store.scroll("images"))
    store.optimize("images")
    assert store.state_token("images") == first
    store.close()
    with EdgeStore(store.data_dir) as again:  # another process, later
        again.acquire("images")
        assert again.state_token("images") == first


@pytest.mark.parametrize("write", sorted(WRITES))
def test_every_write_gives_a_new_token(store: EdgeStore, write: str) -> None:
    before = store.state_token("images")
    WRITES[write](store)
    after = store.state_token("images")
    assert after != before
    assert store.state_token("images") == after  # and it stays
    store.close()


def test_the_new_token_is_on_disk_before_the_write(store: EdgeStore) -> None:
    """A process killed between the two leaves a token that no copy names."""
    before = store.state_token("images")
    with pytest.raises(Exception, match="dimension"):  # refused by Qdrant Edge, after the token
        store.upsert("images", [PointRecord(IDS[0], np.ones(DIM + 1, np.float32), {})])
    on_disk = (store.data_dir / "images" / "state").read_text()
    assert on_disk != before
    store.close()


def test_writes_after_a_token_was_given_get_another(store: EdgeStore) -> None:
    tokens = [store.state_token("images")]
    for _ in range(2):
        store.set_payload("images", IDS[1], {"label": "x"})
        tokens.append(store.state_token("images"))
    assert len(set(tokens)) == 3
    store.close()


@pytest.mark.parametrize("content", ["", "not a token\n", "z" * 40])
def test_a_missing_or_damaged_token_file_gets_a_new_token(store: EdgeStore, content: str) -> None:
    before = store.state_token("images")
    (store.data_dir / "images" / "state").write_text(content)
    after = store.state_token("images")
    assert after != before
    assert len(after) == 32
    store.close()


def test_a_restored_snapshot_has_a_new_token(store: EdgeStore, tmp_path: Path) -> None:
    before = store.state_token("images")
    archive = tmp_path / "images.snapshot"
    store.snapshots.create("images", archive)
    store.snapshots.restore("images", archive, replace=True)
    assert store.state_token("images") != before
    store.close()


def test_a_server_cannot_tell() -> None:
    with ServerStore(QdrantClient(location=":memory:")) as server:
        server.ensure_collection("images", space())
        assert server.state_token("images") is None
