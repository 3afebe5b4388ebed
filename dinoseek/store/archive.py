"""Snapshot archives: the format, the manifest, and writing one.

One self-describing file per collection backup, for both stores.

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

Reading (and checking) an archive is ``dinoseek.store.archive_read``.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dinoseek import __version__
from dinoseek.errors import ConfigError, SnapshotError, StoreError
from dinoseek.settings import validate_collection_name
from dinoseek.space import EmbeddingSpace
from dinoseek.store.files import fsync_directory
from dinoseek.store.protocol import ProbeStore
from dinoseek.store.records import SnapshotInfo, StoredProbe

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


def collect_probes(probes: ProbeStore, collection: str) -> list[ProbeFile]:
    """Every probe of the collection, with its bytes."""
    stored: list[StoredProbe] = probes.list(collection)
    return [ProbeFile(p.name, probes.load(collection, p.name), dict(p.info)) for p in stored]


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
