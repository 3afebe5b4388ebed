"""The search page in a real browser: Debian's Chromium, driven by Playwright, against a real
``dinoseek serve`` (the tiny DINOv2) on a small indexed folder.

Each state is saved as a screenshot under ``test-artifacts/browser/`` (ignored by git).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image
from playwright.sync_api import Browser, Dialog, Page, Route, sync_playwright

from dinoseek_cli.main import main
from tests.helpers import encode, photo, write_tree
from tests.live_server import free_port

pytestmark = [pytest.mark.browser, pytest.mark.model]

REPO = Path(__file__).parent.parent.parent
SCREENSHOTS = REPO / "test-artifacts" / "browser"
XSS_NAME = "<img src=x onerror=alert(1)>.jpg"
DUPLICATE_NAME = "cats_5-lossless-copy.png"
TOP_K = 6
KEY = "s3cret key/with=odd;chars"


def chromium_path() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or ``DINOSEEK_CHROMIUM``."""
    given = os.environ.get("DINOSEEK_CHROMIUM")
    if given:
        return given
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium. Skipped when there is none, unless DINOSEEK_REQUIRE_BROWSER=1
    (CI), where a missing browser fails."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("DINOSEEK_REQUIRE_BROWSER") == "1":
            pytest.fail("DINOSEEK_REQUIRE_BROWSER=1 but no chromium: apt-get install chromium")
        pytest.skip("no Chromium here: `apt-get install chromium` to run the browser tests")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


@dataclass(frozen=True)
class Served:
    url: str
    photos: list[Path]
    xss: Path


def index_folder(root: Path, data: Path, model: Path) -> tuple[list[Path], Path]:
    """Two labelled classes, one file whose name is HTML, and a lossless copy of a photo
    (the same pixels: a near-duplicate for any model), marked by `dinoseek dedup`."""
    photos = write_tree(root, per_class=6)
    xss = root / "cats" / XSS_NAME
    xss.write_bytes(encode(photo(4242, (160, 120), kind="squares")))
    Image.open(photos[5]).save(root / "cats" / DUPLICATE_NAME)
    indexed = CliRunner().invoke(
        main,
        [
            "index",
            str(root),
            "--model",
            str(model),
            "--data-dir",
            str(data),
            "--workers",
            "0",
            "--labels-from-folders",
            "-q",
        ],
    )
    assert indexed.exit_code == 0, indexed.output
    marked = CliRunner().invoke(
        main, ["dedup", "--data-dir", str(data), "--threshold", "0.99999", "-q"]
    )
    assert marked.exit_code == 0, marked.output
    return photos, xss


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Served]:
    tmp_path = tmp_path_factory.mktemp("page")
    photos, xss = index_folder(tmp_path / "photos", tmp_path / "data", tiny_model_dir)
    return tmp_path, Served("", photos, xss)


def serve(data: Path, model: Path, env: dict[str, str]) -> tuple[str, subprocess.Popen[str]]:
    """``dinoseek serve`` on a free port, once it is ready."""
    port = free_port()
    command = [sys.executable, "-m", "dinoseek_cli", "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--data-dir", str(data), "--model", str(model), "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a hang detector, not a speed limit
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url, server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            output = server.stdout.read() if server.stdout else ""
            raise AssertionError(f"the server did not start:\n{output}")
        time.sleep(0.2)


def stop(server: subprocess.Popen[str]) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def served(folder: tuple[Path, Served], tiny_model_dir: Path) -> Iterator[Served]:
    """The server without a key."""
    tmp_path, indexed = folder
    url, server = serve(tmp_path / "data", tiny_model_dir, {"DINOSEEK_API_KEY": ""})
    try:
        yield Served(url, indexed.photos, indexed.xss)
    finally:
        stop(server)


@dataclass
class Watched:
    """A page, the dialogs it opened (an XSS would open one) and the errors it threw."""

    page: Page
    dialogs: list[str]
    errors: list[str]


def watched_page(browser: Browser) -> Watched:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)  # a hang detector: waits end when the page is ready
    opened = Watched(context.new_page(), [], [])

    def on_dialog(dialog: Dialog) -> None:
        opened.dialogs.append(dialog.message)
        dialog.dismiss()

    opened.page.on("dialog", on_dialog)
    opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
    return opened


