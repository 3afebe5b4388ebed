"""Labelling in a real browser (Debian's Chromium, Playwright) against a real ``dinoseek serve
--allow-writes`` (the tiny DINOv2) on an unlabelled folder of three kinds of images: browse
by clusters, label four images of each kind, train the probe from the page, and see the
others get the right predicted label.

The tiny DINOv2 has random weights, so the three kinds differ by their colours (sunsets,
forests, seas), which any image model tells apart; with real weights, kinds that differ by
their content work the same way. Each state is saved as a screenshot under
``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter
from playwright.sync_api import Browser, Page

from dinoseek_cli.main import main
from tests.browser.test_page import REPO, browser, screenshot, stop, watched_page
from tests.live_server import free_port

__all__ = ["browser"]  # the fixture
pytestmark = [pytest.mark.browser, pytest.mark.model, pytest.mark.slow]

KINDS = {"sunsets": (230, 110, 40), "forests": (40, 140, 50), "seas": (30, 90, 200)}
PER_KIND = 12
LABELLED_PER_KIND = 4
HANG_S = 240  # a hang detector, not a speed limit


def kind_picture(kind: str, seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A picture of one kind: blobs in shades of the kind's colour."""
    rng = random.Random(seed)
    base = KINDS[kind]

    def shade() -> tuple[int, ...]:
        return tuple(max(0, min(255, value + rng.randrange(-40, 40))) for value in base)

    image = Image.new("RGB", size, shade())
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(rng.randrange(3, 7)):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(10, 40)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade())
    return image.filter(ImageFilter.GaussianBlur(1))


def kind_of(path: str) -> str:
    return Path(path).parent.name


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    """36 unlabelled images indexed (no --labels-from-folders), served with --allow-writes on
    127.0.0.1."""
    root = tmp_path_factory.mktemp("labelling")
    for kind in KINDS:
        (root / "photos" / kind).mkdir(parents=True)
        for index in range(PER_KIND):
            picture = kind_picture(kind, seed=zlib.crc32(f"{kind}/{index}".encode()))
            picture.save(root / "photos" / kind / f"{kind}_{index:02d}.jpg", quality=90)
    indexed = CliRunner().invoke(
        main,
        ["index", str(root / "photos"), "--model", str(tiny_model_dir), "--data-dir",
         str(root / "data"), "--workers", "0", "-q"],
    )  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dinoseek_cli", "serve", "--port", str(port), "--allow-writes",
         "--data-dir", str(root / "data"), "--model", str(tiny_model_dir), "-q"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "DINOSEEK_API_KEY": ""},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the server did not start:\n{process.stdout.read()}")  # type: ignore[union-attr]
        time.sleep(0.2)
    try:
        yield Served(url, process)
    finally:
        stop(process)


def card_paths(page: Page) -> list[str]:
    return [e.inner_text() for e in page.query_selector_all("#view .card .path")]


def wait_for_heading(page: Page, text: str) -> None:
    """Until the view shown is the one with this heading (the last view's nodes are gone)."""
    page.wait_for_function(
        "text => (document.querySelector('#view h2') || {}).textContent?.startsWith(text)",
        arg=text,
    )


def open_cluster(page: Page, index: int) -> list[str]:
    """Open the index-th top-level cluster; the paths of its images."""
    page.click(f"#view .cluster:nth-child({index + 1}) .cluster-open")
    page.wait_for_url("**view=cluster&**")
    wait_for_heading(page, f"Cluster {index + 1}:")
    page.wait_for_function("() => document.querySelectorAll('#view .card .pick input').length > 0")
    return card_paths(page)


def test_browse_by_clusters_label_train_and_see_the_predictions(
    browser: Browser, served: Served
) -> None:
    opened = watched_page(browser)
    opened.page.context.set_default_timeout(HANG_S * 1000)
    page = opened.page
    try:
        flow(page, served)
    finally:
        page.context.close()
    assert opened.errors == [], "the page threw"
    assert opened.dialogs == []


