"""The page's first minutes, in a real browser (Debian's Chromium, Playwright) against a real
``dinoseek serve`` (the tiny DINOv2): an image dropped while the page still loads, the header
once another collection is picked, the collapse-duplicates toggle, the count of results, the
empty Duplicates view, and what a predicted label was voted over.

Races are made deterministic by holding the browser's requests (Playwright's routes) and
releasing them in the order under test, never by waiting a while.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from playwright.sync_api import Page, Route

from dinoseek_cli.main import main
from tests.browser.test_page import (
    DUPLICATE_NAME,
    TOP_K,
    Served,
    browser,
    card_paths,
    folder,
    page,
    screenshot,
    served,
    watched,
)
from tests.helpers import write_tree

pytestmark = [pytest.mark.browser, pytest.mark.model]
__all__ = ["browser", "folder", "page", "served", "watched"]  # fixtures of the page's tests

OTHER = "holiday"


class Held:
    """Requests held by the browser until the test releases them."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.routes: dict[str, Route] = {}

    def hold(self, name: str, pattern: str) -> None:
        def keep(route: Route) -> None:
            self.routes[name] = route

        self.page.route(pattern, keep)

    def wait_for(self, name: str) -> None:
        """Until the page has made that request (polled; the verdict never depends on it)."""
        for _ in range(600):
            if name in self.routes:
                return
            self.page.wait_for_timeout(50)
        raise AssertionError(f"the page never asked for {name}")

    def release(self, name: str) -> None:
        self.routes.pop(name).continue_()


def test_an_image_dropped_while_the_page_loads_keeps_its_results(
    page: Page, served: Served
) -> None:
    """The page's first view (browse) starts once the header has loaded; an upload made
    before it must not be replaced by it: /ready is held while the image is chosen, and the
    search's answer is held until the page has finished starting."""
    held = Held(page)
    held.hold("ready", "**/ready")
    held.hold("search", "**/search?*")
    page.goto(f"{served.url}/?top_k={TOP_K}")
    held.wait_for("ready")
    query = served.photos[3]
    page.set_input_files("#file", str(query))
    held.wait_for("search")
    held.release("ready")
    page.wait_for_function("() => document.querySelector('#collection').options.length > 0")
    held.release("search")
    page.wait_for_selector(f".query-card .name:text-is('{query.name}')")
    assert card_paths(page)[0] == str(query)
    assert page.inner_text(".count") == f"{TOP_K} results"
    assert "view=upload" in page.url
    assert page.query_selector("h2:text-is('Browse the collection')") is None
    screenshot(page, "13-upload-while-loading")


@pytest.fixture(scope="module")
def other_collection(folder: tuple[Path, Served], tiny_model_dir: Path) -> str:
    """A second, small collection beside the served one (the server holds only its own)."""
    tmp_path, _ = folder
    photos = tmp_path / "holiday-photos"
    write_tree(photos, per_class=1, classes=("beach", "hills", "town"))
    arguments = ["index", str(photos), "-c", OTHER, "--model", str(tiny_model_dir),
                 "--data-dir", str(tmp_path / "data"), "--workers", "0", "--labels-from-folders",
                 "-q"]  # fmt: skip
    indexed = CliRunner().invoke(main, arguments)
    assert indexed.exit_code == 0, indexed.output
    return OTHER


def test_the_header_names_the_collection_picked(
    page: Page, served: Served, other_collection: str
) -> None:
    page.goto(served.url)
    page.wait_for_selector(".card")
    page.wait_for_function("() => document.querySelector('#status-points').textContent === '14'")
    assert page.inner_text("#status-collection") == "images"
    page.select_option("#collection", other_collection)
    page.wait_for_url(f"**collection={other_collection}**")
    page.wait_for_function(
        "name => document.querySelector('#status-collection').textContent === name",
        arg=other_collection,
    )
    assert page.inner_text("#status-points") == "3"
    page.wait_for_function("() => document.querySelectorAll('.card').length === 3")
    assert page.inner_text(".count") == "3 images"
    screenshot(page, "14-other-collection")
    page.select_option("#collection", "")  # back to the service's own
    page.wait_for_function("() => document.querySelector('#status-points').textContent === '14'")
    assert page.inner_text("#status-collection") == "images"


def test_the_empty_duplicates_view_names_the_command_as_code(
    page: Page, served: Served, other_collection: str
) -> None:
    page.goto(f"{served.url}/?view=duplicates&collection={other_collection}")
    page.wait_for_selector("h2:has(code)")
    heading = page.inner_text("h2")
    assert heading == "No near-duplicates are marked: run dinoseek dedup."
    assert page.inner_text("h2 code") == "dinoseek dedup"
    assert "`" not in page.inner_text("#view")
    screenshot(page, "15-no-duplicates")


def test_collapse_duplicates_shows_one_image_per_group(page: Page, served: Served) -> None:
    # The photo's lossless copy is kept by quality and the photo marked its duplicate (see
    # test_page): collapsed, the group shows its kept image only.
    query = served.photos[5]
    kept, duplicate = DUPLICATE_NAME, query.name
    page.goto(f"{served.url}/?top_k={TOP_K}")
    page.wait_for_selector(".card")
    page.set_input_files("#file", str(query))
    page.wait_for_selector(f".query-card .name:text-is('{query.name}')")
    names = [Path(path).name for path in card_paths(page)]
    assert {kept, duplicate} <= set(names)
    page.check("#collapse")
    page.set_input_files("#file", str(query))  # a new search, with the toggle on
    page.wait_for_url("**collapse=1**")
    page.wait_for_function(
        "name => [...document.querySelectorAll('.card .path')].every("
        "p => !p.textContent.endsWith(name))",
        arg=duplicate,
    )
    names = [Path(path).name for path in card_paths(page)]
    assert names[0] == kept
    assert duplicate not in names
    assert len(names) == TOP_K
    assert page.inner_text(".count") == f"{TOP_K} results"
    screenshot(page, "16-collapsed")


def test_a_label_filter_does_not_change_the_predicted_labels(page: Page, served: Served) -> None:
    """The vote is taken over the nearest images of the whole collection, and the card says
    so; the filter chooses only which neighbours are shown."""
    query = served.photos[0]  # a cat
    page.goto(f"{served.url}/?top_k={TOP_K}")
    page.wait_for_selector(".card")
    page.set_input_files("#file", str(query))
    page.wait_for_selector(f".query-card .name:text-is('{query.name}')")
    unfiltered = page.inner_text(".query-card .labels")
    page.fill("#label", "dogs")
    page.press("#label", "Tab")
    page.set_input_files("#file", str(query))
    page.wait_for_url("**label=dogs**")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card .label-tag')].length > 0 && "
        "[...document.querySelectorAll('.card .label-tag')].every(t => t.textContent === 'dogs')"
    )
    assert page.inner_text(".query-card .labels") == unfiltered
    assert "vote of the 10 nearest images, whatever the filters" in unfiltered
    screenshot(page, "17-labels-under-a-filter")