@pytest.fixture
def watched(browser: Browser, served: Served) -> Iterator[Watched]:
    """A fresh page on the server without a key; it must throw no error."""
    opened = watched_page(browser)
    yield opened
    opened.page.context.close()
    assert opened.errors == [], "the page threw"


@pytest.fixture
def page(watched: Watched) -> Page:
    return watched.page


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def card_paths(page: Page) -> list[str]:
    return [e.inner_text() for e in page.query_selector_all(".card .path")]


def upload(page: Page, url: str, path: Path, *, top_k: int = TOP_K) -> None:
    """Open the page, set top-k, pick ``path``; wait for the results of that search."""
    page.goto(f"{url}/?view=browse&top_k={top_k}")
    page.wait_for_selector(".card")
    page.set_input_files("#file", str(path))
    page.wait_for_selector(f".query-card .name:text-is('{path.name}')")


def thumbnails_loaded(page: Page, selector: str = ".card img") -> bool:
    """Whether the first thumbnail decoded (an image, not a 401 or a 404)."""
    page.wait_for_function(
        f"() => {{ const i = document.querySelector({selector!r}); return i && i.complete; }}"
    )
    width: int = page.eval_on_selector(selector, "i => i.naturalWidth")
    return width > 0


def test_an_upload_shows_its_top_k_with_the_exact_copy_first(page: Page, served: Served) -> None:
    query = served.photos[2]
    upload(page, served.url, query)
    cards = page.query_selector_all(".card")
    assert len(cards) == TOP_K
    assert card_paths(page)[0] == str(query)
    assert page.inner_text(".card .score") == "1.0000"
    images = page.query_selector_all(".card img")
    assert all(img.get_attribute("loading") == "lazy" for img in images)
    assert all(img.get_attribute("alt") for img in images)
    assert all("/image?size=" in (img.get_attribute("src") or "") for img in images)
    assert thumbnails_loaded(page)
    labels = page.inner_text(".query-card .labels")
    assert "cats" in labels
    assert "(knn: vote of the 10 nearest images, whatever the filters)" in labels
    assert "%" in labels
    screenshot(page, "1-upload")


def test_an_upload_already_there_is_said_so(page: Page, served: Served, tmp_path: Path) -> None:
    """The collection's dedup ran at 0.99999 (``index_folder``): that is the threshold."""
    upload(page, served.url, served.photos[2])
    assert page.is_visible(".query-card .near-duplicate")
    assert page.inner_text(".query-card .near-duplicate") == (
        f"Already in the collection: {served.photos[2]} (similarity 1.0000, at or above 0.99999)"
    )
    screenshot(page, "1b-already-there")
    new = tmp_path / "new-picture.jpg"
    new.write_bytes(encode(photo(777, (160, 120), kind="stripes")))
    upload(page, served.url, new)
    assert card_paths(page)
    assert page.is_hidden(".query-card .near-duplicate")


def test_clicking_a_result_shows_its_neighbours_and_back_forward_work(
    page: Page, served: Served
) -> None:
    upload(page, served.url, served.photos[0])
    second_id = page.get_attribute(".card:nth-child(2)", "data-id")
    second_path = page.inner_text(".card:nth-child(2) .path")
    page.click(".card:nth-child(2) .thumb")
    page.wait_for_url(f"**id={second_id}**")
    page.wait_for_selector(f".query-card .name:text-is('{second_path}')")  # the new view
    ids = [c.get_attribute("data-id") for c in page.query_selector_all(".card")]
    assert second_id not in ids, "a point is not its own neighbour"
    assert len(ids) == TOP_K
    screenshot(page, "2-similar")
    page.go_back()
    page.wait_for_selector(f".query-card .name:text-is('{served.photos[0].name}')")
    assert card_paths(page)[0] == str(served.photos[0])
    page.go_forward()
    page.wait_for_url(f"**id={second_id}**")
    page.wait_for_function(
        "id => ![...document.querySelectorAll('.card')].some(c => c.dataset.id === id)"
        " && document.querySelectorAll('.card').length > 0",
        arg=second_id,
    )


