"""Snapshot archives: one self-describing file per collection backup, for both stores.

A snapshot is a tar archive, gzip-compressed at level 1 (vectors hardly compress, and a
higher level only costs time; the preallocated, mostly empty files of a Qdrant Edge shard
shrink a thousandfold at any level). Readers also accept an uncompressed tar. Its members,
in this order::

    dinoseek-snapshot.json       the manifest (always the first member)
    probes/NAME.safetensors      each probe's bytes ...
    probes/NAME.json             ... and its info (the training report)
    collection/collection.json   embedded store: the collection's embedding space
    collection/shard/...         embedded store: the Qdrant Edge shard, flushed and closed
    qdrant/collection.snapshot   server store: the collection snapshot made by Qdrant

The manifest is a JSON object::

    {"format": "dinoseek-snapshot", "format_version": 1, "kind": "edge" | "server",
     "collection": "images", "space": {...EmbeddingSpace.to_metadata()...},
     "points": 200, "probes": ["default"], "created_at": "2025-01-31T12:00:00Z",
     "dinoseek_version": "0.1.0", "files": {"collection/collection.json": "<sha256>", ...}}

``files`` holds the sha256 of every regular file after the manifest: a restore checks each
one while extracting, so a damaged archive is refused even where gzip and tar would not
notice (tarfile's stream mode never checks gzip's CRC).

Archives are read in one streaming pass into a staging directory that the caller discards on
any error. Each member is checked before it is written: only regular files and directories,
only the names above, no absolute paths, no ``..``, no links or devices (tar path
traversal); tarfile's own ``data`` filter vets each member again where it exists (Python
3.12+, and 3.8.17+/3.9.17+/3.10.12+/3.11.4+). dinoseek writes the files itself, sparse, so
the holes of an Edge shard stay holes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

from dinoseek import __version__
from dinoseek.errors import ConfigError, SnapshotError, StoreError
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.protocol import SnapshotInfo, StoredProbe, VectorStore

FORMAT = "dinoseek-snapshot"
FORMAT_VERSION = 1
KINDS = ("edge", "server")
MANIFEST_NAME = "dinoseek-snapshot.json"
PROBES_DIR = "probes"
EDGE_DATA_DIR = "collection"
SERVER_DATA_DIR = "qdrant"
SERVER_DATA_FILE = f"{SERVER_DATA_DIR}/collection.snapshot"
SUFFIX = ".dinoseek-snapshot.tar.gz"
COMPRESS_LEVEL = 1
CHUNK_BYTES = 1024 * 1024
HOLE_BYTES = 64 * 1024  # all-zero runs of this size become holes in restored files
MAX_MANIFEST_BYTES = 1024 * 1024
PROBE_FILE = re.compile(r"^(?P<name>.+)\.(?P<ext>safetensors|json)$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
KIND_NAMES = {"edge": "the embedded store", "server": "a Qdrant server"}
KIND_REMEDY = {
    "edge": "restore it into the embedded store (leave DINOSEEK_QDRANT_URL / --qdrant-url unset)",
    "server": "restore it into a Qdrant server (set DINOSEEK_QDRANT_URL or --qdrant-url)",
}


@dataclass(frozen=True)
class SnapshotManifest:
    """What ``dinoseek-snapshot.json`` records about the snapshot."""

    kind: str
    collection: str
    space: EmbeddingSpace
    points: int
    created_at: str
    probes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION
    dinoseek_version: str = __version__
    files: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> bytes:
        """The manifest file's bytes."""
        document = {
            "format": FORMAT,
            "format_version": self.format_version,
            "kind": self.kind,
            "collection": self.collection,
            "space": self.space.to_metadata(),
            "points": self.points,
            "probes": list(self.probes),
            "created_at": self.created_at,
            "dinoseek_version": self.dinoseek_version,
            "files": self.files,
        }
        return json.dumps(document, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, source: Path) -> SnapshotManifest:
        """Parse and validate a manifest (``SnapshotError`` naming ``source`` if it is bad)."""
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise SnapshotError(f"{source}: its {MANIFEST_NAME} is not JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise SnapshotError(f"{source} is not a dinoseek snapshot (unknown manifest format)")
        try:
            return cls._from_document(document, source)
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{source}: invalid {MANIFEST_NAME} ({exc})") from None

    @classmethod
    def _from_document(cls, document: dict[str, Any], source: Path) -> SnapshotManifest:
        version = document["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"format_version {version!r}")
        if version > FORMAT_VERSION:
            raise SnapshotError(
                f"{source} has snapshot format {version}, made by a newer dinoseek "
                f"({document.get('dinoseek_version', '?')}); this one reads format "
                f"{FORMAT_VERSION}: upgrade dinoseek to restore it"
            )
        kind = document["kind"]
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} (expected one of {', '.join(KINDS)})")
        points = document["points"]
        if not isinstance(points, int) or isinstance(points, bool) or points < 0:
            raise ValueError(f"points {points!r}")
        created_at = document["created_at"]
        if not isinstance(created_at, str):
            raise ValueError(f"created_at {created_at!r}")
        probes = tuple(validate_collection_name(str(p), kind="probe") for p in document["probes"])
        files = document["files"]
        if not isinstance(files, dict) or not all(
            isinstance(v, str) and SHA256_HEX.match(v) for v in files.values()
        ):
            raise ValueError("files must map member names to sha256 digests")
        return cls(
            kind=kind,
            collection=validate_collection_name(str(document["collection"])),
            space=EmbeddingSpace.from_metadata(document["space"]),
            points=points,
            created_at=created_at,
            probes=probes,
            format_version=version,
            dinoseek_version=str(document.get("dinoseek_version", "")),
            files={str(k): str(v) for k, v in files.items()},
        )

    def info(
        self,
        path: Path,
        collection: str,
        *,
        points: int | None = None,
        warnings: Sequence[str] = (),
    ) -> SnapshotInfo:
        """The ``SnapshotInfo`` of this snapshot at ``path``, as ``collection``."""
        return SnapshotInfo(
            path=path,
            collection=collection,
            source_collection=self.collection,
            kind=self.kind,
            points=self.points if points is None else points,
            size_bytes=path.stat().st_size,
            created_at=self.created_at,
            model_id=self.space.model_id,
            dim=self.space.dim,
            probes=self.probes,
            format_version=self.format_version,
            warnings=tuple(warnings),
        )


@dataclass(frozen=True)
class ProbeFile:
    """A probe as it travels in a snapshot: name, bytes and info."""

    name: str
    data: bytes
    info: dict[str, Any]


def new_manifest(
    kind: str, collection: str, space: EmbeddingSpace, points: int, probes: Sequence[ProbeFile]
) -> SnapshotManifest:
    """The manifest of a snapshot taken now."""
    return SnapshotManifest(
        kind=kind,
        collection=collection,
        space=space,
        points=points,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        probes=tuple(p.name for p in probes),
    )


def default_snapshot_name(collection: str, now: datetime | None = None) -> str:
    """``COLLECTION-YYYYmmdd-HHMMSS.dinoseek-snapshot.tar.gz`` (local time)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{collection}-{stamp}{SUFFIX}"


def collect_probes(store: VectorStore, collection: str) -> list[ProbeFile]:
    """Every probe of the collection, with its bytes, through the store interface."""
    probes: list[StoredProbe] = store.list_probes(collection)
    return [ProbeFile(p.name, store.load_probe(collection, p.name), dict(p.info)) for p in probes]


def read_probe_files(directory: Path, names: Sequence[str]) -> list[ProbeFile]:
    """The probes an extracted snapshot holds under ``directory/probes``."""
    probes = []
    for name in names:
        data = (directory / PROBES_DIR / f"{name}.safetensors").read_bytes()
        info = json.loads((directory / PROBES_DIR / f"{name}.json").read_text(encoding="utf-8"))
        probes.append(ProbeFile(name, data, dict(info)))
    return probes


# -- writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One member of an archive to write: a directory, a file on disk, or bytes."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @property
    def is_dir(self) -> bool:
        """A directory entry (neither bytes nor a regular file)."""
        return self.data is None and (self.path is None or self.path.is_dir())


def file_member(name: str, path: Path) -> Member:
    """The regular file at ``path`` as member ``name`` (``StoreError`` for anything else)."""
    if path.is_symlink() or not path.is_file():
        raise StoreError(f"{path} is not a regular file; cannot put it in a snapshot")
    return Member(name, path=path)


def tree_members(name: str, directory: Path) -> list[Member]:
    """``directory`` and everything in it as members under ``name``, sorted."""
    members = [Member(name, path=directory)]
    for child in sorted(directory.iterdir()):
        child_name = f"{name}/{child.name}"
        if child.is_dir() and not child.is_symlink():
            members += tree_members(child_name, child)
        else:
            members.append(file_member(child_name, child))
    return members


def probe_members(probes: Sequence[ProbeFile]) -> list[Member]:
    """``probes/NAME.safetensors`` and ``probes/NAME.json`` for each probe."""
    members = [Member(PROBES_DIR)] if probes else []
    for probe in probes:
        info = json.dumps(probe.info, indent=1).encode("utf-8")
        members.append(Member(f"{PROBES_DIR}/{probe.name}.safetensors", data=probe.data))
        members.append(Member(f"{PROBES_DIR}/{probe.name}.json", data=info))
    return members


def write_snapshot(target: Path, manifest: SnapshotManifest, members: Sequence[Member]) -> None:
    """Write the manifest (with every file's sha256) and then ``members`` to ``target``.

    The archive is written under a temporary name beside ``target``, fsynced, and only then
    given its name, so ``target`` is either complete or absent. An existing file is never
    overwritten (``ConfigError``).
    """
    check_target(target)
    files = {m.name: _sha256_of(m) for m in members if not m.is_dir}
    manifest = dataclasses.replace(manifest, files=files)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "xb") as raw:
            with tarfile.open(
                fileobj=raw, mode="w:gz", compresslevel=COMPRESS_LEVEL, format=tarfile.PAX_FORMAT
            ) as tar:
                _add(tar, Member(MANIFEST_NAME, data=manifest.to_json()))
                for member in members:
                    _add(tar, member)
            raw.flush()
            os.fsync(raw.fileno())
        _publish(partial, target)
    except OSError as exc:
        raise StoreError(f"cannot write the snapshot {target}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def check_target(target: Path) -> None:
    """Refuse a snapshot path that exists or whose folder does not (``ConfigError``)."""
    if target.exists() or target.is_symlink():
        raise ConfigError(f"{target} exists; choose another path (a snapshot never overwrites)")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent} is not a directory; create it first")


def _sha256_of(member: Member) -> str:
    digest = hashlib.sha256()
    if member.data is not None:
        digest.update(member.data)
    elif member.path is not None:
        with open(member.path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def _add(tar: tarfile.TarFile, member: Member) -> None:
    if member.data is None and member.path is not None:
        tar.add(str(member.path), arcname=member.name, recursive=False, filter=_anonymous)
        return
    info = tarfile.TarInfo(member.name)
    info.mtime = int(datetime.now(timezone.utc).timestamp())
    if member.data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.size, info.mode = len(member.data), 0o644
    tar.addfile(info, io.BytesIO(member.data))


def _publish(partial: Path, target: Path) -> None:
    """Give the finished archive its name without ever replacing a file that appeared."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise ConfigError(
            f"{target} appeared while the snapshot was written; not replaced"
        ) from None
    except OSError:
        # A file system without hard links: a plain rename (the existence check is older).
        if target.exists():
            raise ConfigError(f"{target} exists; choose another path") from None
        os.rename(partial, target)
    fsync_directory(target.parent)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Leave the owner's user and group names out of the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# -- reading --------------------------------------------------------------------------------


def read_manifest(source: Path) -> SnapshotManifest:
    """The manifest of the snapshot at ``source`` (reads only the start of the file)."""
    with _open_for_reading(source) as tar:
        return _read_first_member(tar, source)


def extract_archive(source: Path, destination: Path, *, kind: str) -> SnapshotManifest:
    """Check and extract the snapshot ``source`` into the new directory ``destination``.

    Refuses (``SnapshotError``) an archive that is not a snapshot, is damaged or truncated,
    was taken from the other kind of store, or holds anything but the expected regular files
    and directories. Nothing is written outside ``destination``; on error, what was written
    inside it is left for the caller to remove.
    """
    destination.mkdir(parents=True)
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
            digest = _extract_member(tar, member, destination / relative, source)
            if digest is not None and digest != expected:
                raise SnapshotError(
                    f"{source}: {relative} does not match its checksum; the snapshot is damaged"
                )
    _check_complete(manifest, seen, source)
    return manifest


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
    """Open ``source`` as a stream (gzip or plain tar), translating failures."""
    try:
        tar = tarfile.open(source, mode="r|*")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise SnapshotError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise SnapshotError(f"{source} is a directory, not a snapshot file") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise SnapshotError(_unreadable(source, exc)) from None
    except OSError as exc:
        raise SnapshotError(f"cannot read {source}: {exc}") from None
    with tar:
        yield tar


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


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (files were fsynced when written)."""
    for directory, _, _ in os.walk(root):
        fsync_directory(Path(directory))
