"""Search by region and "Why?" on the page, in a real browser (Debian's Chromium, Playwright)
against a real ``dinoseek serve`` (the tiny random DINOv2) on a folder indexed with
``--regions`` (collection ``images``) and again without (collection ``plain``).

Which images the random model finds is not what these tests check: they check that the page
sends what the user drew (fractions of the original query image, whatever its letterbox on
screen), and draws what the server answered where it belongs (each hit's box on its
thumbnail, each pair of patches joined between the two images), computing the expected
pixels here from the answers the server really gave. Screenshots go to
``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from playwright.sync_api import Browser, Page, Request, Route

from dinoseek.input_geometry import InputGeometry
from dinoseek.preprocessing import DINOV2_PREPROCESSING
from dinoseek_cli.main import main
from tests.browser.test_page import (
    SCREENSHOTS,
    Watched,
    browser,
    screenshot,
    serve,
    stop,
    watched_page,
)
from tests.helpers import encode, photo

pytestmark = [pytest.mark.browser, pytest.mark.model]
__all__ = ["browser"]  # a fixture of the page's tests

SIZES = [(320, 180), (150, 300), (240, 240)]  # wide, tall, square: letterboxed both ways
KINDS = ("circles", "squares", "stripes")
QUERY_SIZE = (400, 225)  # wide: letterboxed top and bottom in the 224 x 224 preview
PIXEL = 1.5  # what "at the right place" allows on screen, in CSS pixels


@dataclass(frozen=True)
class RegionServed:
    url: str
    photos: list[Path]
    query: Path


def write_folder(root: Path) -> list[Path]:
    """Nine JPEGs of three kinds and three shapes, one folder per kind."""
    paths = []
    for kind in KINDS:
        (root / kind).mkdir(parents=True)
        for i, size in enumerate(SIZES):
            path = root / kind / f"{kind}_{i}.jpg"
            path.write_bytes(encode(photo(zlib.crc32(f"{kind}/{i}".encode()), size, kind=kind)))
            paths.append(path)
    return paths


def index(root: Path, data: Path, model: Path, *options: str) -> None:
    common = ["--model", str(model), "--data-dir", str(data), "--workers", "0", "-q"]
    indexed = CliRunner().invoke(main, ["index", str(root), *common, *options])
    assert indexed.exit_code == 0, indexed.output


@pytest.fixture(scope="module")
def region_served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[RegionServed]:
    tmp_path = tmp_path_factory.mktemp("regions-page")
    photos = write_folder(tmp_path / "photos")
    data = tmp_path / "data"
    index(tmp_path / "photos", data, tiny_model_dir, "--regions", "--labels-from-folders")
    index(tmp_path / "photos", data, tiny_model_dir, "-c", "plain")
    query = tmp_path / "query-wide.jpg"
    query.write_bytes(encode(photo(99, QUERY_SIZE, kind="circles")))
    url, server = serve(data, tiny_model_dir, {"DINOSEEK_API_KEY": ""})
    try:
        yield RegionServed(url, photos, query)
    finally:
        stop(server)


@pytest.fixture
def watched(browser: Browser, region_served: RegionServed) -> Iterator[Watched]:
    opened = watched_page(browser)
    yield opened
    opened.page.context.close()
    assert opened.errors == [], "the page threw"


@pytest.fixture
def page(watched: Watched) -> Page:
    return watched.page


def upload(page: Page, served: RegionServed, collection: str | None = None) -> None:
    scope = f"&collection={collection}" if collection else ""
    page.goto(f"{served.url}/?view=browse&top_k=6{scope}")
    page.wait_for_selector(".card")
    page.wait_for_function("() => document.querySelector('#collection').options.length > 1")
    page.set_input_files("#file", str(served.query))
    page.wait_for_selector(f".query-card .name:text-is('{served.query.name}')")


def dialog_screenshot(page: Page, name: str) -> None:
    """The viewport: a full-page picture would show the modal's backdrop on part of it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def content_rect(page: Page, selector: str) -> dict[str, float]:
    """Where an image's pixels are on screen, from its box, its natural size and its
    object-fit: its box less the letterbox (contain), or more than its box (cover)."""
    box, natural, fit = page.eval_on_selector(
        selector,
        "i => { const r = i.getBoundingClientRect();"
        " return [[r.x, r.y, r.width, r.height], [i.naturalWidth, i.naturalHeight],"
        " getComputedStyle(i).objectFit]; }",
    )
    assert fit in ("contain", "cover"), fit
    x, y, width, height = box
    scale = (max if fit == "cover" else min)(width / natural[0], height / natural[1])
    shown_w, shown_h = natural[0] * scale, natural[1] * scale
    return {
        "x": x + (width - shown_w) / 2,
        "y": y + (height - shown_h) / 2,
        "w": shown_w,
        "h": shown_h,
    }


