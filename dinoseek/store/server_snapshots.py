"""Snapshots on a Qdrant server: Qdrant's own collection snapshot, archived with the probes.

``create`` has Qdrant write a collection snapshot over REST (``dinoseek.store.qdrant_rest``),
downloads it and archives it with the probes (format: ``dinoseek.store.archive``); the
server-side file is deleted afterwards, also on failure. ``restore`` uploads the archived
snapshot (Qdrant recovers the collection from it), then stores the probes again.
qdrant-client's in-process mode has no snapshot API: there both raise a ``StoreError`` saying
that a Qdrant server is needed. In a cluster a collection snapshot covers only the node it is
taken on, which both report as a warning.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from dinoseek.errors import (
    CollectionExistsError,
    CollectionMismatchError,
    ConfigError,
    StoreError,
)
from dinoseek.settings import validate_collection_name
from dinoseek.store.archive import (
    SERVER_DATA_DIR,
    SERVER_DATA_FILE,
    Member,
    ProbeFile,
    SnapshotManifest,
    check_target,
    collect_probes,
    file_member,
    new_manifest,
    probe_members,
    read_probe_files,
    write_snapshot,
)
from dinoseek.store.archive_read import check_kind, extract_archive, read_manifest
from dinoseek.store.qdrant_rest import SNAPSHOTS_DOCS, QdrantRest
from dinoseek.store.records import SnapshotInfo
from dinoseek.store.server_collections import ServerCollections
from dinoseek.store.server_probes import PROBES_COLLECTION

log = logging.getLogger(__name__)


class ServerSnapshots:
    """``SnapshotStore`` of a ``ServerStore``."""

    def __init__(self, store: ServerCollections, rest: QdrantRest | None = None) -> None:
        """``rest`` overrides the snapshot endpoints derived from the store's client (tests)."""
        self.store = store
        self._rest_override = rest

    def create(self, collection: str, target: Path) -> SnapshotInfo:
        """Have Qdrant snapshot the collection, download it, and archive it with the probes."""
        target = Path(target)
        check_target(target)
        rest = self._rest()
        info = self.store.collection_info(collection)
        space = self.store.collection_space(collection)
        notes = self._cluster_warnings(rest, "snapshot")
        probes = collect_probes(self.store.probes, collection)
        manifest = new_manifest("server", collection, space, info.points, probes)
        remote = rest.create_snapshot(collection)
        download = target.with_name(f".{target.name}.{uuid.uuid4().hex}.download")
        try:
            rest.download_snapshot(collection, remote, download)
            members = [
                *probe_members(probes),
                Member(SERVER_DATA_DIR),
                file_member(SERVER_DATA_FILE, download),
            ]
            write_snapshot(target, manifest, members)
        finally:
            download.unlink(missing_ok=True)
            self._delete_remote_snapshot(rest, collection, remote.name)
        return manifest.info(target, collection, warnings=notes)

    def restore(
        self,
        collection: str,
        source: Path,
        *,
        replace: bool = False,
        max_bytes: int | None = None,
    ) -> SnapshotInfo:
        """Upload the archived Qdrant snapshot as ``collection``, then restore its probes.

        The archive is checked and extracted to a temporary directory first (``TMPDIR``
        needs room for it); Qdrant recovers the collection from the upload (``priority=
        snapshot``), replacing an existing one only with ``replace=True``.
        """
        name = validate_collection_name(collection)
        if name == PROBES_COLLECTION:
            raise ConfigError(f"{name!r} holds dinoseek's probes; choose another --collection")
        source = Path(source)
        check_kind(read_manifest(source), "server", source)
        rest = self._rest()
        if not replace and self.store.exists(name):
            raise CollectionExistsError(
                f"collection {name!r} already exists on the {self.store.describe()}; pass "
                "--replace to overwrite it with the snapshot, or restore under another "
                "--collection"
            )
        notes = self._cluster_warnings(rest, "restore")
        with tempfile.TemporaryDirectory(prefix="dinoseek-restore-") as directory:
            staging = Path(directory) / "snapshot"
            manifest = extract_archive(source, staging, kind="server", max_bytes=max_bytes)
            probes = read_probe_files(staging, manifest.probes)
            rest.upload_snapshot(name, staging / SERVER_DATA_FILE)
        self._replace_probes(name, probes)
        points = self.store.collection_info(name).points
        checks = self._check_restored(name, manifest)
        if points != manifest.points:
            checks.append(
                f"the restored collection holds {points:,} points; the snapshot recorded "
                f"{manifest.points:,}"
            )
        for note in checks:
            log.warning("%s", note)
        return manifest.info(source, name, points=points, warnings=[*notes, *checks])

    def _rest(self) -> QdrantRest:
        if self._rest_override is not None:
            return self._rest_override
        return QdrantRest.from_client(self.store.client, description=self.store.describe())

    def _cluster_warnings(self, rest: QdrantRest, action: str) -> list[str]:
        """A warning when the server runs in distributed mode (see ``qdrant_rest``)."""
        try:
            enabled, peers = rest.cluster_enabled()
        except StoreError as exc:
            log.debug("cannot read the cluster status: %s", exc)
            return []
        if not enabled:
            return []
        scope = "holds only the shards stored on" if action == "snapshot" else "recovers only"
        note = (
            f"the {self.store.describe()} runs in distributed mode ({peers} peers): a "
            f"collection {action} {scope} the node it talks to, so it may be incomplete for a "
            f"cluster; back up every node with Qdrant's own snapshots: {SNAPSHOTS_DOCS}"
        )
        log.warning("%s", note)
        return [note]

    def _delete_remote_snapshot(self, rest: QdrantRest, collection: str, snapshot: str) -> None:
        try:
            rest.delete_snapshot(collection, snapshot)
        except StoreError as exc:
            log.warning(
                "could not delete the snapshot %s of %s on the %s (%s); delete it with "
                "DELETE /collections/%s/snapshots/%s",
                snapshot,
                collection,
                self.store.describe(),
                exc,
                collection,
                snapshot,
            )

    def _check_restored(self, name: str, manifest: SnapshotManifest) -> list[str]:
        """Warnings if the restored collection does not carry the snapshot's space."""
        try:
            space = self.store.collection_space(name)
        except CollectionMismatchError as exc:
            return [str(exc)]
        if (space.model_id, space.dim) != (manifest.space.model_id, manifest.space.dim):
            return [
                f"the restored collection records {space.model_id} ({space.dim}-d), the "
                f"snapshot's manifest {manifest.space.model_id} ({manifest.space.dim}-d)"
            ]
        return []

    def _replace_probes(self, collection: str, probes: Sequence[ProbeFile]) -> None:
        """Make the collection's probes exactly those of the snapshot."""
        keep = {p.name for p in probes}
        for stale in self.store.probes.list(collection):
            if stale.name not in keep:
                self.store.probes.delete(collection, stale.name)
        for probe in probes:
            self.store.probes.save(collection, probe.name, probe.data, probe.info)