def flow(page: Page, served: Served) -> None:
    # 1. The collection by clusters: the first computation answers 202, the page waits.
    page.goto(f"{served.url}/")
    page.wait_for_selector("#train-status:has-text('No probe yet')")
    page.click("#clusters")
    page.wait_for_url("**view=clusters**")
    wait_for_heading(page, "The collection by clusters")
    tiles = page.query_selector_all("#view .cluster")
    assert len(tiles) == 3
    sizes = [t.query_selector(".cluster-size").inner_text() for t in tiles]  # type: ignore[union-attr]
    counts = [int(found.group(1)) for s in sizes if (found := re.match(r"(\d+) images", s))]
    assert len(counts) == 3
    assert sum(counts) == 3 * PER_KIND
    page.wait_for_function(
        "() => [...document.querySelectorAll('#view .mosaic img')].every(i => i.complete"
        " && i.naturalWidth > 0)"
    )
    screenshot(page, "labelling-1-clusters")

    # 2. In each cluster, four images of its kind: a click, then a shift-click three cards on.
    labelled: set[str] = set()
    for index in range(3):
        paths = open_cluster(page, index)
        kinds = [kind_of(p) for p in paths]
        kind = max(set(kinds), key=kinds.count)
        assert kinds.count(kind) >= LABELLED_PER_KIND
        first = kinds.index(kind)
        if kinds[first : first + LABELLED_PER_KIND] == [kind] * LABELLED_PER_KIND:
            page.click(f"#view .card:nth-child({first + 1}) .pick input")
            last = first + LABELLED_PER_KIND
            page.click(f"#view .card:nth-child({last}) .pick input", modifiers=["Shift"])
        else:  # the kind's cards are not side by side: one click each
            picked = [i for i, k in enumerate(kinds) if k == kind][:LABELLED_PER_KIND]
            for position in picked:
                page.click(f"#view .card:nth-child({position + 1}) .pick input")
        page.wait_for_selector("#selection-count:text-is('4 images selected')")
        chosen = page.eval_on_selector_all(
            "#view .card.selected .path-text", "found => found.map(e => e.textContent)"
        )
        assert [kind_of(p) for p in chosen] == [kind] * LABELLED_PER_KIND
        page.fill("#label-text", kind)
        if index == 0:
            screenshot(page, "labelling-2-selected")
        page.click("#label-bar button[type=submit]")
        page.wait_for_selector(f"#message.info:has-text('4 images labelled “{kind}”')")
        tags = page.eval_on_selector_all(
            "#view .card .label-tag", "found => found.map(e => e.textContent)"
        )
        assert tags == [kind] * LABELLED_PER_KIND
        assert page.is_hidden("#label-bar")
        labelled.update(chosen)
        if index == 0:
            # A whole cluster can be selected too (not applied here).
            page.click("#view .select-cluster")
            page.wait_for_selector("#selection-count:has-text('selected: 12 images')")
            page.click("#clear-selection")
            page.wait_for_selector("#label-bar", state="hidden")
        page.click("#view .cluster-tools button")  # All clusters
        page.wait_for_url("**view=clusters**")
        wait_for_heading(page, "The collection by clusters")
    assert len(labelled) == 3 * LABELLED_PER_KIND

    # 3. Train from the page (3 labelled per class at least; four given).
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#train-status.good")
    report = page.inner_text("#probe-report")
    assert "Held-out accuracy" in report
    assert "on 3 labelled images kept out of training" in report  # one of each class's four
    assert "trained on 9 labelled images of 3 classes" in report
    assert "24 unlabelled images were not used" in report
    screenshot(page, "labelling-3-trained")

    # 4. The unlabelled images, each with the probe's label.
    page.check("#unlabelled")
    page.wait_for_url("**unlabelled=1**")
    page.wait_for_function(
        "() => document.querySelectorAll('#view .card').length === 24 && "
        "document.querySelectorAll('#view .card .predicted-tag').length === 24"
    )
    cards = page.query_selector_all("#view .card")
    right = 0
    for card in cards:
        path = card.query_selector(".path-text").inner_text()  # type: ignore[union-attr]
        assert path not in labelled
        assert card.query_selector(".label-tag") is None
        predicted = card.query_selector(".predicted-tag").inner_text()  # type: ignore[union-attr]
        right += predicted.split("?")[0] == kind_of(path)
    print(f"predicted labels: {right} of {len(cards)} right")
    assert right >= 0.75 * len(cards)
    screenshot(page, "labelling-4-predicted")

    # 5. Label next: the images the probe is least sure about.
    page.click("#label-next")
    page.wait_for_url("**view=next**")
    page.wait_for_function(
        "() => document.querySelectorAll('#view .card .margin').length === 12 && "
        "document.querySelectorAll('#view .card .predicted-tag').length === 12"
    )
    margins = page.eval_on_selector_all("#view .card", "found => found.map(c => +c.dataset.margin)")
    assert margins == sorted(margins)
    assert not set(card_paths(page)) & labelled
    screenshot(page, "labelling-5-label-next")
