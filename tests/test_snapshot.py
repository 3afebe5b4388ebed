"""``snapshot``/``restore`` of both stores, the archive format's safety checks, and the CLI.

The embedded store is tested for real: Qdrant Edge shards in temporary directories.

No Qdrant server runs here. The server store is tested on qdrant-client's in-process mode,
which has no snapshot API: there ``snapshot`` must fail with a clear "needs a Qdrant server"
error. The REST requests that talk to a real server (create, download, delete, upload,
cluster status) are tested against ``httpx.MockTransport`` stand-ins: that checks the URLs,
headers, parameters, checksums and error translation dinoseek sends and expects, not that a
Qdrant server accepts them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner, Result
from qdrant_client import QdrantClient

from dinoseek.errors import (
    CollectionExistsError,
    ConfigError,
    SnapshotError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
)
from dinoseek.space import EmbeddingSpace
from dinoseek.store import EdgeStore, PointRecord, SearchQuery, ServerStore, point_id_for_sha256
from dinoseek.store import edge_snapshots as edge_module
from dinoseek.store.archive import MANIFEST_NAME, SUFFIX
from dinoseek.store.archive_read import read_manifest
from dinoseek.store.qdrant_rest import QdrantRest, RemoteSnapshot
from dinoseek_cli.main import main
from tests.helpers import unit_vectors

DIM = 16
POINTS = 30


def make_space(model_id: str = "test/model") -> EmbeddingSpace:
    fingerprint = tuple(float(v) for v in unit_vectors(1, DIM, seed=100)[0])
    return EmbeddingSpace(model_id, DIM, {"crop": [224, 224]}, fingerprint)


def make_records(count: int, seed: int = 0) -> list[PointRecord]:
    vectors = unit_vectors(count, DIM, seed=seed)
    return [
        PointRecord(
            id=point_id_for_sha256(f"{seed:04d}{i:060d}"),
            vector=vectors[i],
            payload={"paths": [f"/photos/{i}.jpg"], "label": "cat" if i % 2 else "dog", "i": i},
        )
        for i in range(count)
    ]


def fill(store: EdgeStore | ServerStore, name: str = "images", count: int = POINTS) -> None:
    store.ensure_collection(name, make_space())
    store.upsert(name, make_records(count))
    store.probes.save(name, "default", b"\x00probe-bytes\xff", {"classes": ["cat", "dog"]})


def contents(store: EdgeStore, name: str) -> dict[str, tuple[dict[str, Any], list[float]]]:
    """Every point: id -> (payload, vector)."""
    result = {}
    store.acquire(name)
    for point in store.scroll(name, with_vectors=True):
        assert point.vector is not None
        result[point.id] = (point.payload, point.vector.tolist())
    return result


@pytest.fixture
def source(tmp_path: Path) -> Iterator[EdgeStore]:
    """An embedded store holding 'images': 30 points and a probe."""
    with EdgeStore(tmp_path / "data") as store:
        fill(store)
        yield store


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of a collection like ``source``'s (the same points and probe), made once for
    the module: tests read it and never change it."""
    directory = tmp_path_factory.mktemp("archive")
    path = directory / f"images{SUFFIX}"
    with EdgeStore(directory / "data") as store:
        fill(store)
        store.snapshots.create("images", path)
    return path


def leftovers(data_dir: Path) -> list[str]:
    """Hidden restore directories (staging, ready, old) left in a data directory."""
    return sorted(p.name for p in data_dir.glob(".*") if "restore-" in p.name)


# -- the embedded store ---------------------------------------------------------------------


def test_round_trip_into_a_fresh_data_dir(source: EdgeStore, tmp_path: Path) -> None:
    target = tmp_path / "backup.tar.gz"
    info = source.snapshots.create("images", target)
    assert (info.kind, info.collection, info.points, info.probes) == (
        "edge",
        "images",
        POINTS,
        ("default",),
    )
    assert info.size_bytes == target.stat().st_size
    assert info.model_id == "test/model"
    assert info.dim == DIM
    assert source.count("images") == POINTS  # the shard was reopened after the snapshot

    with EdgeStore(tmp_path / "fresh") as restored:
        back = restored.snapshots.restore("images", target)
        assert back.points == POINTS
        assert back.source_collection == "images"
        assert contents(restored, "images") == contents(source, "images")
        assert [p.name for p in restored.probes.list("images")] == ["default"]
        assert restored.probes.load("images", "default") == b"\x00probe-bytes\xff"
        assert restored.probes.list("images")[0].info == {"classes": ["cat", "dog"]}
        assert restored.collection_space("images") == make_space()
        query = SearchQuery(vector=unit_vectors(1, DIM, seed=5)[0], top_k=5)
        assert [h.id for h in restored.search("images", [query])[0]] == [
            h.id for h in source.search("images", [query])[0]
        ]
        restored.upsert("images", make_records(3, seed=9))  # writable
        assert restored.count("images") == POINTS + 3
    assert leftovers(tmp_path / "fresh") == []


