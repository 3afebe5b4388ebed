"""``dinoseek dedup``'s tiers and method, through the real CLI and the real embedded store
with the stand-in model (a resized or re-encoded copy is above 0.999 to its source, distinct
test images at most ~0.9):

- ``near``: a family of a dozen copies of one photo is one group, whichever method runs;
- identical pixels in three formats are one group at ``--threshold 1``;
- ``exact``: one content at two paths is one point, listed with its paths;
- ``similar``: pairs between ``--similar`` and ``--threshold``, listed, never marked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinoseek.store import EdgeStore
from tests.cli_runner import invoke, run_json
from tests.helpers import encode, photo, write_tree
from tests.test_dedup import copy_of


@pytest.fixture
def family(tmp_path: Path) -> tuple[Path, Path, list[Path], list[Path]]:
    """(data dir, the photo, its eleven copies, other photos), indexed."""
    photos = tmp_path / "photos"
    others = write_tree(photos, per_class=4, classes=("cats", "dogs"))
    source = photos / "family" / "original.jpg"
    source.parent.mkdir(parents=True)
    source.write_bytes(encode(photo(11, (320, 240), kind="stripes"), quality=95))
    copies = [
        copy_of(source, photos / "family" / f"copy_{n:02d}.jpg", quality=q, scale=s)
        for n, (q, s) in enumerate(
            [(q, s) for s in (0.5, 0.7, 0.9, 1.0) for q in (50, 70, 90)][:11]
        )
    ]
    data = tmp_path / "data"
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data, "-q")
    assert indexed.exit_code == 0, indexed.output
    return data, source, copies, others


@pytest.mark.parametrize("method", ["exact", "clusters"])
def test_a_family_of_a_dozen_copies_is_one_group(
    family: tuple[Path, Path, list[Path], list[Path]], method: str
) -> None:
    data, source, copies, _ = family
    report = run_json("dedup", "--data-dir", data, "--method", method)
    assert report["method"]["name"] == method
    groups = {group["keep"]: sorted(group["duplicates"]) for group in report["groups"]}
    assert groups == {str(source): sorted(str(c) for c in copies)}  # most pixels: the source
    assert report["duplicates"] == 11
    assert len(report["groups"][0]["scores"]) == 11


def test_the_method_is_stated_with_its_parameters(
    family: tuple[Path, Path, list[Path], list[Path]],
) -> None:
    data, _, _, _ = family
    auto = run_json("dedup", "--data-dir", data)
    points = auto["points"]
    assert auto["method"] == {
        "name": "exact",
        "reason": f"auto: {points * (points - 1) // 2:,} similarities, at most 200,000,000 "
        "on a CPU",
    }
    assert auto["comparisons"] == points * (points - 1) // 2
    clustered = run_json("dedup", "--data-dir", data, "--method", "clusters", "--similar", "0.5")
    assert clustered["method"]["reason"] == "asked for"
    assert set(clustered["method"]["parameters"]) == {
        "clusters", "margin", "min_probes", "max_probes", "sample", "iterations", "seed"
    }  # fmt: skip
    assert clustered["comparisons"] < points * points
    text = invoke("dedup", "--data-dir", data, "--method", "clusters", "--similar", "0.5")
    assert text.exit_code == 0, text.output
    assert "method: clusters (asked for): k-means of" in text.output


def test_identical_pixels_in_three_formats_are_one_group_at_threshold_one(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "formats"
    folder.mkdir()
    for n in range(12):
        image = photo(100 + n, (96, 72), kind="circles")
        for fmt in ("PNG", "BMP", "TIFF"):
            (folder / f"image{n}.{fmt.lower()}").write_bytes(encode(image, fmt))
    data = tmp_path / "data"
    assert invoke("index", folder, "--model", "fake/dinov2", "--data-dir", data).exit_code == 0
    with EdgeStore(data) as store:
        store.acquire("images")
        vectors = [p.vector for p in store.scroll("images", with_vectors=True)]
    # Some vector's float32 product with itself falls below 1: rounding must not matter.
    assert any(np.einsum("i,i->", v, v) < 1.0 for v in vectors if v is not None)
    report = run_json("dedup", "--data-dir", data, "--threshold", "1")
    groups = sorted(sorted(Path(p).name for p in [g["keep"], *g["duplicates"]])
                    for g in report["groups"])  # fmt: skip
    assert groups == sorted([f"image{n}.bmp", f"image{n}.png", f"image{n}.tiff"] for n in range(12))
    assert all(score == 1.0 for g in report["groups"] for score in g["scores"])


def test_one_content_at_two_paths_is_listed_as_exact(
    family: tuple[Path, Path, list[Path], list[Path]], tmp_path: Path
) -> None:
    data, _, _, others = family
    twin = tmp_path / "photos" / "elsewhere" / "same_bytes.jpg"
    twin.parent.mkdir()
    shutil.copyfile(others[0], twin)
    assert invoke("index", tmp_path / "photos", "--data-dir", data, "-q").exit_code == 0
    report = run_json("dedup", "--data-dir", data)
    assert [entry["paths"] for entry in report["exact"]] == [sorted([str(others[0]), str(twin)])]
    text = invoke("dedup", "--data-dir", data)
    assert "exact copies (one point, several files): 1 points" in text.output
    assert f"same content: {'  =  '.join(sorted([str(others[0]), str(twin)]))}" in text.output


def test_similar_pairs_are_listed_and_never_marked(
    family: tuple[Path, Path, list[Path], list[Path]],
) -> None:
    data, source, copies, _ = family
    near = run_json("dedup", "--data-dir", data)
    report = run_json("dedup", "--data-dir", data, "--similar", "0.6")
    assert report["compared"] == report["points"]  # not stored: every point compared again
    assert report["groups"] == near["groups"]
    assert report["similar"], "the distinct test images are 0.6 to 0.9 alike"
    family_paths = {str(source), *map(str, copies)}
    for pair in report["similar"]:
        assert 0.6 <= pair["score"] < 0.95
        assert not set(pair["paths"]) <= family_paths  # one group is not listed with itself
    scores = [pair["score"] for pair in report["similar"]]
    assert scores == sorted(scores, reverse=True)
    with EdgeStore(data) as store:
        store.acquire("images")
        points = list(store.scroll("images"))
    marked = {p.payload["path"] for p in points if "duplicate_role" in p.payload}
    assert marked == family_paths
    refused = invoke("dedup", "--data-dir", data, "--similar", "0.97")
    assert refused.exit_code != 0
    assert "--similar 0.97 must be below --threshold 0.95" in refused.output


def test_copies_sharing_no_pixels_with_formats_are_not_mixed(tmp_path: Path) -> None:
    """A palette PNG and an RGB PNG of other pictures stay apart at threshold 1."""
    folder = tmp_path / "two"
    folder.mkdir()
    photo(1, (64, 48)).save(folder / "a.png")
    photo(2, (64, 48)).convert("P").save(folder / "b.png")
    Image.open(folder / "b.png").convert("RGB").save(folder / "c.png")
    data = tmp_path / "data"
    assert invoke("index", folder, "--model", "fake/dinov2", "--data-dir", data).exit_code == 0
    report = run_json("dedup", "--data-dir", data, "--threshold", "1")
    assert [sorted(Path(p).name for p in [g["keep"], *g["duplicates"]])
            for g in report["groups"]] == [["b.png", "c.png"]]  # fmt: skip
