"""A saved catalog (``DATA_DIR/catalogs/*.npz``) written to hurt: metadata of another JSON
type or with rows of other types once made every ``dinoseek index`` crash until the file was
deleted, and a 1 MB file whose metadata inflated to 1 GiB took the indexer to 2.4 GB. A copy
that is not what the writer makes costs only time: the run reads the payloads, in bounded
memory. The real embedded store and the real index run, with the stand-in model."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.store import EdgeStore
from indexer.catalog import Catalog, FileEntry, PointEntry
from indexer.catalog_cache import catalog_cache_path, load_catalog, save_catalog
from tests.helpers import write_tree
from tests.test_catalog_cache import TOKEN, content, described, run

REPO = Path(__file__).parents[2]
BOMB_BYTES = 256 * 1024 * 1024  # what the metadata inflates to
MEMORY_BOUND = 64 * 1024 * 1024  # what reading such a copy may add to the peak


def columns(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as saved:
        return dict(saved)


def with_meta(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """A damage: the copy's metadata replaced by ``change(metadata)``, as JSON, its token kept
    (so that the old reader went on with it)."""

    def damage(path: Path) -> None:
        arrays = columns(path)
        meta = json.loads(bytes(arrays["meta"]))
        arrays["meta"] = np.frombuffer(json.dumps(change(meta)).encode(), dtype=np.uint8)
        np.savez(path, **arrays)  # type: ignore[arg-type]

    return damage


def nested_meta(path: Path) -> None:
    """Metadata nested deeper than the JSON parser's recursion (a crash, not a ValueError)."""
    arrays = columns(path)
    arrays["meta"] = np.frombuffer(b"[" * 200_000, dtype=np.uint8)
    np.savez(path, **arrays)  # type: ignore[arg-type]


def inflating_meta(path: Path) -> None:
    """The copy's own metadata (its token right), then ``BOMB_BYTES`` of JSON whitespace,
    deflated: a file of well under 1 MB."""
    arrays = columns(path)
    meta = bytes(arrays.pop("meta"))
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)
        info = zipfile.ZipInfo("meta.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            header = {"descr": "|u1", "fortran_order": False, "shape": (len(meta) + BOMB_BYTES,)}
            np.lib.format.write_array_header_1_0(member, header)
            member.write(meta)
            padding = b" " * (1024 * 1024)
            for _ in range(BOMB_BYTES // len(padding)):
                member.write(padding)
    assert path.stat().st_size < 1024 * 1024


def irregular(*points: Any) -> Callable[[Path], None]:
    return with_meta(lambda meta: {**meta, "irregular": list(points)})


ROW = ["/r/x.jpg", "/r", "x.jpg", 10, 5, None]
DAMAGES: dict[str, Callable[[Path], None]] = {
    "meta-a-list": with_meta(lambda meta: [meta]),
    "meta-a-string": with_meta(lambda meta: "dinoseek-catalog"),
    "meta-a-number": with_meta(lambda meta: 1),
    "meta-null": with_meta(lambda meta: None),
    "strings-not-texts": with_meta(lambda meta: {**meta, "strings": list(range(10))}),
    "content-a-list": irregular(["id-x", [ROW], ["sha256"]]),
    "id-a-number": irregular([7, [ROW], {}]),
    "row-a-string": irregular(["id-x", ["abcdef"], {}]),
    "size-a-string": irregular(["id-x", [[*ROW[:3], "10", *ROW[4:]]], {}]),
    "row-too-short": irregular(["id-x", [ROW[:5]], {}]),
    "nested-meta": nested_meta,
    "inflating-meta": inflating_meta,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_an_unexpected_copy_costs_only_time(
    embedder: ImageEmbedder, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=3, classes=("cats", "dogs"))
    first, _, _ = run(embedder, data, photos)
    DAMAGES[damage](catalog_cache_path(data, "images"))
    with caplog.at_level(logging.WARNING):
        summary, from_store, copy = run(embedder, data, photos)
    assert summary.catalog_source == "store"
    assert (summary.unchanged, summary.embedded, summary.removed) == (first.embedded, 0, 0)
    assert "ignoring the saved catalog" in caplog.text
    assert copy == from_store  # and the run saved a good copy again
    assert run(embedder, data, photos)[0].catalog_source == "saved copy"


@pytest.mark.parametrize("label", [["a", "list"], {"a": 1}], ids=repr)
def test_a_label_of_any_json_type_saves_and_reads_back(label: Any, tmp_path: Path) -> None:
    """A payload written by hand can hold anything where the indexer writes a label; a list
    once made saving the copy raise at the end of a run."""
    entry = FileEntry("/r/a.jpg", "/r", "a.jpg", 10, 5, label)
    catalog = Catalog([PointEntry("id-1", {entry.path: entry}, content("aa"))])
    path = tmp_path / "c.npz"
    save_catalog(path, TOKEN, catalog)
    loaded = load_catalog(path, TOKEN)
    assert loaded is not None
    assert described(loaded) == described(catalog)


MEASURE = """
import json, sys
from pathlib import Path
from indexer.catalog_cache import load_catalog

def peak() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

before = peak()
loaded = load_catalog(Path(sys.argv[1]), sys.argv[2])
print(json.dumps({"grew": peak() - before, "used": loaded is not None}))
"""


@pytest.mark.slow
def test_a_copy_that_inflates_is_refused_before_it_is_inflated(
    embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """The peak resident memory of a process reading the copy (VmHWM: its own, not the
    parent's it was forked from)."""
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_tree(photos, per_class=2, classes=("cats",))
    run(embedder, data, photos)
    with EdgeStore(data) as store:
        store.acquire("images")
        token = store.state_token("images")
    assert token is not None
    path = catalog_cache_path(data, "images")
    inflating_meta(path)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), token],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    measured = json.loads(result.stdout)
    assert not measured["used"]
    assert measured["grew"] < MEMORY_BOUND, measured