def test_vectors_survive_bit_for_bit(source: EdgeStore, archive: Path, tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "fresh") as restored:
        restored.snapshots.restore("images", archive)
        restored.acquire("images")
        ids = [r.id for r in make_records(POINTS)]
        before = source.get("images", ids, with_vectors=True)
        after = restored.get("images", ids, with_vectors=True)
    assert [p.id for p in after] == ids
    for a, b in zip(before, after, strict=True):
        assert a.vector is not None
        assert b.vector is not None
        assert np.array_equal(a.vector, b.vector)
        assert a.payload == b.payload


def test_manifest_describes_the_snapshot(archive: Path) -> None:
    manifest = read_manifest(archive)
    assert (manifest.kind, manifest.collection, manifest.points) == ("edge", "images", POINTS)
    assert manifest.space.model_id == "test/model"
    assert "collection/collection.json" in manifest.files
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == MANIFEST_NAME
    assert "probes/default.safetensors" in names
    assert not any(name.endswith(".lock") for name in names)


def test_restore_under_another_name(source: EdgeStore, archive: Path) -> None:
    info = source.snapshots.restore("copy", archive)
    assert (info.collection, info.source_collection) == ("copy", "images")
    assert source.list_collections() == ["copy", "images"]
    assert contents(source, "copy") == contents(source, "images")
    assert source.probes.load("copy", "default") == b"\x00probe-bytes\xff"


def test_existing_collection_is_refused_without_replace(source: EdgeStore, archive: Path) -> None:
    source.delete("images", [make_records(1)[0].id])
    with pytest.raises(CollectionExistsError) as refused:
        source.snapshots.restore("images", archive)
    assert refused.value.message == (
        f"collection 'images' already exists in the {source.describe()}; pass --replace to "
        "overwrite it with the snapshot, or restore under another --collection"
    )
    assert source.count("images") == POINTS - 1
    assert leftovers(source.data_dir) == []


def test_replace_swaps_in_the_snapshot(source: EdgeStore, archive: Path) -> None:
    source.delete("images", [r.id for r in make_records(10)])
    source.probes.save("images", "later", b"x", {})
    assert source.count("images") == POINTS - 10

    info = source.snapshots.restore("images", archive, replace=True)  # this store has it open
    assert info.points == POINTS
    assert source.count("images") == POINTS
    assert [p.name for p in source.probes.list("images")] == ["default"]
    assert leftovers(source.data_dir) == []


def test_replace_is_refused_while_another_process_holds_the_collection(
    archive: Path, source: EdgeStore
) -> None:
    source.close()
    with EdgeStore(source.data_dir, owner={"command": "dinoseek serve"}) as holder:
        holder.acquire("images")
        with pytest.raises(StoreLockedError, match="dinoseek serve"):
            EdgeStore(source.data_dir).snapshots.restore("images", archive, replace=True)
        assert holder.count("images") == POINTS
    assert leftovers(source.data_dir) == []


class Crash(BaseException):
    """Stands for the process dying (nothing below catches a BaseException)."""


