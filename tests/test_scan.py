"""Scanning folders: extensions, default and user excludes, symlinks and cycles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dinoseek.scan import ScanCounts, ScannedFile, ScanOptions, ScanProblem, scan


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def scanned_paths(root: Path, options: ScanOptions | None = None) -> list[str]:
    items = list(scan([root], options or ScanOptions()))
    return [item.relative_path for item in items if isinstance(item, ScannedFile)]


def test_picks_images_by_extension_case_insensitively(tmp_path: Path) -> None:
    for name in (
        "a.jpg",
        "b.JPEG",
        "c.png",
        "d.webp",
        "e.gif",
        "f.bmp",
        "g.TIF",
        "h.txt",
        "i.mp4",
        "noext",
    ):
        touch(tmp_path / name)
    assert scanned_paths(tmp_path) == [
        "a.jpg",
        "b.JPEG",
        "c.png",
        "d.webp",
        "e.gif",
        "f.bmp",
        "g.TIF",
    ]


def test_records_size_mtime_and_root(tmp_path: Path) -> None:
    path = touch(tmp_path / "sub" / "a.jpg", b"12345")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    (item,) = list(scan([tmp_path], ScanOptions()))
    assert isinstance(item, ScannedFile)
    assert item.path == str(path)
    assert item.root == str(tmp_path)
    assert item.relative_path == "sub/a.jpg"
    assert (item.size, item.mtime_ns) == (5, 2_000_000_000)


def test_default_excludes(tmp_path: Path) -> None:
    for folder in (".git", ".cache", "node_modules", "@eaDir", "thumbnails", "photos"):
        touch(tmp_path / folder / "a.jpg")
    touch(tmp_path / ".hidden.jpg")
    counts = ScanCounts()
    items = [i for i in scan([tmp_path], ScanOptions(), counts) if isinstance(i, ScannedFile)]
    assert [i.relative_path for i in items] == ["photos/a.jpg"]
    assert counts.excluded == 6
    everything = scanned_paths(tmp_path, ScanOptions(excludes=()))
    assert len(everything) == 7


def test_user_excludes_match_names_and_relative_paths(tmp_path: Path) -> None:
    touch(tmp_path / "keep" / "a.jpg")
    touch(tmp_path / "raw" / "b.jpg")
    touch(tmp_path / "keep" / "draft_c.jpg")
    touch(tmp_path / "x" / "y" / "d.jpg")
    options = ScanOptions(excludes=("raw", "draft_*", "x/y"))
    assert scanned_paths(tmp_path, options) == ["keep/a.jpg"]


def test_symlinks_are_skipped_unless_followed_and_cycles_are_cut(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "o.jpg")
    root = tmp_path / "root"
    touch(root / "a.jpg")
    (root / "link_dir").symlink_to(outside, target_is_directory=True)
    (root / "link_file.jpg").symlink_to(root / "a.jpg")
    (root / "loop").symlink_to(root, target_is_directory=True)
    counts = ScanCounts()
    items = [i for i in scan([root], ScanOptions(), counts) if isinstance(i, ScannedFile)]
    assert [i.relative_path for i in items] == ["a.jpg"]
    assert counts.links_skipped == 3
    followed = scanned_paths(root, ScanOptions(follow_links=True))
    assert sorted(followed) == ["a.jpg", "link_dir/o.jpg", "link_file.jpg"]


def test_skip_dirs_keeps_the_store_out(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "dinoseek-data" / "thumb.jpg")
    options = ScanOptions(skip_dirs=(tmp_path / "dinoseek-data",))
    assert scanned_paths(tmp_path, options) == ["a.jpg"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_unreadable_folder_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    touch(tmp_path / "ok" / "a.jpg")
    locked = tmp_path / "locked"
    touch(locked / "b.jpg")
    locked.chmod(0)
    try:
        items = list(scan([tmp_path], ScanOptions()))
    finally:
        locked.chmod(0o755)
    problems = [i for i in items if isinstance(i, ScanProblem)]
    assert [p.path for p in problems] == [locked]
    assert [i.relative_path for i in items if isinstance(i, ScannedFile)] == ["ok/a.jpg"]


def test_the_folder_commands_list_what_index_lists(tmp_path: Path) -> None:
    """`dedup --against`, `adapt` and `curate --reference` read a folder through
    ``image_files``: the same files as `dinoseek index` there, excludes and links alike."""
    from dinoseek.folder_vectors import image_files

    for name in ("a.jpg", "sub/d.png", ".hidden/b.jpg", "node_modules/c.png", "notes.txt"):
        touch(tmp_path / name)
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    listed = [str(path.relative_to(tmp_path)) for path in image_files(tmp_path)]
    assert listed == sorted(scanned_paths(tmp_path))
    assert listed == ["a.jpg", "sub/d.png"]