def on_screen(rect: dict[str, float], fx: float, fy: float) -> tuple[float, float]:
    return rect["x"] + fx * rect["w"], rect["y"] + fy * rect["h"]


def screen_box(element: Any) -> dict[str, float]:
    """Where an SVG rect's area (its stroke aside) is on screen, through the browser's own
    transform of its SVG (viewBox and preserveAspectRatio)."""
    return element.evaluate(  # type: ignore[no-any-return]
        """r => {
            const m = r.getScreenCTM();
            const [x, y, w, h] = ['x', 'y', 'width', 'height'].map(k => +r.getAttribute(k));
            const p = new DOMPoint(x, y).matrixTransform(m);
            const q = new DOMPoint(x + w, y + h).matrixTransform(m);
            return {x: p.x, y: p.y, w: q.x - p.x, h: q.y - p.y};
        }"""
    )


def assert_near(found: dict[str, float], expected: dict[str, float], tolerance: float) -> None:
    for key in ("x", "y", "w", "h"):
        assert abs(found[key] - expected[key]) <= tolerance, (key, found, expected)


def region_of(request: Request) -> dict[str, float]:
    query = parse_qs(urlsplit(request.url).query)
    assert query["regions"] == ["true"], request.url
    x, y, w, h = (float(v) for v in query["region"][0].split(","))
    return {"x": x, "y": y, "w": w, "h": h}


def drag(page: Page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    page.mouse.move(*end)
    page.mouse.up()


def assert_hit_boxes(page: Page, results: list[dict[str, Any]]) -> None:
    """Each card (in the answer's order) shows its hit's region where it lies on the
    thumbnail."""
    cards = page.query_selector_all(".card")
    assert [c.get_attribute("data-id") for c in cards] == [r["id"] for r in results]
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card .thumb img')].every(i => i.complete)"
    )
    for number, (card, result) in enumerate(zip(cards, results, strict=True), start=1):
        thumb = content_rect(page, f".card:nth-child({number}) .thumb img")
        region = result["region"]
        x, y = on_screen(thumb, region["x"], region["y"])
        expected = {"x": x, "y": y, "w": region["w"] * thumb["w"], "h": region["h"] * thumb["h"]}
        drawn = card.query_selector(".hit-region")
        assert drawn is not None, result
        assert_near(screen_box(drawn), expected, PIXEL)


def test_a_box_drawn_on_the_query_searches_by_it_and_each_hit_shows_its_box(
    page: Page, region_served: RegionServed
) -> None:
    upload(page, region_served)
    assert page.is_visible(".query-card .region-help")
    assert page.is_hidden(".query-card .whole-image")
    preview = content_rect(page, ".query-card .frame img")
    assert preview["h"] < preview["w"] - 50  # the wide query is letterboxed
    wanted = {"x": 0.3, "y": 0.2, "w": 0.45, "h": 0.6}
    start = on_screen(preview, wanted["x"], wanted["y"])
    end = on_screen(preview, wanted["x"] + wanted["w"], wanted["y"] + wanted["h"])
    with page.expect_response("**/search?*") as answered:
        drag(page, start, end)
    response = answered.value
    assert response.request.method == "POST"
    # The drag's ends are fractions of the image, not of its letterboxed frame; a pixel of
    # the preview is 1/224 of the width and about 1/126 of the height.
    assert_near(region_of(response.request), wanted, 1.0 / preview["h"])
    body = response.json()
    assert body["results"], body
    page.wait_for_selector(f".card[data-id='{body['results'][0]['id']}'] .hit-region")
    page.wait_for_selector(".query-card .whole-image:not([hidden])")
    drawn = page.query_selector(".query-card .drawn-box")
    expected_box = {"x": start[0], "y": start[1], "w": end[0] - start[0], "h": end[1] - start[1]}
    assert_near(screen_box(drawn), expected_box, PIXEL)
    assert_hit_boxes(page, body["results"])
    assert "region=" in page.url
    screenshot(page, "region-1-box-and-hits")

    with page.expect_request("**/search?*") as cleared:
        page.click(".query-card .whole-image")
    assert "region" not in parse_qs(urlsplit(cleared.value.url).query)
    page.wait_for_selector(".query-card .whole-image[hidden]", state="attached")
    page.wait_for_function("() => document.querySelectorAll('.card').length > 0")
    assert page.query_selector_all(".hit-region") == []
    assert page.is_hidden(".query-card .drawn-box")