@pytest.mark.parametrize(("renames_before_crash", "survivor"), [(1, "old"), (2, "old"), (3, "new")])
def test_a_crash_during_the_swap_leaves_the_old_or_the_new(
    source: EdgeStore,
    archive: Path,
    monkeypatch: pytest.MonkeyPatch,
    renames_before_crash: int,
    survivor: str,
) -> None:
    """Renames of a restore: probes into place, staged -> ready, old -> aside, ready -> NAME."""
    source.delete("images", [r.id for r in make_records(10)])
    old = contents(source, "images")
    source.close()
    real_rename = edge_module.os.rename
    calls: list[str] = []

    def rename(src: Any, dst: Any) -> None:
        if len(calls) == renames_before_crash:
            raise Crash
        calls.append(str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(edge_module.os, "rename", rename)
    with pytest.raises(Crash):
        EdgeStore(source.data_dir).snapshots.restore("images", archive, replace=True)
    monkeypatch.setattr(edge_module.os, "rename", real_rename)

    with EdgeStore(source.data_dir) as reopened:  # resolves what the crash left
        assert leftovers(source.data_dir) == []
        reopened.acquire("images")
        assert reopened.count("images") == (POINTS - 10 if survivor == "old" else POINTS)
        if survivor == "old":
            assert contents(reopened, "images") == old


def test_a_last_rename_that_fails_puts_the_old_collection_back(
    source: EdgeStore, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final rename (ready -> NAME) refused by the file system (a simulated OSError: none
    can be provoked here as root): the old collection is moved back, the restored copy
    removed, and the error says nothing was changed."""
    source.delete("images", [r.id for r in make_records(10)])
    old = contents(source, "images")
    source.close()
    real_rename = edge_module.os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name.endswith(edge_module.READY_SUFFIX) and Path(dst).name == "images":
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(edge_module.os, "rename", rename)
    with pytest.raises(StoreError) as failed:
        EdgeStore(source.data_dir).snapshots.restore("images", archive, replace=True)
    monkeypatch.setattr(edge_module.os, "rename", real_rename)
    target = source.data_dir / "images"
    assert failed.value.message == (
        f"cannot move the restored collection into {target} ([Errno 28] No space left on "
        "device); nothing was changed"
    )
    assert leftovers(source.data_dir) == []
    with EdgeStore(source.data_dir) as reopened:
        assert contents(reopened, "images") == old


def test_a_failed_last_rename_of_a_new_collection_changes_nothing(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, for a collection that did not exist: there is no old copy to put back, and
    the error is still the store's own (a simulated OSError: none can be provoked as root)."""
    data = tmp_path / "data"
    real_rename = edge_module.os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name.endswith(edge_module.READY_SUFFIX) and Path(dst).name == "copy":
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    with EdgeStore(data) as store:
        monkeypatch.setattr(edge_module.os, "rename", rename)
        with pytest.raises(StoreError) as failed:
            store.snapshots.restore("copy", archive)
        monkeypatch.setattr(edge_module.os, "rename", real_rename)
        assert failed.value.message == (
            f"cannot move the restored collection into {data / 'copy'} ([Errno 28] No space "
            "left on device); nothing was changed"
        )
        assert store.list_collections() == []
    assert leftovers(data) == []


def test_opening_a_store_without_leftovers_writes_nothing(source: EdgeStore) -> None:
    """Opening a data directory (``search``, ``serve``) takes no restore lock and leaves no
    file behind when no restore was interrupted."""
    source.close()
    before = sorted(p.name for p in source.data_dir.iterdir())
    with EdgeStore(source.data_dir) as reopened:
        assert reopened.list_collections() == ["images"]
    assert sorted(p.name for p in source.data_dir.iterdir()) == before
    assert ".restore.lock" not in before


@pytest.mark.parametrize(
    ("name", "kind", "what"),
    [
        ("../evil", tarfile.REGTYPE, "unsafe member"),
        ("collection/../../evil", tarfile.REGTYPE, "unsafe member"),
        ("ABSOLUTE", tarfile.REGTYPE, "unsafe member"),
        ("collection/shard/link", tarfile.SYMTYPE, "symbolic link"),
        ("collection/shard/hard", tarfile.LNKTYPE, "hard link"),
        ("collection/shard/device", tarfile.CHRTYPE, "device"),
        ("collection/shard/fifo", tarfile.FIFOTYPE, "device or FIFO"),
        ("elsewhere/file", tarfile.REGTYPE, "unexpected member"),
    ],
)
def test_malicious_archives_are_refused(tmp_path: Path, name: str, kind: bytes, what: str) -> None:
    evil_target = tmp_path / "abs-evil"
    name = str(evil_target) if name == "ABSOLUTE" else name
    evil = tmp_path / f"evil{SUFFIX}"
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    write_archive(evil, "edge", [(member, b"pwned" if kind == tarfile.REGTYPE else None)])
    data_dir = tmp_path / "victim"
    with EdgeStore(data_dir) as store, pytest.raises(SnapshotError, match=what):
        store.snapshots.restore("images", evil)
    assert not (tmp_path / "evil").exists()
    assert not (data_dir / "evil").exists()
    assert not evil_target.exists()
    assert not (data_dir / "images").exists()
    assert leftovers(data_dir) == []


def test_a_malicious_first_member_is_not_a_snapshot(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        add(tar, tarfile.TarInfo("../evil"), b"pwned")
    store = EdgeStore(tmp_path / "data")
    with pytest.raises(SnapshotError, match="not a dinoseek"):
        store.snapshots.restore("images", evil)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.95])
def test_a_truncated_archive_leaves_the_collection_untouched(
    source: EdgeStore, archive: Path, tmp_path: Path, cut: float
) -> None:
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: int(len(data) * cut)])
    source.delete("images", [r.id for r in make_records(5)])
    before = contents(source, "images")
    with pytest.raises(SnapshotError, match="truncated or damaged"):
        source.snapshots.restore("images", truncated, replace=True)
    assert contents(source, "images") == before
    assert leftovers(source.data_dir) == []


