"""Reading snapshot archives safely: the manifest, and a checked, streaming extraction.

Archives are read in one streaming pass into a staging directory that the caller discards on
any error. Each member is checked before it is written: only regular files and directories,
only the names of the layout in ``dinoseek.store.archive``, no absolute paths, no ``..``, no
links or devices (tar path traversal); tarfile's own ``data`` filter vets each member again
where it exists. Every file's sha256 is checked against the manifest while it is written,
sparse, so the holes of an Edge shard stay holes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from dinoseek.errors import SnapshotError, StoreError
from dinoseek.settings import validate_collection_name
from dinoseek.store.archive import (
    CHUNK_BYTES,
    EDGE_DATA_DIR,
    HOLE_BYTES,
    KIND_NAMES,
    KIND_REMEDY,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    PROBE_FILE,
    PROBES_DIR,
    SERVER_DATA_DIR,
    SERVER_DATA_FILE,
    SnapshotManifest,
)

GZIP_MAGIC = b"\x1f\x8b"
HEADER_MEMBER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
MAX_HEADER_MEMBER_BYTES = 64 * 1024
FREE_SPACE_MARGIN_BYTES = 64 * 1024 * 1024


def read_manifest(source: Path) -> SnapshotManifest:
    """The manifest of the snapshot at ``source`` (reads only the start of the file)."""
    with _open_for_reading(source) as tar:
        return _read_first_member(tar, source)


def extract_archive(
    source: Path, destination: Path, *, kind: str, max_bytes: int | None = None
) -> SnapshotManifest:
    """Check and extract the snapshot ``source`` into the new directory ``destination``.

    Refuses (``SnapshotError``) an archive that is not a snapshot, is damaged or truncated,
    was taken from the other kind of store, holds anything but the expected regular files
    and directories, or whose files add up to more than ``max_bytes``; and (``StoreError``)
    one that would not fit in the free space left. Each of these is checked from a member's
    header, before its content is read. Nothing is written outside ``destination``; on error,
    what was written inside it is left for the caller to remove.
    """
    destination.mkdir(parents=True)
    total = 0
    with _open_for_reading(source) as tar:
        manifest = _read_first_member(tar, source)
        check_kind(manifest, kind, source)
        seen: set[str] = set()
        for member in _next_members(tar, source):
            relative = check_member(member, kind, source).as_posix()
            expected = manifest.files.get(relative)
            if member.isreg() and expected is None:
                raise SnapshotError(f"{source}: member {relative!r} is not in its manifest")
            if member.isreg() and relative in seen:
                raise SnapshotError(f"{source}: member {relative!r} appears twice")
            seen.add(relative)
            total += member.size
            _check_room(source, destination, relative, member.size, total, max_bytes)
            digest = _extract_member(tar, member, destination / relative, source)
            if digest is not None and digest != expected:
                raise SnapshotError(
                    f"{source}: {relative} does not match its checksum; the snapshot is damaged"
                )
    _check_complete(manifest, seen, source)
    return manifest


def _check_room(
    source: Path, destination: Path, name: str, size: int, total: int, max_bytes: int | None
) -> None:
    """Refuse a member that takes the snapshot past ``max_bytes``, or that the disk has no
    room for."""
    if max_bytes is not None and total > max_bytes:
        raise SnapshotError(
            f"{source}: its files add up to more than {max_bytes:,} bytes (at {name}, "
            f"{size:,} bytes); raise DINOSEEK_MAX_SNAPSHOT_BYTES to restore it"
        )
    free = shutil.disk_usage(destination).free
    if size + FREE_SPACE_MARGIN_BYTES > free:
        raise StoreError(
            f"not enough free space in {destination} to restore {source} ({name} is "
            f"{size:,} bytes, {free:,} bytes are free); make room, then try again"
        )


def check_kind(manifest: SnapshotManifest, kind: str, source: Path) -> None:
    """Refuse a snapshot taken from the other kind of store, saying where it belongs."""
    if manifest.kind != kind:
        raise SnapshotError(
            f"{source} was taken from {KIND_NAMES[manifest.kind]} and cannot be restored into "
            f"{KIND_NAMES[kind]}: {KIND_REMEDY[manifest.kind]}"
        )


def check_member(member: tarfile.TarInfo, kind: str, source: Path) -> PurePosixPath:
    """The member's safe relative path, or ``SnapshotError`` (traversal, links, devices...)."""
    name = member.name
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or path.is_absolute()
        or ".." in path.parts
        or not path.parts
    ):
        raise SnapshotError(
            f"{source}: unsafe member {name!r} (absolute path or '..'); refusing the snapshot"
        )
    if not (member.isreg() or member.isdir()):
        raise SnapshotError(
            f"{source}: member {name!r} is a {_type_name(member)}; a snapshot holds only "
            "regular files and directories, refusing it"
        )
    if not _expected(path, member.isdir(), kind):
        raise SnapshotError(f"{source}: unexpected member {name!r} in a {kind} snapshot")
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, "/nonexistent-dinoseek-destination")
        except tarfile.TarError as exc:
            raise SnapshotError(f"{source}: unsafe member {name!r} ({exc})") from None
    return path


def _expected(path: PurePosixPath, is_dir: bool, kind: str) -> bool:
    """Whether ``path`` belongs in a snapshot of ``kind`` (the layout in the module doc)."""
    parts = path.parts
    if parts[0] == PROBES_DIR:
        return _expected_probe(parts, is_dir)
    if kind == "edge" and parts[0] == EDGE_DATA_DIR:
        if len(parts) == 1:
            return is_dir
        if parts[1] == "collection.json":
            return len(parts) == 2 and not is_dir
        return parts[1] == "shard"
    if kind == "server" and parts[0] == SERVER_DATA_DIR:
        return is_dir if len(parts) == 1 else (path.as_posix() == SERVER_DATA_FILE and not is_dir)
    return False


