"""Reading snapshot archives (``dinoseek.store.archive_read``): each refusal with its exact
message, each limit at its boundary, and what extraction writes (the bytes, and holes for
runs of zeros). Archives are real tar files, made by ``EdgeStore`` or by hand."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from dinoseek.errors import SnapshotError, StoreError
from dinoseek.store import EdgeStore
from dinoseek.store.archive import HOLE_BYTES, MANIFEST_NAME, MAX_MANIFEST_BYTES, SUFFIX
from dinoseek.store.archive_read import (
    FREE_SPACE_MARGIN_BYTES,
    MAX_HEADER_MEMBER_BYTES,
    check_kind,
    check_member,
    extract_archive,
    read_manifest,
)
from tests.test_snapshot import add, fill, manifest_bytes, rewrite, write_archive

EDGE_CONFIG = "collection/shard/edge_config.json"


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real snapshot of an embedded-store collection (30 points, probe 'default')."""
    directory = tmp_path_factory.mktemp("snapshot")
    path = directory / f"images{SUFFIX}"
    with EdgeStore(directory / "data") as store:
        fill(store)
        store.snapshots.create("images", path)
    return path


def refusal(source: Path, destination: Path, kind: str = "edge") -> str:
    """The message of the ``SnapshotError`` that extracting ``source`` raises."""
    with pytest.raises(SnapshotError) as refused:
        extract_archive(source, destination, kind=kind)
    return refused.value.message


def directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def minimal_members(
    *extra: tuple[tarfile.TarInfo, bytes | None],
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """What an edge snapshot without points or probes must hold, then ``extra``."""
    return [
        (directory("collection"), None),
        (tarfile.TarInfo("collection/collection.json"), b"{}"),
        (directory("collection/shard"), None),
        (tarfile.TarInfo(EDGE_CONFIG), b"{}"),
        *extra,
    ]


# -- opening and the manifest ---------------------------------------------------------------


def test_a_path_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    cases = {
        tmp_path / "gone.tar.gz": f"{tmp_path / 'gone.tar.gz'}: no such file",
        tmp_path: f"{tmp_path} is a directory, not a snapshot file",
        plain / "inside.tar.gz": (
            f"cannot read {plain / 'inside.tar.gz'}: [Errno 20] Not a directory: "
            f"'{plain / 'inside.tar.gz'}'"
        ),
    }
    for source, message in cases.items():
        with pytest.raises(SnapshotError) as refused:
            read_manifest(source)
        assert refused.value.message == message


def test_the_first_member_must_be_the_manifest(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        add(tar, tarfile.TarInfo("collection/collection.json"), b"{}")
    folder = tmp_path / "folder.tar.gz"
    with tarfile.open(folder, "w:gz") as tar:
        add(tar, directory(MANIFEST_NAME), None)
    for source, found in (
        (empty, "nothing"),
        (other, "'collection/collection.json'"),
        (folder, f"'{MANIFEST_NAME}'"),
    ):
        with pytest.raises(SnapshotError) as refused:
            read_manifest(source)
        assert refused.value.message == (
            f"{source} is not a dinoseek snapshot (it starts with {found}, not {MANIFEST_NAME})"
        )


def manifest_archive(target: Path, manifest: bytes) -> None:
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        add(tar, tarfile.TarInfo(MANIFEST_NAME), manifest)


def test_the_manifest_size_limit_at_its_boundary(tmp_path: Path) -> None:
    manifest = manifest_bytes("edge", {})
    at_limit = tmp_path / "at-limit.tar.gz"
    manifest_archive(at_limit, manifest + b" " * (MAX_MANIFEST_BYTES - len(manifest)))
    assert read_manifest(at_limit).kind == "edge"
    over = tmp_path / "over.tar.gz"
    manifest_archive(over, manifest + b" " * (MAX_MANIFEST_BYTES + 1 - len(manifest)))
    with pytest.raises(SnapshotError) as refused:
        read_manifest(over)
    assert refused.value.message == f"{over}: its {MANIFEST_NAME} is implausibly large"


def test_a_plain_tar_reads_like_a_gzipped_one(snapshot: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    plain.write_bytes(gzip.decompress(snapshot.read_bytes()))
    assert read_manifest(plain) == read_manifest(snapshot)
    extract_archive(plain, tmp_path / "from-plain", kind="edge")
    extract_archive(snapshot, tmp_path / "from-gzip", kind="edge")
    files = sorted(
        p.relative_to(tmp_path / "from-gzip") for p in (tmp_path / "from-gzip").rglob("*")
    )
    assert files == sorted(
        p.relative_to(tmp_path / "from-plain") for p in (tmp_path / "from-plain").rglob("*")
    )
    for name in files:
        if (tmp_path / "from-gzip" / name).is_file():
            assert (tmp_path / "from-plain" / name).read_bytes() == (
                tmp_path / "from-gzip" / name
            ).read_bytes()


def test_a_truncated_plain_tar_is_damaged(snapshot: Path, tmp_path: Path) -> None:
    data = gzip.decompress(snapshot.read_bytes())
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    assert refusal(cut, tmp_path / "out") == (
        f"cannot read the snapshot {cut} (unexpected end of data): the file is truncated or "
        "damaged, or not a dinoseek snapshot"
    )


def test_the_kind_is_checked_both_ways(snapshot: Path) -> None:
    manifest = read_manifest(snapshot)
    check_kind(manifest, "edge", snapshot)
    with pytest.raises(SnapshotError) as refused:
        check_kind(manifest, "server", snapshot)
    assert refused.value.message == (
        f"{snapshot} was taken from the embedded store and cannot be restored into a Qdrant "
        "server: restore it into the embedded store (leave DINOSEEK_QDRANT_URL / --qdrant-url "
        "unset)"
    )


# -- members -------------------------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


SOURCE = Path("/backups/s.tar.gz")


@pytest.mark.parametrize(
    ("name", "is_dir", "kind"),
    [
        ("probes", True, "edge"),
        ("probes/default.safetensors", False, "edge"),
        ("probes/default.json", False, "edge"),
        ("probes/a.b.json", False, "server"),
        ("collection", True, "edge"),
        ("collection/collection.json", False, "edge"),
        ("collection/shard", True, "edge"),
        ("collection/shard/segments/0/data.bin", False, "edge"),
        ("collection/shard/segments", True, "edge"),
        ("qdrant", True, "server"),
        ("qdrant/collection.snapshot", False, "server"),
    ],
)
def test_the_layout_of_each_kind_is_accepted(name: str, is_dir: bool, kind: str) -> None:
    info = member(name, tarfile.DIRTYPE if is_dir else tarfile.REGTYPE)
    assert check_member(info, kind, SOURCE).as_posix() == name


@pytest.mark.parametrize(
    ("name", "is_dir", "kind"),
    [
        ("probes", False, "edge"),  # a file where the folder goes
        ("probes/default.safetensors", True, "edge"),
        ("probes/default.txt", False, "edge"),
        ("probes/.json", False, "edge"),
        ("probes/bad name!.json", False, "edge"),
        ("probes/sub/default.json", False, "edge"),
        ("collection", False, "edge"),
        ("collection/collection.json", True, "edge"),
        ("collection/collection.json/x", False, "edge"),
        ("collection/other.json", False, "edge"),
        ("collection/shardx/a", False, "edge"),
        ("collection", True, "server"),
        ("qdrant", True, "edge"),
        ("qdrant/collection.snapshot", False, "edge"),
        ("qdrant", False, "server"),
        ("qdrant/collection.snapshot", True, "server"),
        ("qdrant/other.snapshot", False, "server"),
        ("elsewhere", True, "edge"),
    ],
)
def test_anything_else_is_an_unexpected_member(name: str, is_dir: bool, kind: str) -> None:
    info = member(name, tarfile.DIRTYPE if is_dir else tarfile.REGTYPE)
    with pytest.raises(SnapshotError) as refused:
        check_member(info, kind, SOURCE)
    assert refused.value.message == f"{SOURCE}: unexpected member {name!r} in a {kind} snapshot"


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "\\evil", "collection\\..\\evil", "../evil", "collection/../../x", "."],
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(SnapshotError) as refused:
        check_member(member(name), "edge", SOURCE)
    assert refused.value.message == (
        f"{SOURCE}: unsafe member {name!r} (absolute path or '..'); refusing the snapshot"
    )


@pytest.mark.parametrize(
    ("kind", "described"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device or FIFO"),
        (tarfile.BLKTYPE, "device or FIFO"),
        (tarfile.FIFOTYPE, "device or FIFO"),
        (b"Z", "special file"),  # a vendor type tarfile does not know
    ],
)
def test_links_and_devices_are_named(kind: bytes, described: str) -> None:
    name = "collection/shard/x"
    with pytest.raises(SnapshotError) as refused:
        check_member(member(name, kind), "edge", SOURCE)
    assert refused.value.message == (
        f"{SOURCE}: member {name!r} is a {described}; a snapshot holds only regular files and "
        "directories, refusing it"
    )


def test_a_member_outside_the_manifest_or_twice_is_refused(tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.tar.gz"
    with tarfile.open(stranger, "w:gz") as tar:
        add(tar, tarfile.TarInfo(MANIFEST_NAME), manifest_bytes("edge", {}))
        add(tar, tarfile.TarInfo("collection/collection.json"), b"{}")
    assert refusal(stranger, tmp_path / "a") == (
        f"{stranger}: member 'collection/collection.json' is not in its manifest"
    )
    twice = tmp_path / "twice.tar.gz"
    data = b"{}"
    with tarfile.open(twice, "w:gz") as tar:
        add(
            tar,
            tarfile.TarInfo(MANIFEST_NAME),
            manifest_bytes("edge", {"collection/collection.json": data}),
        )
        add(tar, tarfile.TarInfo("collection/collection.json"), data)
        add(tar, tarfile.TarInfo("collection/collection.json"), data)
    assert refusal(twice, tmp_path / "b") == (
        f"{twice}: member 'collection/collection.json' appears twice"
    )


def test_a_tampered_file_is_named(snapshot: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.tar.gz"
    rewrite(snapshot, tampered, change={"collection/collection.json": b"{}"})
    assert refusal(tampered, tmp_path / "out") == (
        f"{tampered}: collection/collection.json does not match its checksum; the snapshot "
        "is damaged"
    )


def without(original: Path, target: Path, *names: str) -> None:
    """A copy of a snapshot without the members ``names``, its checksums left as they were
    (so the manifest still lists them)."""
    with tarfile.open(original) as source, tarfile.open(target, "w:gz", compresslevel=1) as out:
        for info in source.getmembers():
            if info.name in names:
                continue
            reader = source.extractfile(info) if info.isreg() else None
            add(out, info, reader.read() if reader else None)


def test_missing_files_are_listed(snapshot: Path, tmp_path: Path) -> None:
    """What the manifest implies (each probe's two files, collection.json, the shard's
    config) first, then what it lists, each missing one named."""
    names = ("probes/default.json", EDGE_CONFIG, "collection/collection.json")
    incomplete = tmp_path / "incomplete.tar.gz"
    without(snapshot, incomplete, *names)
    assert refusal(incomplete, tmp_path / "out") == (
        f"{incomplete} is incomplete (missing probes/default.json, collection/collection.json, "
        f"{EDGE_CONFIG}, probes/default.json, collection/collection.json, {EDGE_CONFIG}); it is "
        "truncated or damaged"
    )


def test_a_server_snapshot_needs_its_collection_file(tmp_path: Path) -> None:
    server = tmp_path / "server.tar.gz"
    write_archive(server, "server", [(directory("qdrant"), None)])
    assert refusal(server, tmp_path / "out", kind="server") == (
        f"{server} is incomplete (missing qdrant/collection.snapshot); it is truncated or damaged"
    )
    complete = tmp_path / "complete.tar.gz"
    write_archive(complete, "server", [(tarfile.TarInfo("qdrant/collection.snapshot"), b"q")])
    extract_archive(complete, tmp_path / "ok", kind="server")
    assert (tmp_path / "ok" / "qdrant" / "collection.snapshot").read_bytes() == b"q"


def test_a_listed_file_that_is_absent_is_missing(tmp_path: Path) -> None:
    source = tmp_path / "listed.tar.gz"
    files = {"collection/collection.json": b"{}", EDGE_CONFIG: b"{}", "collection/shard/gone": b"x"}
    with tarfile.open(source, "w:gz") as tar:
        add(tar, tarfile.TarInfo(MANIFEST_NAME), manifest_bytes("edge", files))
        for name in ("collection/collection.json", EDGE_CONFIG):
            add(tar, tarfile.TarInfo(name), files[name])
    assert refusal(source, tmp_path / "out") == (
        f"{source} is incomplete (missing collection/shard/gone); it is truncated or damaged"
    )


# -- what is written -----------------------------------------------------------------------


def test_extraction_writes_the_bytes_and_leaves_runs_of_zeros_as_holes(tmp_path: Path) -> None:
    """Files larger than a read chunk, zero runs at the start, the middle and the end (the
    file keeps its length), and a short file: the bytes are the archive's, and the runs of
    zeros take no disk blocks."""
    zeros = b"\0" * (16 * HOLE_BYTES)
    contents = {
        "collection/shard/sparse.bin": zeros + b"data" * 1000 + zeros + b"tail" + zeros,
        "collection/shard/dense.bin": bytes(range(256)) * 6000,  # 1.5 MB, no zero run
        "collection/shard/short.bin": b"\0\0x\0",
        "collection/shard/empty.bin": b"",
    }
    source = tmp_path / "files.tar.gz"
    members = minimal_members(*((tarfile.TarInfo(n), d) for n, d in contents.items()))
    write_archive(source, "edge", members)
    out = tmp_path / "out"
    manifest = extract_archive(source, out, kind="edge")
    assert set(manifest.files) == {*contents, "collection/collection.json", EDGE_CONFIG}
    for name, data in contents.items():
        assert (out / name).read_bytes() == data
    sparse = (out / "collection/shard/sparse.bin").stat()
    assert sparse.st_blocks * 512 <= sparse.st_size - 32 * HOLE_BYTES
    assert (out / "collection" / "shard").is_dir()


def test_the_destination_must_be_new(snapshot: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        extract_archive(snapshot, tmp_path / "out", kind="edge")
    deep = tmp_path / "a" / "b" / "out"
    assert extract_archive(snapshot, deep, kind="edge").points == 30


def test_a_long_name_header_at_the_limit_is_read(tmp_path: Path) -> None:
    """A GNU long-name member of exactly ``MAX_HEADER_MEMBER_BYTES`` (the name and its NUL)
    is read, so the name itself is judged; one byte more is refused from its header."""
    for length, expected in (
        (MAX_HEADER_MEMBER_BYTES - 1, "unsafe-or-unexpected"),
        (MAX_HEADER_MEMBER_BYTES, "too large"),
    ):
        info = member("collection/" + "n" * (length - len("collection/")))
        source = tmp_path / f"long-{length}.tar.gz"
        with tarfile.open(source, "w:gz", format=tarfile.GNU_FORMAT) as tar:
            add(tar, tarfile.TarInfo(MANIFEST_NAME), manifest_bytes("edge", {}))
            tar.addfile(info)
        message = refusal(source, tmp_path / f"out-{length}")
        if expected == "too large":
            assert message == (
                f"{source}: a {length + 1:,}-byte tar header (long name or PAX) is implausibly "
                "large; refusing the snapshot before reading it"
            )
        else:
            assert "implausibly large" not in message
            assert message == f"{source}: unexpected member {info.name!r} in a edge snapshot"


def test_a_manifest_that_is_not_json_or_not_ours(tmp_path: Path) -> None:
    source = tmp_path / "bad.tar.gz"
    manifest_archive(source, b"{not json")
    with pytest.raises(SnapshotError) as not_json:
        read_manifest(source)
    assert not_json.value.message == (
        f"{source}: its {MANIFEST_NAME} is not JSON (Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1))"
    )
    manifest_archive(source, json.dumps({"format": "other"}).encode())
    with pytest.raises(SnapshotError) as other:
        read_manifest(source)
    assert other.value.message == (f"{source} is not a dinoseek snapshot (unknown manifest format)")


def plain_snapshot(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """An uncompressed tar: a valid edge manifest listing ``members``' files, then them."""
    files = {m.name: data for m, data in members if data is not None}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add(tar, tarfile.TarInfo(MANIFEST_NAME), manifest_bytes("edge", files))
        for info, data in members:
            add(tar, info, data)
    return buffer.getvalue()


def cut_gzip(data: bytes, at: int) -> bytes:
    """``data`` gzipped in two members, the second cut short: the stream ends, mid-deflate,
    right after byte ``at`` of the tar."""
    return gzip.compress(data[:at]) + gzip.compress(data[at:])[:30]


def test_a_gzip_stream_cut_in_the_manifest_or_at_a_header_is_damaged(tmp_path: Path) -> None:
    """tarfile reads a stream 10,240 bytes at a time: the gzip stream is cut just after the
    first such block, inside the manifest's content (a manifest of 12 kB) or where the next
    header begins (a member that ends exactly at 10,240 bytes)."""
    block = 10240
    long_manifest = manifest_bytes("edge", {}) + b" " * 12000
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add(tar, tarfile.TarInfo(MANIFEST_NAME), long_manifest)
    source = tmp_path / "in-manifest.tar.gz"
    source.write_bytes(cut_gzip(buffer.getvalue(), block + 100))
    with pytest.raises(SnapshotError) as in_manifest:
        read_manifest(source)
    assert in_manifest.value.message == ended(source)

    name = "collection/collection.json"
    manifest_blocks = -(-len(manifest_bytes("edge", {name: b""})) // 512)
    content = b" " * (block - 512 - 512 * manifest_blocks - 512)
    plain = plain_snapshot((tarfile.TarInfo(name), content))
    assert plain[block - 512 : block] != b"\0" * 512  # the member ends at the block's end
    source = tmp_path / "in-header.tar.gz"
    source.write_bytes(cut_gzip(plain, block))
    assert refusal(source, tmp_path / "out") == ended(source)
    assert (tmp_path / "out" / name).read_bytes() == content  # read before the cut


def ended(source: Path) -> str:
    return (
        f"cannot read the snapshot {source} (Compressed file ended before the end-of-stream "
        "marker was reached): the file is truncated or damaged, or not a dinoseek snapshot"
    )


def test_extraction_names_the_source_in_its_own_refusals(snapshot: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        add(tar, tarfile.TarInfo("collection/collection.json"), b"{}")
    assert refusal(other, tmp_path / "a") == (
        f"{other} is not a dinoseek snapshot (it starts with 'collection/collection.json', "
        f"not {MANIFEST_NAME})"
    )
    assert refusal(snapshot, tmp_path / "b", kind="server") == (
        f"{snapshot} was taken from the embedded store and cannot be restored into a Qdrant "
        "server: restore it into the embedded store (leave DINOSEEK_QDRANT_URL / --qdrant-url "
        "unset)"
    )


def test_the_size_limit_counts_every_file_at_its_boundary(tmp_path: Path) -> None:
    """The sum of the files' sizes may equal ``max_bytes``; one byte less is refused at the
    member that crosses it."""
    contents = {"collection/shard/a.bin": b"a" * 1000, "collection/shard/b.bin": b"b" * 500}
    source = tmp_path / "sized.tar.gz"
    write_archive(
        source, "edge", minimal_members(*((tarfile.TarInfo(n), d) for n, d in contents.items()))
    )
    total = 2 + 2 + 1000 + 500  # collection.json and edge_config.json are "{}"
    extract_archive(source, tmp_path / "exact", kind="edge", max_bytes=total)
    with pytest.raises(SnapshotError) as refused:
        extract_archive(source, tmp_path / "less", kind="edge", max_bytes=total - 1)
    assert refused.value.message == (
        f"{source}: its files add up to more than {total - 1:,} bytes (at "
        "collection/shard/b.bin, 500 bytes); raise DINOSEEK_MAX_SNAPSHOT_BYTES to restore it"
    )
    with pytest.raises(SnapshotError, match=r"at collection/shard/a\.bin, 1,000 bytes"):
        extract_archive(source, tmp_path / "small", kind="edge", max_bytes=1003)


def test_a_member_needs_the_free_space_plus_a_margin(tmp_path: Path) -> None:
    """A member declared 16 MiB larger than the free space less the 64 MiB margin is
    refused from its header (no content follows it)."""
    out = tmp_path / "out"
    out.mkdir()
    free = shutil.disk_usage(out).free
    big = tarfile.TarInfo("collection/shard/big.bin")
    big.size = free - FREE_SPACE_MARGIN_BYTES + 16 * 1024 * 1024
    source = tmp_path / "big.tar.gz"
    with gzip.open(source, "wb", compresslevel=1) as stream:
        manifest = manifest_bytes("edge", {big.name: b""})
        head = tarfile.TarInfo(MANIFEST_NAME)
        head.size = len(manifest)
        stream.write(head.tobuf() + manifest + b"\0" * (-len(manifest) % 512))
        stream.write(big.tobuf(tarfile.GNU_FORMAT))
    with pytest.raises(StoreError) as refused:
        extract_archive(source, out / "dest", kind="edge")
    assert refused.value.message.startswith(
        f"not enough free space in {out / 'dest'} to restore {source} (collection/shard/big.bin "
        f"is {big.size:,} bytes, "
    )
    assert refused.value.message.endswith(" bytes are free); make room, then try again")


def test_archives_without_directory_members_or_in_any_order(tmp_path: Path) -> None:
    """Another tar tool may list no directories, or a directory after its files, or a
    nested one before its parent: the files land where they belong all the same."""
    files = [
        (tarfile.TarInfo("collection/shard/segments/0/data.bin"), b"data"),
        (tarfile.TarInfo("collection/collection.json"), b"{}"),
        (tarfile.TarInfo(EDGE_CONFIG), b"{}"),
    ]
    orders = {
        "no-directories": files,
        "directory-after": [
            *files,
            (directory("collection/shard"), None),
            (directory("collection"), None),
        ],
        "nested-first": [(directory("collection/shard/segments/0"), None), *files],
    }
    for name, members in orders.items():
        source = tmp_path / f"{name}.tar.gz"
        write_archive(source, "edge", members)
        out = tmp_path / name
        extract_archive(source, out, kind="edge")
        assert (out / "collection/shard/segments/0/data.bin").read_bytes() == b"data"
        assert (out / EDGE_CONFIG).read_bytes() == b"{}"


def test_a_file_where_a_folder_must_go_cannot_be_written(tmp_path: Path) -> None:
    source = tmp_path / "clash.tar.gz"
    write_archive(
        source,
        "edge",
        minimal_members(
            (tarfile.TarInfo("collection/shard/a"), b"file"),
            (tarfile.TarInfo("collection/shard/a/b"), b"under a file"),
        ),
    )
    out = tmp_path / "out"
    with pytest.raises(StoreError) as refused:
        extract_archive(source, out, kind="edge")
    assert refused.value.message == (
        f"cannot write {out / 'collection/shard/a/b'} while restoring {source}: [Errno 17] "
        f"File exists: '{out / 'collection/shard/a'}'"
    )