def test_a_tampered_member_fails_its_checksum(
    source: EdgeStore, archive: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered.tar.gz"
    rewrite(archive, tampered, change={"probes/default.safetensors": b"\x00probe-bytez\xff"})
    with pytest.raises(SnapshotError, match="checksum"):
        source.snapshots.restore("copy", tampered)
    assert "copy" not in source.list_collections()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "truncated or damaged"),
        (b"not an archive at all" * 100, "truncated or damaged"),
    ],
)
def test_garbage_is_not_a_snapshot(tmp_path: Path, content: bytes, message: str) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(content)
    with EdgeStore(tmp_path / "data") as store, pytest.raises(SnapshotError, match=message):
        store.snapshots.restore("images", garbage)


def test_a_newer_format_asks_for_an_upgrade(archive: Path, tmp_path: Path) -> None:
    newer = tmp_path / "newer.tar.gz"
    rewrite(archive, newer, manifest_update={"format_version": 99})
    with EdgeStore(tmp_path / "data") as store, pytest.raises(SnapshotError, match="upgrade"):
        store.snapshots.restore("images", newer)


METADATA = "collection/collection.json"


def test_an_invalid_collection_json_with_valid_checksums_is_refused(
    archive: Path, tmp_path: Path
) -> None:
    """Checksums only prove the archive is what its maker wrote; its contents are checked
    too. Here collection.json is not JSON (and its checksum in the manifest matches)."""
    forged = tmp_path / "forged.tar.gz"
    rewrite(archive, forged, change={METADATA: b"not json"}, fresh_checksums=True)
    data = tmp_path / "data"
    with EdgeStore(data) as store, pytest.raises(SnapshotError) as refused:
        store.snapshots.restore("images", forged)
    assert refused.value.message == (
        f"{forged}: its collection.json is invalid (Expecting value: line 1 column 1 (char 0))"
    )
    assert not (data / "images").exists()
    assert leftovers(data) == []


@pytest.mark.parametrize(
    ("change", "described"),
    [({"model_id": "other/model"}, "other/model, 16-d"), ({"dim": 8}, "test/model, 8-d")],
)
def test_a_collection_json_that_contradicts_the_manifest_is_refused(
    archive: Path, tmp_path: Path, change: dict[str, Any], described: str
) -> None:
    metadata = {**json.loads(archive_member(archive, METADATA)), **change}
    forged = tmp_path / "forged.tar.gz"
    rewrite(archive, forged, change={METADATA: json.dumps(metadata).encode()}, fresh_checksums=True)
    data = tmp_path / "data"
    with EdgeStore(data) as store, pytest.raises(SnapshotError) as refused:
        store.snapshots.restore("images", forged)
    assert refused.value.message == (
        f"{forged}: its collection.json ({described}) contradicts its manifest "
        f"(test/model, {DIM}-d)"
    )
    assert not (data / "images").exists()
    assert leftovers(data) == []


@pytest.mark.usefixtures("clean_env")
def test_a_manifest_with_another_point_count_is_refused(archive: Path, tmp_path: Path) -> None:
    """The shard opens and holds 30 points; the manifest says 29: the CLI says so."""
    forged = tmp_path / "forged.tar.gz"
    rewrite(archive, forged, manifest_update={"points": POINTS - 1})
    data = tmp_path / "data"
    result = invoke("snapshot", "restore", forged, "--data-dir", data, "--json")
    assert result.exit_code == 1
    message = (
        f"{forged}: its shard holds {POINTS} points but the manifest records {POINTS - 1}; "
        "the snapshot is damaged"
    )
    assert json.loads(result.stdout) == {"error": {"code": "invalid_snapshot", "message": message}}
    assert result.stderr == f"error: {message}\n"
    assert not (data / "images").exists()
    assert leftovers(data) == []


def test_a_shard_that_does_not_open_is_refused(archive: Path, tmp_path: Path) -> None:
    forged = tmp_path / "forged.tar.gz"
    config = "collection/shard/edge_config.json"
    rewrite(archive, forged, change={config: b"{"}, fresh_checksums=True)
    data = tmp_path / "data"
    with EdgeStore(data) as store, pytest.raises(SnapshotError) as refused:
        store.snapshots.restore("images", forged)
    prefix = f"{forged}: the shard at {data}/{edge_module.STAGING_PREFIX}"
    assert refused.value.message.startswith(prefix), refused.value.message
    assert "/collection/shard does not open (" in refused.value.message
    assert leftovers(data) == []


