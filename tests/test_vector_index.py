"""How a new collection indexes its vectors (``VectorIndex``: HNSW parameters, int8
quantization), on the real embedded store, qdrant-client's in-process mode and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from dinoseek.settings import Settings
from dinoseek.space import EmbeddingSpace
from dinoseek.store import EdgeStore, PointRecord, SearchQuery, VectorIndex, point_id_for_sha256
from dinoseek.store.server import ServerStore
from tests.cli_runner import invoke
from tests.helpers import write_tree

DIM = 64


def space(dim: int = DIM) -> EmbeddingSpace:
    return EmbeddingSpace("test/model", dim, {}, (1.0,))


def clustered(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    rows = centres[rng.integers(0, 20, count)] + 0.6 * rng.standard_normal((count, dim))
    rows = rows.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def edge_config(data_dir: Path, name: str = "images") -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        (data_dir / name / "shard" / "edge_config.json").read_text()
    )
    return config["vectors"][""]


def test_a_new_collection_takes_the_index_it_is_given_and_keeps_it(tmp_path: Path) -> None:
    with EdgeStore(tmp_path, index=VectorIndex(32, 200, "int8")) as store:
        store.ensure_collection("images", space())
    vectors = edge_config(tmp_path)
    assert vectors["hnsw_config"]["m"] == 32
    assert vectors["hnsw_config"]["ef_construct"] == 200
    assert vectors["quantization_config"] == {
        "scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}
    }
    with EdgeStore(tmp_path) as store:  # opened later with the defaults: nothing changes
        store.ensure_collection("images", space())
        store.ensure_collection("plain", space())
    assert edge_config(tmp_path) == vectors
    plain = edge_config(tmp_path, "plain")
    assert plain["quantization_config"] == vectors["quantization_config"], "int8 by default"
    assert plain.get("hnsw_config") is None, "Qdrant's own HNSW defaults"
    with EdgeStore(tmp_path, index=VectorIndex(quantization="none")) as store:
        store.ensure_collection("floats", space())
    assert "quantization_config" not in edge_config(tmp_path, "floats")


def test_an_int8_collection_rescores_with_the_original_vectors(tmp_path: Path) -> None:
    # 4,000 x 768 floats: above Qdrant's full-scan threshold (10 MB), so the search goes
    # through the HNSW graph on the int8 copies, as on a real collection.
    data = clustered(4000, seed=0, dim=768)
    queries = clustered(30, seed=1, dim=768)
    with EdgeStore(tmp_path, index=VectorIndex(quantization="int8")) as store:
        store.ensure_collection("images", space(768))
        ids = [point_id_for_sha256(f"{i:064x}") for i in range(len(data))]
        store.upsert("images", [PointRecord(ids[i], data[i], {}) for i in range(len(data))])
        store.optimize("images")
        results = store.search("images", [SearchQuery(q, top_k=10) for q in queries])
    row_of = {point: row for row, point in enumerate(ids)}
    recall = []
    for query, hits in zip(queries, results, strict=True):
        exact = set(np.argsort(-(data @ query))[:10].tolist())
        found = [row_of[hit.id] for hit in hits]
        recall.append(len(exact & set(found)) / 10)
        for hit, row in zip(hits, found, strict=True):  # scores of the float32 vectors
            assert hit.score == pytest.approx(float(data[row] @ query), abs=1e-5)
    assert np.mean(recall) >= 0.95


def test_the_server_store_asks_the_server_for_the_same_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """qdrant-client's in-process mode accepts these settings but keeps Qdrant's defaults (it
    has no HNSW), so what is checked here is the request; a real server's answer is checked by
    test_qdrant_server.py."""

    def sent_for(index: VectorIndex | None) -> dict[str, Any]:
        client = QdrantClient(":memory:")
        sent: dict[str, Any] = {}
        create = client.create_collection

        def spy(name: str, **options: Any) -> bool:
            sent.update(options)
            return create(name, **options)

        monkeypatch.setattr(client, "create_collection", spy)
        with ServerStore(client, index=index) as store:
            store.ensure_collection("images", space())
        return sent

    sent = sent_for(VectorIndex(24, 150, "int8"))
    assert sent["hnsw_config"].m == 24
    assert sent["hnsw_config"].ef_construct == 150
    scalar = sent["quantization_config"].scalar
    assert (scalar.type.value, scalar.quantile, scalar.always_ram) == ("int8", 0.99, True)
    plain = sent_for(None)
    assert plain["hnsw_config"] is None
    assert plain["quantization_config"].scalar.type.value == "int8"  # the default
    assert sent_for(VectorIndex(quantization="none"))["quantization_config"] is None


def test_index_flags_and_variables_choose_the_index_of_a_new_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=2)
    monkeypatch.setenv("DINOSEEK_HNSW_M", "20")
    monkeypatch.setenv("DINOSEEK_QUANTIZATION", "none")
    first = invoke(
        "index", photos, "--model", "fake/dinov2", "--data-dir", tmp_path / "d",
        "--quantization", "int8", "--hnsw-ef-construct", "64",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    vectors = edge_config(tmp_path / "d")
    assert vectors["hnsw_config"]["m"] == 20  # the variable
    assert vectors["hnsw_config"]["ef_construct"] == 64  # the flag
    assert vectors["quantization_config"]["scalar"]["type"] == "int8"  # the flag over the variable
    again = invoke(
        "index", photos, "--data-dir", tmp_path / "d", "--quantization", "none", "--hnsw-m", "8"
    )
    assert again.exit_code == 0, again.output
    assert (
        "warning: --quantization and --hnsw-m apply to a new collection; 'images' keeps the "
        "index it was created with" in again.output
    )
    assert edge_config(tmp_path / "d") == vectors


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"quantization": "int4"}, "quantization"),
        ({"hnsw_m": 2}, "hnsw_m"),
        ({"hnsw_ef_construct": 5000}, "hnsw_ef_construct"),
        ({"hnsw_ef": 0}, "hnsw_ef"),
    ],
)
def test_bad_index_settings_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings(**fields)
    with pytest.raises(ValueError, match=problem):
        VectorIndex(**fields)


def payload_index_config(data_dir: Path) -> dict[str, Any]:
    (config,) = (data_dir / "images" / "shard" / "segments").glob("*/payload_index/config.json")
    fields: dict[str, Any] = json.loads(config.read_text())["indexed_fields"]
    return fields


def test_only_the_label_index_is_held_in_memory(tmp_path: Path) -> None:
    """The indexes of paths, hashes, roots and formats are read from disk; the label's, which
    searches filter on most, stays in memory with its HNSW links."""
    with EdgeStore(tmp_path) as store:
        store.ensure_collection("images", space())
    fields = payload_index_config(tmp_path)
    assert fields["label"] == "keyword"
    assert fields["paths"] == {"type": "keyword", "memory": "cold", "enable_hnsw": False}
    assert fields["sha256"] == {"type": "keyword", "memory": "cold", "enable_hnsw": False}
    assert fields["roots"] == {"type": "keyword", "memory": "cold", "enable_hnsw": True}
    assert fields["format"] == {"type": "keyword", "memory": "cold", "enable_hnsw": True}
