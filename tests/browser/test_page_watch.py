"""The page of ``dinoseek serve --watch``, in Chromium: the header shows what the folder
watcher is doing and the collection's size, and follows a file copied into the folder.
The server is a real process with the stand-in model (``tests.fake_cli``): the page, not the
model, is under test."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_page import SCREENSHOTS, browser  # noqa: F401 - the fixture
from tests.helpers import write_tree
from tests.test_watch_process import HANG_S, watching

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_header_follows_the_watched_folder(
    tmp_path: Path,
    browser: Browser,  # noqa: F811 - the fixture imported above
) -> None:
    pool = write_tree(tmp_path / "pool", per_class=2)
    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    shutil.copyfile(pool[0], folder / "cats" / pool[0].name)
    with watching(folder, tmp_path / "data") as (url, _):
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#status-watch")).to_have_text("idle", timeout=HANG_S * 1000)
        expect(page.locator("#status-points")).to_have_text("1")
        expect(page.locator("#status-watch")).to_have_attribute("title", re.compile("passes: 1$"))
        # The header is filled from /ready before /collections fills the selector.
        expect(page.locator("#collection option")).to_have_text(["images (the service's)"])
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "watch-idle.png"))
        shutil.copyfile(pool[1], folder / "cats" / pool[1].name)
        expect(page.locator("#status-points")).to_have_text("2", timeout=HANG_S * 1000)
        watch = page.locator("#status-watch")
        expect(watch).to_have_attribute("title", re.compile(r"photos \(events\); passes: [2-9]"))
        expect(watch).to_have_text("idle", timeout=HANG_S * 1000)
        page.close()
