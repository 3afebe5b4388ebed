"""Probes of the embedded store: two files per probe beside the collection's shard.

``DATA_DIR/COLLECTION/probes/NAME.safetensors`` holds the probe, ``NAME.json`` its info (the
training report). Each file is replaced atomically, the info last, so reading or replacing a
probe needs no lock, even while another process holds the collection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dinoseek.errors import CollectionNotFoundError, ProbeNotFoundError
from dinoseek.messages import short_list
from dinoseek.settings import validate_collection_name
from dinoseek.store.files import write_bytes_atomic, write_json_atomic
from dinoseek.store.records import StoredProbe

log = logging.getLogger(__name__)

PROBES_DIR = "probes"
METADATA_FILE = "collection.json"


class EdgeProbes:
    """``ProbeStore`` on files under the data directory."""

    def __init__(self, data_dir: Path, not_found: Callable[[str], str]) -> None:
        """``not_found(collection)`` is the message of a missing collection."""
        self.data_dir = data_dir
        self._not_found = not_found

    def save(self, collection: str, name: str, data: bytes, info: Mapping[str, Any]) -> None:
        """Written as two files, each replaced atomically (the info last)."""
        directory = self._directory(collection)
        directory.mkdir(exist_ok=True)
        name = validate_collection_name(name, kind="probe")
        write_bytes_atomic(directory / f"{name}.safetensors", data)
        write_json_atomic(directory / f"{name}.json", info)

    def list(self, collection: str) -> list[StoredProbe]:
        """Probes whose info and data are both present."""
        probes = []
        for info_path in sorted(self._directory(collection).glob("*.json")):
            if not info_path.with_suffix(".safetensors").exists():
                continue
            try:
                info = json.loads(info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("skipping unreadable probe info %s", info_path)
                continue
            probes.append(StoredProbe(name=info_path.stem, info=info))
        return probes

    def load(self, collection: str, name: str) -> bytes:
        """The probe's safetensors bytes."""
        path = self._path(collection, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ProbeNotFoundError(self._missing(collection, name)) from None

    def delete(self, collection: str, name: str) -> None:
        """Remove both files."""
        path = self._path(collection, name)
        if not path.exists():
            raise ProbeNotFoundError(self._missing(collection, name))
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def _directory(self, collection: str) -> Path:
        directory = self.data_dir / validate_collection_name(collection)
        if not (directory / METADATA_FILE).exists():
            raise CollectionNotFoundError(self._not_found(collection))
        return directory / PROBES_DIR

    def _path(self, collection: str, name: str) -> Path:
        name = validate_collection_name(name, kind="probe")
        return self._directory(collection) / f"{name}.safetensors"

    def _missing(self, collection: str, name: str) -> str:
        names = short_list(p.name for p in self.list(collection))
        return (
            f"no probe {name!r} for collection {collection!r} (existing: {names}); "
            "train one with `dinoseek probe train`"
        )