def test_the_size_limit_is_the_sum_of_the_files(archive: Path, tmp_path: Path) -> None:
    """``max_bytes`` (DINOSEEK_MAX_SNAPSHOT_BYTES) counts every file after the manifest: a
    snapshot of exactly that size is restored, one byte less is refused at the member that
    crosses it, naming the setting."""
    with tarfile.open(archive) as tar:
        sizes = [(m.name, m.size) for m in tar.getmembers()[1:]]
    total = sum(size for _, size in sizes)
    # the member at which total - 1 is crossed: the last one with any bytes
    name, size = next((n, s) for n, s in reversed(sizes) if s > 0)
    with EdgeStore(tmp_path / "refused") as store, pytest.raises(SnapshotError) as refused:
        store.snapshots.restore("images", archive, max_bytes=total - 1)
    assert refused.value.message == (
        f"{archive}: its files add up to more than {total - 1:,} bytes (at {name}, {size:,} "
        "bytes); raise DINOSEEK_MAX_SNAPSHOT_BYTES to restore it"
    )
    assert leftovers(tmp_path / "refused") == []
    with EdgeStore(tmp_path / "exact") as store:
        assert store.snapshots.restore("images", archive, max_bytes=total).points == POINTS


@pytest.mark.usefixtures("clean_env")
def test_the_cli_passes_the_snapshot_size_limit(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DINOSEEK_MAX_SNAPSHOT_BYTES", "1000")
    result = invoke("snapshot", "restore", archive, "--data-dir", tmp_path / "d", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_snapshot"
    assert error["message"].startswith(f"{archive}: its files add up to more than 1,000 bytes")


def test_a_restore_creates_the_data_directory_and_its_parents(
    archive: Path, tmp_path: Path
) -> None:
    data = tmp_path / "new" / "deeper" / "data"
    with EdgeStore(data) as store:
        assert store.snapshots.restore("images", archive).points == POINTS
        store.acquire("images")
        assert store.count("images") == POINTS


def test_the_other_kind_of_snapshot_is_refused_by_name(tmp_path: Path) -> None:
    server_archive = tmp_path / "server.tar.gz"
    write_server_archive(server_archive, b"qdrant snapshot bytes")
    with EdgeStore(tmp_path / "data") as store, pytest.raises(SnapshotError) as refused:
        store.snapshots.restore("images", server_archive)
    assert refused.value.message == (
        f"{server_archive} was taken from a Qdrant server and cannot be restored into the "
        "embedded store: restore it into a Qdrant server (set DINOSEEK_QDRANT_URL or "
        "--qdrant-url)"
    )


def test_an_interrupted_restore_completed_first_is_not_overwritten(
    archive: Path, tmp_path: Path
) -> None:
    """A ready copy left by a killed restore (no collection beside it) is moved in when the
    next restore takes the lock; without --replace that restore must then refuse, not
    overwrite the collection that just appeared."""
    data = tmp_path / "data"
    with EdgeStore(tmp_path / "other") as other:
        fill(other, count=12)
        interrupted = contents(other, "images")
    with EdgeStore(data) as store:  # opened first: the leftover appears while it is open
        shutil.copytree(tmp_path / "other" / "images", data / f".images{edge_module.READY_SUFFIX}")
        with pytest.raises(CollectionExistsError) as refused:
            store.snapshots.restore("images", archive)
        assert refused.value.message == (
            f"collection 'images' already exists in the {store.describe()}; pass --replace to "
            "overwrite it with the snapshot, or restore under another --collection"
        )
        assert leftovers(data) == []
        assert contents(store, "images") == interrupted


def test_a_snapshot_never_overwrites_a_file(source: EdgeStore, archive: Path) -> None:
    before = archive.read_bytes()
    with pytest.raises(ConfigError, match="exists"):
        source.snapshots.create("images", archive)
    assert archive.read_bytes() == before


# -- the server store -----------------------------------------------------------------------


def test_server_in_process_mode_needs_a_qdrant_server(tmp_path: Path, archive: Path) -> None:
    """qdrant-client's in-process mode has no snapshot API, and no Qdrant server runs here."""
    with ServerStore(QdrantClient(":memory:")) as store:
        fill(store)
        with pytest.raises(StoreError, match="snapshots need a Qdrant server") as caught:
            store.snapshots.create("images", tmp_path / "server.tar.gz")
        assert caught.value.code == "snapshot_unsupported"
        assert not (tmp_path / "server.tar.gz").exists()
        # An embedded-store snapshot is refused with the reason, before any server call.
        with pytest.raises(SnapshotError, match="embedded store"):
            store.snapshots.restore("images", archive)


def test_an_edge_store_refuses_a_server_snapshot(tmp_path: Path) -> None:
    """A server-kind archive, assembled by hand (no Qdrant server runs here)."""
    server_archive = tmp_path / "server.tar.gz"
    write_server_archive(server_archive, b"qdrant snapshot bytes")
    with EdgeStore(tmp_path / "data") as store, pytest.raises(SnapshotError, match="Qdrant server"):
        store.snapshots.restore("images", server_archive)


def test_rest_endpoint_comes_from_the_client() -> None:
    with pytest.warns(UserWarning, match="insecure"):
        client = QdrantClient(
            url="http://qdrant.example:6333/base", api_key="secret", check_compatibility=False
        )
    rest = QdrantRest.from_client(client, description="Qdrant server at X")
    assert rest.base_url == "http://qdrant.example:6333/base"
    assert rest.headers["api-key"] == "secret"
    assert rest.url("collections", "images", "snapshots", "a b.snapshot") == (
        "http://qdrant.example:6333/base/collections/images/snapshots/a%20b.snapshot"
    )
    with pytest.raises(StoreError, match="need a Qdrant server"):
        QdrantRest.from_client(QdrantClient(":memory:"), description="local")


Handler = Callable[[httpx.Request], httpx.Response]


def fake_rest(handler: Handler) -> QdrantRest:
    return QdrantRest(
        "http://qdrant:6333",
        {"api-key": "k"},
        "Qdrant server at http://qdrant:6333",
        transport=httpx.MockTransport(handler),
    )


def test_rest_requests_and_checksums(tmp_path: Path) -> None:
    payload = b"snapshot-bytes" * 1000
    checksum = hashlib.sha256(payload).hexdigest()
    seen: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["api-key"] == "k"
        seen.append((request.method, request.url.path, dict(request.url.params)))
        if request.method == "POST" and request.url.path.endswith("/upload"):
            body = request.read()
            assert b'name="snapshot"' in body
            assert payload in body
            return httpx.Response(200, json={"result": True, "status": "ok"})
        if request.method == "POST":
            result = {"name": "images-1.snapshot", "size": len(payload), "checksum": checksum}
            return httpx.Response(200, json={"result": result, "status": "ok"})
        if request.method == "GET" and request.url.path == "/cluster":
            result = {"status": "enabled", "peers": {"1": {}, "2": {}, "3": {}}}
            return httpx.Response(200, json={"result": result})
        if request.method == "GET":
            return httpx.Response(200, content=payload)
        return httpx.Response(200, json={"result": True, "status": "ok"})

    rest = fake_rest(handler)
    remote = rest.create_snapshot("images")
    assert remote == RemoteSnapshot("images-1.snapshot", len(payload), checksum)
    rest.download_snapshot("images", remote, tmp_path / "file")
    assert (tmp_path / "file").read_bytes() == payload
    rest.delete_snapshot("images", remote.name)
    rest.upload_snapshot("copy", tmp_path / "file")
    assert rest.cluster_enabled() == (True, 3)
    assert seen == [
        ("POST", "/collections/images/snapshots", {"wait": "true"}),
        ("GET", "/collections/images/snapshots/images-1.snapshot", {}),
        ("DELETE", "/collections/images/snapshots/images-1.snapshot", {"wait": "true"}),
        (
            "POST",
            "/collections/copy/snapshots/upload",
            {"priority": "snapshot", "wait": "true", "checksum": checksum},
        ),
        ("GET", "/cluster", {}),
    ]
    damaged = RemoteSnapshot("images-1.snapshot", len(payload), "0" * 64)
    with pytest.raises(StoreUnavailableError, match="damaged"):
        rest.download_snapshot("images", damaged, tmp_path / "again")


def test_rest_errors_are_translated() -> None:
    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"status": {"error": "Invalid api-key"}})

    with pytest.raises(StoreError, match="DINOSEEK_QDRANT_API_KEY"):
        fake_rest(forbidden).create_snapshot("images")

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(StoreUnavailableError, match="unreachable"):
        fake_rest(refused).create_snapshot("images")