def test_a_box_on_a_stored_query_searches_with_its_original_file(
    page: Page, region_served: RegionServed
) -> None:
    page.goto(f"{region_served.url}/?view=browse")
    page.wait_for_selector(".card")
    query_id = page.get_attribute(".card:nth-child(1)", "data-id")
    page.click(".card:nth-child(1) .thumb")
    page.wait_for_url(f"**id={query_id}**")
    page.wait_for_selector(".query-card .draw-layer")
    stored = page.evaluate(f"() => fetch('/points/{query_id}').then(r => r.json())")
    original = Path(stored["payload"]["path"])
    # Playwright does not see a multipart body made of a Blob: the page's fetch is watched.
    page.evaluate(
        """() => {
            const fetched = window.fetch;
            window.fetch = async (url, options = {}) => {
                if (String(url).startsWith('/search') && options.body instanceof FormData) {
                    const file = options.body.get('image');
                    window.sentImage = {
                        name: file.name,
                        bytes: Array.from(new Uint8Array(await file.arrayBuffer())),
                    };
                }
                return fetched(url, options);
            };
        }"""
    )
    preview = content_rect(page, ".query-card .frame img")
    with page.expect_request("**/search?*") as sent:
        drag(page, on_screen(preview, 0.2, 0.3), on_screen(preview, 0.7, 0.9))
    assert_near(region_of(sent.value), {"x": 0.2, "y": 0.3, "w": 0.5, "h": 0.6}, 1 / preview["h"])
    image = page.evaluate("() => window.sentImage")
    assert image["name"] == original.name
    assert bytes(image["bytes"]) == original.read_bytes()  # the stored file, not a thumbnail
    page.wait_for_selector(f".query-card .name:text-is('{original.name}')")
    assert page.is_visible(".query-card .whole-image")


def test_the_keyboard_draws_and_moves_a_box(page: Page, region_served: RegionServed) -> None:
    upload(page, region_served)
    page.focus(".query-card .draw-layer")
    page.keyboard.press("Enter")  # a box in the middle: 0.25, 0.25, 0.5, 0.5
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    page.keyboard.press("Shift+ArrowLeft")
    with page.expect_request("**/search?*") as sent:
        page.keyboard.press("Enter")
    assert_near(region_of(sent.value), {"x": 0.35, "y": 0.25, "w": 0.45, "h": 0.55}, 1e-4)