def _expected_probe(parts: tuple[str, ...], is_dir: bool) -> bool:
    if len(parts) == 1:
        return is_dir
    match = PROBE_FILE.match(parts[1])
    if len(parts) != 2 or is_dir or match is None:
        return False
    try:
        validate_collection_name(match["name"], kind="probe")
    except ValueError:
        return False
    return True


def _type_name(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isdev():
        return "device or FIFO"
    return "special file"


def _check_complete(manifest: SnapshotManifest, seen: set[str], source: Path) -> None:
    """Every file the manifest implies must have been in the archive."""
    extensions = ("safetensors", "json")
    required = [f"{PROBES_DIR}/{probe}.{ext}" for probe in manifest.probes for ext in extensions]
    if manifest.kind == "edge":
        required += [f"{EDGE_DATA_DIR}/collection.json", f"{EDGE_DATA_DIR}/shard/edge_config.json"]
    else:
        required.append(SERVER_DATA_FILE)
    missing = [name for name in [*required, *manifest.files] if name not in seen]
    if missing:
        raise SnapshotError(
            f"{source} is incomplete (missing {', '.join(missing)}); it is truncated or damaged"
        )


@contextmanager
def _open_for_reading(source: Path) -> Iterator[tarfile.TarFile]:
    """Open ``source`` as a stream (gzip or plain tar) whose headers are bounded
    (``BoundedTarInfo``), translating failures."""
    try:
        raw = open(source, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise SnapshotError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise SnapshotError(f"{source} is a directory, not a snapshot file") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read {source}: {exc}") from None
    with raw, ExitStack() as stack:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream: IO[bytes] | gzip.GzipFile = raw
        if gzipped:
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw))
        try:
            tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo)  # noqa: SIM115
        except HeaderTooLargeError as exc:
            raise SnapshotError(f"{source}: {exc}") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise SnapshotError(_unreadable(source, exc)) from None
        with tar:
            yield tar


class HeaderTooLargeError(Exception):
    """A long-name or PAX header member over ``MAX_HEADER_MEMBER_BYTES``."""


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing a GNU long-name or PAX header member over
    ``MAX_HEADER_MEMBER_BYTES`` as soon as its own 512-byte header is parsed: tarfile would
    otherwise read such a member whole, before any check (a 1 MB archive can claim a 2 GB
    file name). tarfile parses every header, the ones that follow such members included,
    through this class."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> BoundedTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in HEADER_MEMBER_TYPES and info.size > MAX_HEADER_MEMBER_BYTES:
            raise HeaderTooLargeError(
                f"a {info.size:,}-byte tar header (long name or PAX) is implausibly large; "
                "refusing the snapshot before reading it"
            )
        return info


def _unreadable(source: Path, exc: BaseException) -> str:
    return (
        f"cannot read the snapshot {source} ({exc or type(exc).__name__}): the file is "
        "truncated or damaged, or not a dinoseek snapshot"
    )


def _next_members(tar: tarfile.TarFile, source: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members one by one, read errors translated to ``SnapshotError``."""
    while True:
        try:
            member = tar.next()
        except HeaderTooLargeError as exc:
            raise SnapshotError(f"{source}: {exc}") from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise SnapshotError(_unreadable(source, exc)) from None
        if member is None:
            return
        yield member


def _read_first_member(tar: tarfile.TarFile, source: Path) -> SnapshotManifest:
    first = next(_next_members(tar, source), None)
    if first is None or first.name != MANIFEST_NAME or not first.isreg():
        found = "nothing" if first is None else repr(first.name)
        raise SnapshotError(
            f"{source} is not a dinoseek snapshot (it starts with {found}, not {MANIFEST_NAME})"
        )
    if first.size > MAX_MANIFEST_BYTES:
        raise SnapshotError(f"{source}: its {MANIFEST_NAME} is implausibly large")
    reader = _member_reader(tar, first, source)
    return SnapshotManifest.from_json(_read(reader, -1, source), source)


def _member_reader(tar: tarfile.TarFile, member: tarfile.TarInfo, source: Path) -> IO[bytes]:
    reader = tar.extractfile(member)
    if reader is None:
        raise SnapshotError(f"{source}: member {member.name!r} has no content")
    return reader


def _read(reader: IO[bytes], size: int, source: Path) -> bytes:
    try:
        return reader.read(size)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise SnapshotError(_unreadable(source, exc)) from None


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, source: Path
) -> str | None:
    """Create the directory, or write the file sparse and return its sha256."""
    try:
        if member.isdir():
            path.mkdir(parents=True, exist_ok=True)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        reader = _member_reader(tar, member, source)
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            written = _copy_sparse(reader, out, digest, source)
            out.truncate(written)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise StoreError(f"cannot write {path} while restoring {source}: {exc}") from None
    if written != member.size:
        raise SnapshotError(_unreadable(source, EOFError(f"{member.name} is cut short")))
    return digest.hexdigest()


def _copy_sparse(reader: IO[bytes], out: IO[bytes], digest: Any, source: Path) -> int:
    """Copy ``reader`` to ``out``, seeking over all-zero blocks; the bytes copied."""
    written = 0
    while chunk := _read(reader, CHUNK_BYTES, source):
        digest.update(chunk)
        view = memoryview(chunk)
        for start in range(0, len(chunk), HOLE_BYTES):
            end = min(start + HOLE_BYTES, len(chunk))
            if chunk.count(0, start, end) == end - start:
                out.seek(end - start, os.SEEK_CUR)
            else:
                out.write(view[start:end])
        written += len(chunk)
    return written