def test_server_snapshot_orchestration_with_a_stand_in_rest_api(tmp_path: Path) -> None:
    """ServerStore.snapshot on the in-process client, with stand-ins for the REST calls:
    the archive holds the downloaded file and the probes, the server-side snapshot is deleted,
    and cluster mode is reported. (That Qdrant restores such a file is not checked here.)"""
    deleted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/cluster":
            return httpx.Response(200, json={"result": {"status": "enabled", "peers": {"1": {}}}})
        if request.method == "POST":
            return httpx.Response(200, json={"result": {"name": "s.snapshot", "size": 5}})
        if request.method == "DELETE":
            deleted.append(request.url.path)
            return httpx.Response(200, json={"result": True})
        return httpx.Response(200, content=b"qdrnt")

    with ServerStore(QdrantClient(":memory:"), rest=fake_rest(handler)) as store:
        fill(store)
        info = store.snapshots.create("images", tmp_path / "server.tar.gz")
    assert (info.kind, info.points, info.probes) == ("server", POINTS, ("default",))
    assert "distributed mode" in info.warnings[0]
    assert deleted == ["/collections/images/snapshots/s.snapshot"]
    with tarfile.open(tmp_path / "server.tar.gz") as tar:
        snapshot_file = tar.extractfile("qdrant/collection.snapshot")
        assert snapshot_file is not None
        assert snapshot_file.read() == b"qdrnt"
    assert [p.name for p in tmp_path.iterdir()] == ["server.tar.gz"]  # no temporary files