def test_touch_draws_a_box_too(browser: Browser, region_served: RegionServed) -> None:
    """A finger's drag (touch events sent to Chromium's input as a touch screen would,
    through the DevTools protocol), in a context with touch."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, has_touch=True)
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        upload(page, region_served)
        preview = content_rect(page, ".query-card .frame img")
        touch = context.new_cdp_session(page)
        path = [on_screen(preview, 0.1 + 0.1 * i, 0.1 + 0.16 * i) for i in range(6)]
        with page.expect_request("**/search?*") as sent:
            for kind, (x, y) in zip(["touchStart"] + ["touchMove"] * 5, path, strict=True):
                touch.send(
                    "Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]}
                )
            touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        # Touch points are whole pixels: a pixel's worth of tolerance.
        expected = {"x": 0.1, "y": 0.1, "w": 0.5, "h": 0.8}
        assert_near(region_of(sent.value), expected, 1 / preview["h"])
    finally:
        context.close()
    assert errors == [], "the page threw"


def test_a_box_the_model_cannot_see_is_refused_in_words(
    page: Page, region_served: RegionServed
) -> None:
    """The model sees the centre of the wide query: a thin box at its left end is refused by
    the server (422), and the page says why."""
    upload(page, region_served)
    preview = content_rect(page, ".query-card .frame img")
    with page.expect_response("**/search?*") as answered:
        drag(page, on_screen(preview, 0.0, 0.2), on_screen(preview, 0.05, 0.8))
    assert answered.value.status == 422
    page.wait_for_selector("#message.error")
    message = page.inner_text("#message")
    assert message.startswith("Not usable: region ")
    assert "It sees the centre of the image" in message
    screenshot(page, "region-2-refused")


def test_the_part_the_model_does_not_see_is_shaded(page: Page, region_served: RegionServed) -> None:
    """The wide query's cut-off ends are shaded where the server's own geometry puts them
    (/ready states the model input; ``InputGeometry`` is what refuses a box there), and the
    middle is not; a drag that starts on the shade still draws a box."""
    ready = page.request.get(f"{region_served.url}/ready").json()
    described = DINOV2_PREPROCESSING.describe()
    geometric = ("resize_shortest_edge", "resize_to", "crop")
    stated = {key: described[key] for key in geometric if described[key] is not None}
    assert ready["input"] == stated  # an unset field is left out, as everywhere in /ready
    seen = InputGeometry.of(DINOV2_PREPROCESSING, *QUERY_SIZE).visible()
    assert seen.x > 0.2  # a wide query: both ends are cut off
    upload(page, region_served)
    shade = page.wait_for_selector(".query-card .unseen")
    assert shade is not None
    drawn = [float(v) for v in (shade.get_attribute("data-seen") or "").split(",")]
    assert drawn == pytest.approx([seen.x, seen.y, seen.w, seen.h], abs=1e-4)
    preview = content_rect(page, ".query-card .frame img")

    def shaded(fx: float, fy: float) -> bool:
        x, y = on_screen(preview, fx, fy)
        hit = f"document.elementFromPoint({x}, {y}).classList.contains('unseen')"
        return bool(page.evaluate(hit))

    assert shaded(seen.x / 2, 0.5)
    assert shaded(seen.x + seen.w + (1 - seen.x - seen.w) / 2, 0.5)
    assert shaded(0.5, seen.y / 2)
    assert not shaded(0.5, 0.5)
    assert not shaded(seen.x + 0.02, seen.y + 0.02)
    screenshot(page, "region-0-shaded")


def test_no_box_is_offered_on_a_collection_without_region_vectors(
    page: Page, region_served: RegionServed
) -> None:
    upload(page, region_served, collection="plain")
    assert page.query_selector_all(".query-card .draw-layer") == []
    assert page.is_hidden(".query-card .region-tools")
    assert page.is_visible(".card .why")  # matching patches needs no region vectors


def pair_lines(page: Page) -> list[dict[str, float]]:
    return page.eval_on_selector_all(
        "#why .why-pair line",
        "lines => lines.map(l => ({x1: +l.getAttribute('x1'), y1: +l.getAttribute('y1'),"
        " x2: +l.getAttribute('x2'), y2: +l.getAttribute('y2')}))",
    )


def image_cell(page: Page, side: str) -> dict[str, float]:
    return page.eval_on_selector(
        f"#why .why-image-{side}",
        "i => ({x: +i.getAttribute('x'), y: +i.getAttribute('y'),"
        " w: +i.getAttribute('width'), h: +i.getAttribute('height')})",
    )


def assert_match_drawn(page: Page, found: dict[str, Any], size_a: tuple[int, int]) -> None:
    """One line per pair, from the pair's point on the left image to its point on the right,
    and the best regions outlined, in the SVG's units."""
    page.wait_for_selector("#why .why-picture:not([hidden])")
    lines = pair_lines(page)
    assert found["pairs"], found
    assert len(lines) == len(found["pairs"])
    left, right = image_cell(page, "a"), image_cell(page, "b")
    assert abs(left["w"] / left["h"] - size_a[0] / size_a[1]) < 0.01  # not stretched
    assert left["x"] + left["w"] < right["x"]  # side by side
    for line, pair in zip(lines, found["pairs"], strict=True):
        assert abs(line["x1"] - (left["x"] + pair["a"]["x"] * left["w"])) < 0.01
        assert abs(line["y1"] - (left["y"] + pair["a"]["y"] * left["h"])) < 0.01
        assert abs(line["x2"] - (right["x"] + pair["b"]["x"] * right["w"])) < 0.01
        assert abs(line["y2"] - (right["y"] + pair["b"]["y"] * right["h"])) < 0.01
    for side, cell in (("a", left), ("b", right)):
        box = found["regions"][side]
        outlined = page.eval_on_selector(
            f"#why .why-region-{side}",
            "r => ['x', 'y', 'width', 'height'].map(k => +r.getAttribute(k))",
        )
        expected = [
            cell["x"] + box["x"] * cell["w"],
            cell["y"] + box["y"] * cell["h"],
            box["w"] * cell["w"],
            box["h"] * cell["h"],
        ]
        assert outlined == pytest.approx(expected, abs=0.01)
    legend = page.inner_text("#why .why-legend")
    assert f"{len(found['pairs'])} pairs of patches" in legend