def test_the_label_filter(page: Page, served: Served) -> None:
    page.goto(f"{served.url}/?view=browse&top_k={TOP_K}")
    page.wait_for_selector(".card")
    page.fill("#label", "dogs")
    page.press("#label", "Tab")  # a change of a filter reruns the view: browse the dogs
    page.wait_for_url("**label=dogs**")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card .label-tag')].every("
        "t => t.textContent === 'dogs')"
    )
    page.set_input_files("#file", str(served.photos[0]))  # a cat
    page.wait_for_selector(".query-card")
    tags = [e.inner_text() for e in page.query_selector_all(".card .label-tag")]
    assert tags == ["dogs"] * TOP_K
    assert "label=dogs" in page.url
    screenshot(page, "3-label-filter")


def test_the_pca_picture_appears_and_the_mask_toggles(page: Page, served: Served) -> None:
    upload(page, served.url, served.photos[3])
    page.wait_for_selector(".pca:not([hidden]) img")
    assert thumbnails_loaded(page, ".pca img")
    size = page.eval_on_selector(".pca img", "i => [i.naturalWidth, i.naturalHeight]")
    assert size == [224, 224]  # the 16 x 16 patch grid of the 224 x 224 input
    screenshot(page, "4-pca")
    plain = page.get_attribute(".pca img", "src")
    page.check(".pca .mask")
    page.wait_for_function("src => document.querySelector('.pca img').src !== src", arg=plain)
    assert thumbnails_loaded(page, ".pca img")
    screenshot(page, "4-pca-mask")


def test_a_text_file_shows_the_error(page: Page, served: Served, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 50)
    page.goto(served.url)
    page.wait_for_selector(".card")
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#message.error")
    message = page.inner_text("#message")
    assert "Not an image" in message
    assert "notes.txt" in message
    screenshot(page, "5-text-file")


def test_a_file_name_that_is_html_shows_as_text(watched: Watched, served: Served) -> None:
    page = watched.page
    upload(page, served.url, served.xss)
    assert card_paths(page)[0] == str(served.xss)
    assert page.inner_text(".query-card .name") == XSS_NAME
    assert page.eval_on_selector_all("img[src='x']", "found => found.length") == 0
    page.wait_for_timeout(300)
    assert watched.dialogs == []
    screenshot(page, "6-html-file-name")


def test_browse_pages_through_the_collection(page: Page, served: Served) -> None:
    page.goto(served.url)
    page.wait_for_selector(".card")
    assert "start=random" not in page.url
    first = {c.get_attribute("data-id") for c in page.query_selector_all(".card")}
    assert len(first) == len(served.photos) + 2  # everything fits one page of 24
    assert page.is_hidden("#more")
    page.click(".card .thumb")
    page.wait_for_url("**view=similar**")
    screenshot(page, "7-browse-then-similar")


def test_the_page_reveals_nothing_without_the_key(
    browser: Browser, folder: tuple[Path, Served], tiny_model_dir: Path
) -> None:
    """With a key: the page asks for it, a wrong one shows the server's error, the right one
    gives results (and thumbnails, which carry it in a cookie)."""
    tmp_path, _indexed = folder
    data = tmp_path / "data-key"
    photos, _ = index_folder(tmp_path / "photos-key", data, tiny_model_dir)
    url, server = serve(data, tiny_model_dir, {"DINOSEEK_API_KEY": KEY})
    opened = watched_page(browser)
    page = opened.page
    try:
        page.goto(url)
        page.wait_for_selector("#key-form:not([hidden])")
        assert "points" not in page.inner_text("#status-points")  # nothing shown yet
        assert page.inner_text("#status-points") == "…"
        screenshot(page, "8-key-prompt")
        page.fill("#key-input", "wrong")
        page.click("#key-form button")
        page.wait_for_selector("#key-reason:has-text('missing or wrong X-API-Key')")
        screenshot(page, "9-wrong-key")
        page.fill("#key-input", KEY)
        page.click("#key-form button")
        page.wait_for_function(
            "() => document.querySelector('#status-points').textContent === '14'"
        )
        page.wait_for_selector(".card")
        assert thumbnails_loaded(page)
        page.set_input_files("#file", str(photos[7]))
        page.wait_for_selector(f".query-card .name:text-is('{photos[7].name}')")
        assert card_paths(page)[0] == str(photos[7])
        assert thumbnails_loaded(page)
        screenshot(page, "10-key-results")
    finally:
        page.context.close()
        stop(server)
    assert opened.errors == [], "the page threw"