# -- the CLI --------------------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DINOSEEK_COLLECTION", "DINOSEEK_QDRANT_URL", "DINOSEEK_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_cli_create_and_restore(source: EdgeStore, tmp_path: Path) -> None:
    source.close()
    data = source.data_dir
    created = invoke("snapshot", "create", tmp_path, "--data-dir", data, "--json")
    assert created.exit_code == 0, created.output
    document = json.loads(created.stdout)
    path = Path(document["path"])
    assert path.parent == tmp_path
    assert path.name.startswith("images-")
    assert path.name.endswith(SUFFIX)
    assert (document["action"], document["points"], document["probes"]) == (
        "create",
        POINTS,
        ["default"],
    )

    human = invoke("snapshot", "restore", path, "--data-dir", tmp_path / "fresh")
    assert human.exit_code == 0, human.output
    assert human.stdout.startswith(f"restored 'images' from {path}: {POINTS} points, 1 probe")

    copied = invoke("snapshot", "restore", path, "--data-dir", data, "-c", "copy", "--json")
    assert copied.exit_code == 0, copied.output
    assert json.loads(copied.stdout)["collection"] == "copy"

    refused = invoke("snapshot", "restore", path, "--data-dir", data, "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["error"]["code"] == "collection_exists"
    assert "--replace" in refused.stderr

    replaced = invoke("snapshot", "restore", path, "--data-dir", data, "--replace")
    assert replaced.exit_code == 0, replaced.output

    again = invoke("snapshot", "create", path, "--data-dir", data)
    assert again.exit_code == 2
    assert "exists" in again.stderr


@pytest.mark.usefixtures("clean_env")
def test_cli_human_create(source: EdgeStore, tmp_path: Path) -> None:
    source.close()
    target = tmp_path / "backup.tar.gz"
    result = invoke("snapshot", "create", target, "--data-dir", source.data_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"snapshot of 'images' written to {target}: {POINTS} points")
    assert "embedded store at" in result.stdout


@pytest.mark.usefixtures("clean_env")
def test_cli_names_the_remedy_while_serve_holds_the_collection(
    source: EdgeStore, tmp_path: Path
) -> None:
    source.close()
    owner = {"command": "dinoseek serve", "url": "http://127.0.0.1:8000"}
    with EdgeStore(source.data_dir, owner=owner) as server:
        server.acquire("images")
        result = invoke("snapshot", "create", tmp_path / "b.tar.gz", "--data-dir", source.data_dir)
    assert result.exit_code == 3
    assert "dinoseek serve" in result.stderr
    assert "stop that process first" in result.stderr
    assert "Qdrant server" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.mark.usefixtures("clean_env")
def test_cli_bad_snapshot_is_an_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"junk" * 50)
    result = invoke("snapshot", "restore", garbage, "--data-dir", tmp_path / "d", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "invalid_snapshot"


# -- archive helpers ------------------------------------------------------------------------


def add(tar: tarfile.TarFile, member: tarfile.TarInfo, data: bytes | None) -> None:
    if data is None:
        tar.addfile(member)
        return
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def rewrite(
    original: Path,
    target: Path,
    *,
    change: dict[str, bytes] | None = None,
    manifest_update: dict[str, Any] | None = None,
    fresh_checksums: bool = False,
) -> None:
    """Copy a snapshot, replacing the content of members in ``change`` and fields of the
    manifest with ``manifest_update``; the manifest's checksums are those of the new contents
    with ``fresh_checksums`` (an archive whose checksums all match), else left as they were."""
    change = change or {}
    with tarfile.open(original) as source:
        members = []
        for member in source.getmembers():
            reader = source.extractfile(member) if member.isreg() else None
            members.append((member, change.get(member.name, reader.read() if reader else None)))
    update = dict(manifest_update or {})
    if fresh_checksums:
        update["files"] = {
            m.name: hashlib.sha256(data).hexdigest()
            for m, data in members
            if data is not None and m.name != MANIFEST_NAME
        }
    with tarfile.open(target, "w:gz", compresslevel=1) as out:
        for member, data in members:
            if member.name == MANIFEST_NAME and data is not None:
                data = json.dumps({**json.loads(data), **update}).encode()
            add(out, member, data)


def archive_member(archive: Path, name: str) -> bytes:
    """The content of one file of a snapshot."""
    with tarfile.open(archive) as tar:
        reader = tar.extractfile(name)
        assert reader is not None
        return reader.read()


def manifest_bytes(kind: str, files: dict[str, bytes]) -> bytes:
    """A valid manifest for a hand-made archive holding ``files``."""
    manifest = {
        "format": "dinoseek-snapshot",
        "format_version": 1,
        "kind": kind,
        "collection": "images",
        "space": make_space().to_metadata(),
        "points": 0,
        "probes": [],
        "created_at": "2025-01-01T00:00:00Z",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    return json.dumps(manifest).encode()


def write_archive(
    target: Path, kind: str, members: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    """A hand-made snapshot: a valid manifest, then ``members`` as given."""
    files = {m.name: data for m, data in members if data is not None}
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        add(tar, tarfile.TarInfo(MANIFEST_NAME), manifest_bytes(kind, files))
        for member, data in members:
            add(tar, member, data)


def write_server_archive(target: Path, snapshot: bytes) -> None:
    write_archive(target, "server", [(tarfile.TarInfo("qdrant/collection.snapshot"), snapshot)])


def test_a_snapshot_leaves_the_collection_as_it_found_it(source: EdgeStore, tmp_path: Path) -> None:
    source.snapshots.create("images", tmp_path / "held.tar.gz")
    assert source.is_held("images")  # it held it: it still does
    source.close()
    with EdgeStore(source.data_dir) as store:
        store.snapshots.create("images", tmp_path / "free.tar.gz")
        assert not store.is_held("images")  # it did not: it does not
        with EdgeStore(source.data_dir) as other:
            other.acquire("images")


def copy_collection(store_dir: Path, name: str, to: str) -> None:
    """A copy of a collection's directory under another name (what a restore leaves)."""
    shutil.copytree(store_dir / name, store_dir / to)


@pytest.mark.parametrize(
    ("leftover", "target_exists", "expected", "warning"),
    [
        (  # never swapped in: dropped
            ".images.restore-ready",
            True,
            "old",
            "dropping {data}/.images.restore-ready: an interrupted restore never replaced "
            "{data}/images",
        ),
        (".images.restore-ready", False, "ready", "completing an interrupted restore of images"),
        (".images.restore-old", True, "old", None),  # the swap finished: the old copy goes
        (".images.restore-old", False, "aside", None),  # mid-swap: the old one comes back
        (".restore-tmp-1234", True, "old", None),  # a staging area: removed
    ],
)
def test_opening_the_store_resolves_each_kind_of_leftover(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    leftover: str,
    target_exists: bool,
    expected: str,
    warning: str | None,
) -> None:
    """What a restore killed at any moment can leave, resolved in-process when the store is
    opened (the SIGKILL tests reach the same states through real kills)."""
    data = tmp_path / "data"
    with EdgeStore(data) as store:
        fill(store, count=12)
        old = contents(store, "images")
    with EdgeStore(tmp_path / "other") as other:
        fill(other, count=20)
        other.upsert("images", make_records(20, seed=3))
        new = contents(other, "images")
    if leftover.startswith(".restore-tmp-"):
        (data / leftover / "collection").mkdir(parents=True)
    elif expected == "ready" or (expected == "old" and "ready" in leftover):
        shutil.copytree(tmp_path / "other" / "images", data / leftover)
    else:
        copy_collection(data, "images", leftover)
    if not target_exists:
        shutil.rmtree(data / "images")
    caplog.set_level(logging.WARNING, logger="dinoseek.store.edge_snapshots")
    with EdgeStore(data) as reopened:
        assert leftovers(data) == []
        assert not (data / leftover).exists()
        assert contents(reopened, "images") == (new if expected == "ready" else old)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ([] if warning is None else [warning.format(data=data)])
