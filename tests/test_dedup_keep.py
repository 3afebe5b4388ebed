"""Which image of a group ``dinoseek dedup`` keeps (``dinoseek.dedup_keep``), and why.

The rule on its own with payloads made here, then the real CLI on the real embedded store
with the stand-in model: an original photo and a copy re-encoded at a lower quality under a
shorter path (the stand-in gives them a similarity above 0.999), their modification times
set with ``os.utime`` before indexing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dinoseek.dedup_keep import KeepRule, PointFacts, file_times
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.app import create_app
from tests.cli_runner import invoke, run_json
from tests.fakes import fake_model
from tests.helpers import encode, photo

DAY_NS = 86_400 * 10**9


def facts(point_id: str, **payload: object) -> PointFacts:
    """The facts of a payload, read as ``dinoseek dedup`` reads them."""
    return PointFacts.from_payload(point_id, {**payload, **file_times(payload)})


def file_entry(path: str, mtime_ns: int) -> dict[str, object]:
    return {"path": path, "mtime_ns": mtime_ns}


def test_quality_keeps_most_pixels_then_the_larger_file_then_the_oldest_then_the_path() -> None:
    rule = KeepRule()
    big = facts("b", path="/z/long/name.jpg", width=200, height=100, size=10)
    small = facts("a", path="/a.jpg", width=100, height=100, size=99_999)
    assert rule.choose([small, big]) == (1, "most pixels: 200x100 against 100x100")
    better = facts("c", path="/z/long/name.jpg", width=100, height=100, size=50_000)
    worse = facts("a", path="/a.jpg", width=100, height=100, size=20_000)
    assert rule.choose([worse, better]) == (
        1, "larger file: 50,000 bytes against 20,000 bytes"
    )  # fmt: skip
    older = facts("c", path="/z/long.jpg", width=1, height=1, size=5,
                  files=[file_entry("/z/long.jpg", 0)])  # fmt: skip
    newer = facts("a", path="/a.jpg", width=1, height=1, size=5,
                  files=[file_entry("/a.jpg", DAY_NS)])  # fmt: skip
    position, reason = rule.choose([newer, older])
    assert position == 1
    assert reason == "older file: 1970-01-01 00:00:00 UTC against 1970-01-02 00:00:00 UTC"
    quick_copy = facts("a", path="/a.jpg", width=1, height=1, size=5,
                       files=[file_entry("/a.jpg", 250_000_000)])  # fmt: skip
    assert rule.choose([quick_copy, older])[1] == (
        "older file: 1970-01-01 00:00:00.000000000 UTC against 1970-01-01 00:00:00.250000000 UTC"
    )
    same = {"width": 1, "height": 1, "size": 5, "files": [file_entry("/x", 7)]}
    assert rule.choose([facts("a", path="/long.jpg", **same), facts("b", path="/s.jpg", **same)])[
        1
    ] == "shorter path"  # fmt: skip
    assert rule.choose([facts("b", path="/a.jpg"), facts("a", path="/a.jpg")]) == (
        1, "identical by every rule: the smaller id"
    )  # fmt: skip


def test_unknown_facts_rank_last_and_other_rules_decide_first() -> None:
    """A payload without a fact (not written by the indexer) ranks last on it."""
    known = facts("b", path="/b/b.jpg", width=10, height=10, size=100,
                  files=[file_entry("/b/b.jpg", 5 * DAY_NS)])  # fmt: skip
    bare = facts("a", path="/a.jpg")
    assert KeepRule().choose([bare, known])[0] == 1
    assert KeepRule("oldest").choose([bare, known])[0] == 1
    assert KeepRule("newest").choose([bare, known])[0] == 1
    assert KeepRule("path").choose([known, bare]) == (1, "shorter path")
    old_small = facts("a", path="/o.jpg", width=1, height=1, files=[file_entry("/o.jpg", 0)])
    new_big = facts("b", path="/n.jpg", width=9, height=9, files=[file_entry("/n.jpg", DAY_NS)])
    assert KeepRule("oldest").choose([new_big, old_small])[0] == 1
    assert KeepRule("newest").choose([old_small, new_big])[0] == 1
    assert KeepRule("quality").choose([old_small, new_big])[0] == 1


def test_prefer_wins_over_every_rule_the_first_folder_first() -> None:
    rule = KeepRule("quality", ("/keep", "/also"))
    big = facts("a", path="/other/big.jpg", width=900, height=900)
    preferred = facts("b", path="/also/x.jpg", width=1, height=1)
    first = facts("c", path="/elsewhere.jpg", paths=["/elsewhere.jpg", "/keep/copy.jpg"],
                  width=1, height=1)  # fmt: skip
    assert rule.choose([big, preferred]) == (1, "under --prefer /also")
    assert rule.choose([big, preferred, first]) == (2, "under --prefer /keep")
    assert KeepRule("quality", ("/kee",)).choose([big, first])[0] == 0  # a prefix is no folder
    with pytest.raises(ValueError, match="keep rule"):
        KeepRule("largest")


# -- the command ---------------------------------------------------------------------------


@pytest.fixture
def camera_roll(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data dir, the original, its copy): the copy is a quality-55 re-encoding of the
    original, same pixels, under a shorter path, modified a day later; both indexed."""
    photos = tmp_path / "photos"
    original = photos / "camera-roll" / "summer" / "beach.jpg"
    copy = photos / "c" / "0.jpg"
    other = photos / "camera-roll" / "other.jpg"
    image = photo(7, (320, 240), kind="circles")
    for path, quality in ((original, 95), (copy, 55)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(image, quality=quality))
    other.write_bytes(encode(photo(8, (320, 240), kind="stripes"), quality=95))
    os.utime(original, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    os.utime(copy, ns=(1_600_000_000 * 10**9 + DAY_NS, 1_600_000_000 * 10**9 + DAY_NS))
    data = tmp_path / "data"
    indexed = invoke("index", photos, "--model", "fake/dinov2", "--data-dir", data, "-q")
    assert indexed.exit_code == 0, indexed.output
    return data, original, copy


def kept_and_marked(data: Path) -> dict[str, dict[str, object]]:
    with EdgeStore(data) as store:
        store.acquire("images")
        return {
            str(p.payload["path"]): p.payload
            for p in store.scroll("images")
            if "duplicate_role" in p.payload
        }


def test_dedup_keeps_the_original_not_the_degraded_copy(
    camera_roll: tuple[Path, Path, Path],
) -> None:
    data, original, copy = camera_roll
    assert original.stat().st_size > copy.stat().st_size
    report = run_json("dedup", "--data-dir", data, "--threshold", "0.99")
    (group,) = report["groups"]
    assert (group["keep"], group["duplicates"]) == (str(original), [str(copy)])
    size, copy_size = original.stat().st_size, copy.stat().st_size
    assert group["reason"] == f"larger file: {size:,} bytes against {copy_size:,} bytes"
    assert (report["keep_rule"], report["prefer"]) == ("quality", [])
    marks = kept_and_marked(data)
    assert marks[str(copy)]["duplicate_of"] == marks[str(original)]["duplicate_group"]
    assert marks[str(original)]["duplicate_reason"] == group["reason"]
    text = invoke("dedup", "--data-dir", data, "--threshold", "0.99")
    assert f"keep {original}  (larger file: {size:,} bytes" in text.output
    assert "kept by --keep quality" in text.output
    help_text = invoke("dedup", "--help").output
    assert "the larger file" in " ".join(help_text.split())


def test_a_rerun_with_another_rule_or_prefer_decides_every_group_again(
    camera_roll: tuple[Path, Path, Path],
) -> None:
    data, original, copy = camera_roll
    run_json("dedup", "--data-dir", data, "--threshold", "0.99")

    def rerun(*options: str) -> tuple[str, str, int]:
        report = run_json("dedup", "--data-dir", data, "--threshold", "0.99", *options)
        assert report["compared"] == 0  # the groups are trusted; their kept image is not
        (group,) = report["groups"]
        marks = kept_and_marked(data)
        assert marks[group["keep"]]["duplicate_role"] == "keep"
        assert marks[group["duplicates"][0]]["duplicate_of"] == group["keep_id"]
        assert marks[group["keep"]]["duplicate_reason"] == group["reason"]
        return group["keep"], group["reason"], report["written"]

    newest = rerun("--keep", "newest")
    assert newest[:2] == (str(copy), "newer file: 2020-09-14 12:26:40 UTC against "
                          "2020-09-13 12:26:40 UTC")  # fmt: skip
    assert newest[2] == 2  # the two members' marks changed: nothing else was written
    assert rerun("--keep", "oldest")[:2] == (
        str(original), "older file: 2020-09-13 12:26:40 UTC against 2020-09-14 12:26:40 UTC"
    )  # fmt: skip
    assert rerun("--keep", "path")[:2] == (str(copy), "shorter path")
    preferred = original.parent.parent
    assert rerun("--keep", "path", "--prefer", str(preferred))[:2] == (
        str(original), f"under --prefer {preferred}"
    )  # fmt: skip
    assert rerun("--keep", "path")[0] == str(copy)  # without --prefer: decided again
    with TestClient(
        create_app(
            Settings(model="fake/dinov2", data_dir=data),
            embedder=fake_model("fake/dinov2"),
            store=EdgeStore(data),
        )
    ) as client:
        (listed,) = client.get("/duplicates").json()["groups"]
    assert listed["keep"]["path"] == str(copy)
    assert listed["reason"] == "shorter path"


def test_a_prefer_folder_that_holds_nothing_is_refused(
    camera_roll: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, _, _ = camera_roll
    before = kept_and_marked(data)
    refused = invoke("dedup", "--data-dir", data, "--prefer", tmp_path / "typo")
    assert refused.exit_code == 2
    assert "no indexed file of the collection lies under it" in refused.output
    assert kept_and_marked(data) == before
    bad_rule = invoke("dedup", "--data-dir", data, "--keep", "largest")
    assert bad_rule.exit_code == 2