def test_the_page_works_from_the_keyboard(page: Page, served: Served) -> None:
    page.goto(served.url)
    page.wait_for_selector(".card")
    # Enter on the drop zone opens the file picker (its input is clicked; the click is
    # stopped here, so no native dialog opens).
    page.evaluate(
        "() => document.getElementById('file').addEventListener('click', event => {"
        " event.preventDefault(); window.pickerOpened = true; })"
    )
    page.focus("#drop")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.pickerOpened === true")
    page.set_input_files("#file", str(served.photos[1]))
    page.wait_for_selector(f".query-card .name:text-is('{served.photos[1].name}')")
    page.focus(".card:nth-child(2) .thumb")
    page.keyboard.press("Enter")
    page.wait_for_url("**view=similar**")


def test_a_busy_server_is_retried_once_after_retry_after(page: Page, served: Served) -> None:
    """The server's first answer to the search is replaced by a 503 in the browser (making a
    real server busy at one exact request is not deterministic); the page waits for its
    Retry-After, says so, and asks again."""
    answered: list[int] = []

    def busy_once(route: Route) -> None:
        if not answered:
            answered.append(503)
            route.fulfill(
                status=503,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body='{"error": {"code": "overloaded", "message": "the service is busy"}}',
            )
        else:
            answered.append(200)
            route.continue_()

    page.route("**/search?*", busy_once)
    page.goto(f"{served.url}/?top_k={TOP_K}")
    page.wait_for_selector(".card")
    page.set_input_files("#file", str(served.photos[4]))
    page.wait_for_selector("#message.info:has-text('the service is busy')")
    page.wait_for_selector(f".query-card .name:text-is('{served.photos[4].name}')")
    assert card_paths(page)[0] == str(served.photos[4])
    assert answered == [503, 200]


def test_the_duplicates_view_shows_each_group_kept_image_first(page: Page, served: Served) -> None:
    page.goto(served.url)
    page.wait_for_selector(".card")
    page.click("#duplicates")
    page.wait_for_url("**view=duplicates**")
    page.wait_for_selector(".duplicate-group .card")
    groups = page.query_selector_all(".duplicate-group")
    assert len(groups) == 1
    paths = [e.inner_text() for e in groups[0].query_selector_all(".path")]
    # The lossless PNG copy has the pixels of the JPEG in a larger file: kept by quality.
    copy = served.photos[5].parent / DUPLICATE_NAME
    assert paths == [str(copy), str(served.photos[5])]
    assert groups[0].query_selector_all(".score")[0].inner_text() == "1.0000"
    sizes = f"{copy.stat().st_size:,} bytes against {served.photos[5].stat().st_size:,} bytes"
    assert page.inner_text(".keep-reason") == f"Kept: larger file: {sizes}"
    screenshot(page, "11-duplicates")


def test_several_images_are_one_batch_and_drop_and_paste_work(page: Page, served: Served) -> None:
    page.goto(f"{served.url}/?top_k={TOP_K}")
    page.wait_for_selector(".card")
    page.set_input_files("#file", [str(served.photos[0]), str(served.photos[7])])
    page.wait_for_selector(f".query-card .name:text-is('{served.photos[7].name}')")
    assert len(page.query_selector_all(".query-card")) == 2
    grids = page.query_selector_all(".grid")
    assert len(grids) == 2
    first_paths = [e.inner_text() for e in grids[0].query_selector_all(".path")]
    second_paths = [e.inner_text() for e in grids[1].query_selector_all(".path")]
    assert first_paths[0] == str(served.photos[0])
    assert second_paths[0] == str(served.photos[7])
    assert page.is_visible(".query-card .show-pca")  # a batch draws the PCA on request
    screenshot(page, "12-batch")
    for event, name in (("drop", 3), ("paste", 9)):
        photo_path = served.photos[name]
        page.evaluate(
            """([event, name, bytes]) => {
                const data = new DataTransfer();
                data.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
                if (event === "drop") {
                    const options = {dataTransfer: data, bubbles: true, cancelable: true};
                    document.getElementById("drop").dispatchEvent(new DragEvent("drop", options));
                } else {
                    document.dispatchEvent(
                        new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
                }
            }""",
            [event, photo_path.name, list(photo_path.read_bytes())],
        )
        page.wait_for_selector(f".query-card .name:text-is('{photo_path.name}')")
        assert card_paths(page)[0] == str(photo_path), event