def test_why_joins_the_matched_patches_of_an_upload_and_a_hit(
    page: Page, region_served: RegionServed
) -> None:
    upload(page, region_served)
    hit = page.get_attribute(".card:nth-child(2)", "data-id")
    with page.expect_response(f"**/points/{hit}/match?*") as answered:
        page.click(".card:nth-child(2) .why")
    assert answered.value.request.method == "POST"
    assert answered.value.status == 200
    found = answered.value.json()
    assert found["a"] is None  # the upload is a
    assert found["b"] == hit
    assert_match_drawn(page, found, QUERY_SIZE)
    dialog_screenshot(page, "region-3-why-upload")
    page.locator("#why").screenshot(path=str(SCREENSHOTS / "region-3b-why-dialog.png"))
    page.click("#why .why-close")
    assert page.is_hidden("#why")


def test_why_of_a_stored_query_asks_for_the_two_stored_images(
    page: Page, region_served: RegionServed
) -> None:
    page.goto(f"{region_served.url}/?view=browse")
    page.wait_for_selector(".card")
    query_id = page.get_attribute(".card:nth-child(1)", "data-id")
    page.click(".card:nth-child(1) .thumb")
    page.wait_for_url(f"**id={query_id}**")
    page.wait_for_selector(".card .why")
    hit = page.get_attribute(".card:nth-child(1)", "data-id")
    with page.expect_response(f"**/points/{query_id}/match/{hit}?*") as answered:
        page.click(".card:nth-child(1) .why")
    assert answered.value.request.method == "GET"
    found = answered.value.json()
    assert (found["a"], found["b"]) == (query_id, hit)
    stored = page.evaluate(f"() => fetch('/points/{query_id}').then(r => r.json())")
    path = Path(stored["payload"]["path"])
    size = next(SIZES[i] for i in range(3) if path.name.endswith(f"_{i}.jpg"))
    assert_match_drawn(page, found, size)
    dialog_screenshot(page, "region-4-why-stored")


def test_why_says_what_went_wrong(page: Page, region_served: RegionServed) -> None:
    """A busy server (the route answered 503 by the browser, twice: the page retries once
    after Retry-After) and an image that went missing (404) are said in words."""
    answers = [
        (503, {"error": {"code": "overloaded", "message": "the service is busy"}}),
        (503, {"error": {"code": "overloaded", "message": "the service is busy"}}),
        (404, {"error": {"code": "point_not_found", "message": "no such point: it was deleted"}}),
    ]

    def refuse(route: Route) -> None:
        status, body = answers.pop(0)
        route.fulfill(
            status=status,
            headers={"Retry-After": "1", "Content-Type": "application/json"},
            body=json.dumps(body),
        )

    upload(page, region_served)
    page.route("**/match?*", refuse)
    page.click(".card:nth-child(1) .why")
    page.wait_for_selector("#why .why-status.bad")
    assert page.inner_text("#why .why-status") == (
        "No answer: The server is overloaded or its store is unreachable: the service is busy"
    )
    assert page.is_hidden("#why .why-picture")
    dialog_screenshot(page, "region-5-why-busy")
    page.click("#why .why-close")
    page.click(".card:nth-child(2) .why")
    page.wait_for_selector("#why .why-status.bad:has-text('deleted')")
    assert page.inner_text("#why .why-status") == "No answer: no such point: it was deleted"
