"""The README and the pages under docs/ hold together (issue 26: docs a newcomer can walk):
every relative link and image points at a file that exists, every `#anchor` at a heading of
the page it names, every docs page is in the README's index, and CI runs the README's test
command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("code", line))
    return lines


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    to hyphens, a repeated one numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = HEADING.match(line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(2).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """The link and image targets of a page that are not URLs."""
    targets = [
        match.group(1) for line in prose_lines(path.read_text()) for match in LINK.finditer(line)
    ]
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def broken_links(path: Path) -> list[str]:
    """Each relative link of a page whose file or anchor does not exist, with the reason."""
    broken: list[str] = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert relative_links(page) or page.name == "mutation-log.md", f"{page.name} links nowhere"
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Scale out: `--engine ray`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#scale-out---engine-ray) [ok](#page) `[code](nowhere.md)`\n"
        "[no file](missing.md) [no anchor](other.md#scale-out) ![no image](pic.png)\n"
        "```\n[in a code block](nowhere.md)\n```\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#scale-out: no heading with anchor #scale-out in other.md",
        f"pic.png: no file {tmp_path / 'pic.png'}",
    ]


def test_the_readme_indexes_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    assert [page.name for page in PAGES if page not in linked] == []


def test_each_docs_page_links_back_to_the_readme_first() -> None:
    for page in PAGES:
        if page.name == "mutation-log.md":
            continue
        first_paragraph = page.read_text().split("\n\n")[1]
        assert "](../README.md" in first_paragraph, f"{page.name} does not start with it"


def test_ci_runs_the_readme_test_command() -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```sh\n(.*?)```", quick_start, re.S)
    assert commands, "the Quick start has no sh block"
    test_command = [
        line.split("#")[0].strip()
        for line in commands.group(1).splitlines()
        if line.startswith("make test")
    ]
    assert test_command, "the Quick start shows no test command"
    assert test_command[0] in (ROOT / ".ci" / "run").read_text().splitlines()
