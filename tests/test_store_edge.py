"""The embedded store across processes: one owner at a time, clear refusals, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dinoseek.errors import StoreLockedError
from dinoseek.store import EdgeStore, PointRecord, SearchQuery, point_id_for_sha256
from tests.helpers import unit_vectors
from tests.test_store_contract import make_space, records

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dinoseek.store import EdgeStore
    from tests.test_store_contract import make_space, records
    store = EdgeStore(Path(sys.argv[1]), owner={"command": "dinoseek serve",
                                               "url": "http://127.0.0.1:8123"})
    store.ensure_collection("images", make_space())
    store.upsert("images", records(int(sys.argv[2])))
    print("ready", flush=True)
    time.sleep(60)
    """
)


def start_holder(data_dir: Path, points: int) -> subprocess.Popen[str]:
    """A second process that opens the store, writes ``points`` points and keeps it open."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(data_dir), str(points)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.slow
def test_second_process_is_refused_at_once_and_recovers_after_a_kill(
    tmp_path: Path, no_waiting: None
) -> None:
    data_dir = tmp_path / "data"
    holder = start_holder(data_dir, points=25)
    try:
        store = EdgeStore(data_dir)
        with pytest.raises(StoreLockedError) as caught:
            store.acquire("images")
        message = caught.value.message
        assert f"process {holder.pid}" in message
        assert "http://127.0.0.1:8123" in message
        assert caught.value.holder["url"] == "http://127.0.0.1:8123"
        # Reading the collection's metadata needs no lock.
        assert store.collection_space("images").dim == make_space().dim
    finally:
        # SIGKILL: no flush, no close. The write-ahead log must replay the upserts.
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    written = records(25)
    with EdgeStore(data_dir) as store:
        store.acquire("images")
        assert store.count("images") == 25
        queries = [SearchQuery(vector=written[i].vector, top_k=1) for i in (0, 7, 24)]
        found = store.search("images", queries)
        assert [hits[0].id for hits in found] == [written[i].id for i in (0, 7, 24)]
        assert [hits[0].payload for hits in found] == [written[i].payload for i in (0, 7, 24)]


def test_same_process_cannot_open_twice_either(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path)
    first.ensure_collection("images", make_space())
    second = EdgeStore(tmp_path)
    with pytest.raises(StoreLockedError, match=f"process {os.getpid()}"):
        second.acquire("images")
    first.close()
    second.acquire("images")
    assert second.count("images") == 0
    second.close()


def test_lock_is_per_collection(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as first, EdgeStore(tmp_path) as second:
        first.ensure_collection("a", make_space())
        second.ensure_collection("b", make_space())
        first.upsert("a", records(3))
        second.upsert("b", records(4))
        assert (first.count("a"), second.count("b")) == (3, 4)


def test_half_created_shard_is_recreated(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as store:
        store.ensure_collection("images", make_space())
    shard_dir = tmp_path / "images" / "shard"
    for child in shard_dir.iterdir():  # simulate a create() that died before writing anything
        if child.is_file():
            child.unlink()
    with EdgeStore(tmp_path) as store:
        store.acquire("images")
        store.upsert("images", records(2))
        assert store.count("images") == 2


@pytest.mark.slow
def test_optimize_builds_the_hnsw_index(tmp_path: Path) -> None:
    # Qdrant indexes a segment once it holds more than its indexing threshold (10 MB of
    # vectors): 3,000 x 1024-d float32 is 12 MB.
    dim = 1024
    vectors = unit_vectors(3000, dim, seed=3)
    points = [
        PointRecord(id=point_id_for_sha256(f"{i:064x}"), vector=vectors[i], payload={"i": i})
        for i in range(len(vectors))
    ]
    with EdgeStore(tmp_path) as store:
        store.ensure_collection("images", make_space(dim=dim))
        store.upsert("images", points)
        assert store.collection_info("images").indexed_vectors == 0
        store.optimize("images")
        info = store.collection_info("images")
        assert info.points == 3000
        assert info.indexed_vectors == 3000
        ((hit,),) = store.search("images", [SearchQuery(vector=vectors[42], top_k=1)])
        assert hit.payload == {"i": 42}


def test_collection_info_of_a_collection_not_acquired_leaves_it_free(tmp_path: Path) -> None:
    with EdgeStore(tmp_path) as writer:
        writer.ensure_collection("images", make_space())
        writer.upsert("images", records(5))
    reader, other = EdgeStore(tmp_path), EdgeStore(tmp_path)
    try:
        assert reader.collection_info("images").points == 5
        assert not reader.is_held("images")
        other.acquire("images")  # the read took nothing for good
        with pytest.raises(StoreLockedError):
            reader.collection_info("images")
    finally:
        reader.close()
        other.close()
