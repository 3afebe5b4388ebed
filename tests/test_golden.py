"""Golden values of what dinoseek persists. A change here re-keys or orphans every existing
collection, snapshot or marked payload: it must be deliberate, with a migration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner

from dinoseek.space import EmbeddingSpace
from dinoseek.store import EdgeStore, point_id_for_sha256
from dinoseek.store.archive import FORMAT, FORMAT_VERSION, MANIFEST_NAME, SnapshotManifest
from dinoseek_cli.main import main
from tests.fakes import FAKE_LOADER
from tests.helpers import encode, photo


def test_point_ids_are_uuid5_of_the_content_hash_in_dinoseeks_namespace() -> None:
    sha256 = hashlib.sha256(b"dinoseek golden file\n").hexdigest()
    assert sha256 == "9e21953292826c358f8b892d9dd7f563d5b87bc2ce6f9a0347d6483bea985686"
    assert point_id_for_sha256(sha256) == "df681814-205f-5f02-abb8-80374cbb6181"
    assert point_id_for_sha256(sha256.upper()) == "df681814-205f-5f02-abb8-80374cbb6181"


def test_the_indexer_keys_a_file_by_its_bytes(tmp_path: Path) -> None:
    """The chain from a file to its id: sha256 of its bytes, then the golden function above."""
    folder = tmp_path / "photos"
    folder.mkdir()
    data = encode(photo(7))
    (folder / "a.jpg").write_bytes(data)
    result = CliRunner().invoke(
        main,
        ["index", str(folder), "--model", "fake/dinov2", "--data-dir", str(tmp_path / "d")],
        obj=FAKE_LOADER,
    )
    assert result.exit_code == 0, result.output
    with EdgeStore(tmp_path / "d") as store:
        store.acquire("images")
        (point,) = list(store.scroll("images"))
    assert point.id == point_id_for_sha256(hashlib.sha256(data).hexdigest())
    assert point.payload["sha256"] == hashlib.sha256(data).hexdigest()


def test_the_collection_metadata_keys() -> None:
    space = EmbeddingSpace("facebook/dinov2-base", 768, {"crop": [224, 224]}, (0.123456789,))
    assert space.to_metadata() == {
        "model_id": "facebook/dinov2-base",
        "dim": 768,
        "preprocessing": {"crop": [224, 224]},
        "fingerprint": [0.12346],
    }
    assert EmbeddingSpace.from_metadata(space.to_metadata()) == space


def test_the_snapshot_manifest_format() -> None:
    assert (FORMAT, FORMAT_VERSION, MANIFEST_NAME) == (
        "dinoseek-snapshot",
        1,
        "dinoseek-snapshot.json",
    )
    space = EmbeddingSpace("m", 2, {}, (1.0, 0.0))
    manifest = SnapshotManifest(
        kind="edge", collection="images", space=space, points=3, created_at="2026-12-01T00:00:00Z"
    )
    document = json.loads(manifest.to_json())
    assert set(document) == {
        "format",
        "format_version",
        "kind",
        "collection",
        "space",
        "points",
        "probes",
        "created_at",
        "dinoseek_version",
        "files",
    }
    assert document["format_version"] == 1
    assert SnapshotManifest.from_json(manifest.to_json(), Path("golden")) == manifest


def test_the_snapshot_json_document_keys() -> None:
    """What ``dinoseek snapshot create|restore --json`` prints: scripts read these keys."""
    from dinoseek.store.records import SnapshotInfo

    info = SnapshotInfo(
        path=Path("/backups/images.tar"), collection="copy", source_collection="images",
        kind="edge", points=3, size_bytes=4096, created_at="2026-12-01T00:00:00+00:00",
        model_id="facebook/dinov2-base", dim=768, probes=("default",), format_version=1,
        warnings=("w",),
    )  # fmt: skip
    assert info.to_dict() == {
        "path": "/backups/images.tar", "collection": "copy", "source_collection": "images",
        "kind": "edge", "points": 3, "size_bytes": 4096,
        "created_at": "2026-12-01T00:00:00+00:00", "model_id": "facebook/dinov2-base",
        "dim": 768, "probes": ["default"], "format_version": 1, "warnings": ["w"],
    }  # fmt: skip


def test_an_invalid_point_id_is_named_in_its_error() -> None:
    import pytest

    from dinoseek.errors import InvalidPointIdError
    from dinoseek.store.records import validate_point_id

    with pytest.raises(InvalidPointIdError) as refused:
        validate_point_id("../etc")
    assert refused.value.message == (
        "'../etc' is not a point id (point ids are UUIDs, as returned by search)"
    )
    upper = "DF681814-205F-5F02-ABB8-80374CBB6181"
    assert validate_point_id(upper) == "df681814-205f-5f02-abb8-80374cbb6181"
