"""Snapshot archives that weigh little and claim much: a long-name or PAX header of tens of
megabytes (tarfile reads such a header whole before any check: a 1 MB archive once drove a
restore to 2.4 GB), a planted file far larger than the limit, a member larger than the disk.
Each is refused from its header, before its content is read."""

from __future__ import annotations

import gzip
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from dinoseek.errors import SnapshotError, StoreError
from dinoseek.store import EdgeStore
from dinoseek.store.archive import MANIFEST_NAME
from dinoseek.store.archive_read import extract_archive
from tests.test_snapshot import manifest_bytes, write_archive

MEGABYTE = 1024 * 1024


def with_manifest(target: Path, then: bytes, listed: tuple[str, ...] = ()) -> None:
    """A gzipped tar stream: a valid edge manifest (listing ``listed``), then the raw bytes
    ``then``."""
    manifest = manifest_bytes("edge", dict.fromkeys(listed, b""))
    info = tarfile.TarInfo(MANIFEST_NAME)
    info.size = len(manifest)
    head = info.tobuf(tarfile.PAX_FORMAT) + manifest + b"\0" * (-len(manifest) % 512)
    with gzip.open(target, "wb", compresslevel=1) as out:
        out.write(head + then)


def restore_peak(source: Path, tmp_path: Path) -> tuple[BaseException, int]:
    """The error a restore raises, and the peak of Python memory it took."""
    tracemalloc.start()
    try:
        with EdgeStore(tmp_path / "data") as store:
            store.snapshots.restore("images", source)
    except (SnapshotError, StoreError) as exc:
        error: BaseException = exc
    else:
        raise AssertionError("the restore went through")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("format_", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_huge_name_header_is_refused_before_it_is_read(tmp_path: Path, format_: int) -> None:
    info = tarfile.TarInfo("collection/" + "n" * (32 * MEGABYTE))  # a 32 MB member name
    info.type = tarfile.DIRTYPE
    source = tmp_path / "long-name.tar.gz"
    with_manifest(source, info.tobuf(format_))
    assert source.stat().st_size < MEGABYTE
    error, peak = restore_peak(source, tmp_path)
    assert "implausibly large" in str(error)
    assert peak < 8 * MEGABYTE, f"{peak:,} bytes held while refusing it"


def test_a_directory_claiming_a_size_does_not_hide_the_header_after_it(tmp_path: Path) -> None:
    """tarfile ignores a directory's size field: whatever follows is the next header, here a
    32 MB long name (a check that trusted the field would skip over it)."""
    folder = tarfile.TarInfo("collection")
    folder.type = tarfile.DIRTYPE
    folder.size = 40 * MEGABYTE
    long_name = tarfile.TarInfo("collection/" + "n" * (32 * MEGABYTE))
    long_name.type = tarfile.DIRTYPE
    source = tmp_path / "sized-directory.tar.gz"
    with_manifest(source, folder.tobuf(tarfile.GNU_FORMAT) + long_name.tobuf(tarfile.GNU_FORMAT))
    error, peak = restore_peak(source, tmp_path)
    assert "implausibly large" in str(error)
    assert peak < 8 * MEGABYTE, f"{peak:,} bytes held while refusing it"


def test_a_huge_global_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    header = tarfile.TarInfo.create_pax_global_header({"comment": "c" * (32 * MEGABYTE)})
    source = tmp_path / "global-header.tar.gz"
    with_manifest(source, header)
    error, peak = restore_peak(source, tmp_path)
    assert "implausibly large" in str(error)
    assert peak < 8 * MEGABYTE, f"{peak:,} bytes held while refusing it"


def test_a_pax_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    """A PAX record can set a member's size past what its ustar field says: the limit reads
    the size tarfile uses."""
    planted = tarfile.TarInfo("collection/shard/planted.bin")
    planted.size = 20 * MEGABYTE
    planted.pax_headers = {"size": str(20 * MEGABYTE)}
    source = tmp_path / "pax-size.tar.gz"
    with_manifest(source, planted.tobuf(tarfile.PAX_FORMAT), listed=(planted.name,))
    with pytest.raises(SnapshotError, match="DINOSEEK_MAX_SNAPSHOT_BYTES"):
        extract_archive(source, tmp_path / "out", kind="edge", max_bytes=10 * MEGABYTE)


def test_a_planted_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    big = tarfile.TarInfo("collection/shard/planted.bin")
    source = tmp_path / "planted.tar.gz"
    write_archive(source, "edge", [(big, b"\0" * (20 * MEGABYTE))])
    assert source.stat().st_size < MEGABYTE
    with pytest.raises(SnapshotError, match="DINOSEEK_MAX_SNAPSHOT_BYTES"):
        extract_archive(source, tmp_path / "out", kind="edge", max_bytes=10 * MEGABYTE)


def test_a_member_larger_than_the_disk_is_refused_before_writing(tmp_path: Path) -> None:
    huge = tarfile.TarInfo("collection/shard/huge.bin")
    huge.size = 2**50  # a petabyte, declared in the header; no content follows
    source = tmp_path / "huge.tar.gz"
    with_manifest(source, huge.tobuf(tarfile.GNU_FORMAT), listed=(huge.name,))
    with pytest.raises(StoreError, match="not enough free space"):
        extract_archive(source, tmp_path / "out", kind="edge")
    assert not any((tmp_path / "out").rglob("huge.bin"))


def test_the_guard_lets_real_snapshots_through(tmp_path: Path) -> None:
    from tests.test_snapshot import fill

    with EdgeStore(tmp_path / "data") as store:
        fill(store)
        store.snapshots.create("images", tmp_path / "real.tar.gz")
    with EdgeStore(tmp_path / "copy") as store:
        info = store.snapshots.restore("images", tmp_path / "real.tar.gz", max_bytes=10**9)
    assert info.points == 30
