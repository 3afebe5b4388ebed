"""The API docs in a real browser, offline: Debian's Chromium (Playwright) against a real
``dinoseek serve`` (the stand-in model: the docs are not about it), with every request that
is not for the server refused by the browser and recorded. Swagger UI (``/docs``) and ReDoc
(``/redoc``) must render the operations from the service's own assets, under the service's
Content-Security-Policy.

Screenshots go to ``test-artifacts/browser/`` (ignored by git).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route

from tests.browser.test_page import REPO, SCREENSHOTS, browser, stop
from tests.helpers import write_tree
from tests.live_server import free_port

pytestmark = [pytest.mark.browser]
__all__ = ["browser"]  # the fixture, shared with the page's tests

# Recorded by the page itself: what the Content-Security-Policy refused.
RECORD_VIOLATIONS = """
window.violations = [];
document.addEventListener("securitypolicyviolation", event => {
  window.violations.push([event.effectiveDirective, event.blockedURI]);
});
"""


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dinoseek serve`` (the stand-in model) on a small collection, once it is healthy."""
    root = tmp_path_factory.mktemp("docs")
    write_tree(root / "photos", per_class=2)
    fake_cli = [sys.executable, "-m", "tests.fake_cli"]
    store = ["--data-dir", str(root / "data"), "--model", "fake/dinov2"]
    env = {**os.environ, "DINOSEEK_API_KEY": ""}
    subprocess.run(
        [*fake_cli, "index", str(root / "photos"), *store, "--workers", "0", "-q"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [*fake_cli, "serve", "--port", str(port), *store, "-q"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"the server did not start:\n{server.communicate()[0]}")
        time.sleep(0.2)
    try:
        yield url
    finally:
        stop(server)


@dataclass
class Offline:
    """A page whose requests leave only for the server; the others are refused and kept."""

    page: Page
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def violations(self) -> list[list[str]]:
        found: list[list[str]] = self.page.evaluate("() => window.violations")
        return found


@pytest.fixture
def offline(browser: Browser, server_url: str) -> Iterator[Offline]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = Offline(context.new_page())

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(server_url + "/"):
            route.continue_()
        else:
            opened.refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    opened.page.add_init_script(RECORD_VIOLATIONS)
    opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    context.close()


def screenshot(page: Page, name: str) -> None:
    """The window's view (the docs run to many screens)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def operations(server_url: str) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation the service documents."""
    spec = httpx.get(f"{server_url}/openapi.json").json()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def test_swagger_ui_renders_every_operation_offline(offline: Offline, server_url: str) -> None:
    page = offline.page
    page.goto(f"{server_url}/docs")
    page.wait_for_selector(".opblock-summary-path")
    shown = [
        (
            block.query_selector(".opblock-summary-method").inner_text(),  # type: ignore[union-attr]
            block.query_selector(".opblock-summary-path").get_attribute("data-path"),  # type: ignore[union-attr]
        )
        for block in page.query_selector_all(".opblock-summary")
    ]
    assert sorted(shown) == sorted(operations(server_url))  # type: ignore[arg-type]
    # An operation opens, with its parameters (styles and their data: icons included).
    page.click('.opblock-summary-path[data-path="/points/{point_id}/similar"]')
    page.wait_for_selector(".parameters-container .parameter__name")
    screenshot(page, "docs-swagger-ui")
    assert offline.refused == [], "the docs asked another site"
    assert offline.violations() == [], "the Content-Security-Policy refused part of the docs"
    assert offline.errors == []


def test_redoc_renders_every_operation_offline(offline: Offline, server_url: str) -> None:
    page = offline.page
    page.goto(f"{server_url}/redoc")
    page.wait_for_selector("h2 >> text=Search with an image")
    spec = httpx.get(f"{server_url}/openapi.json").json()
    summaries = {op["summary"] for ops in spec["paths"].values() for op in ops.values()}
    titles = {h.inner_text() for h in page.query_selector_all("h2")}
    assert summaries <= titles, summaries - titles
    screenshot(page, "docs-redoc")
    assert offline.refused == [], "the docs asked another site"
    # ReDoc tries to show its makers' logo from their site: the policy refuses it (nothing
    # leaves the browser) and ReDoc drops the image. It also injects the styles of a
    # scrollbar it does not use here (native scrollbars); the policy refuses those too.
    refused = {tuple(v) for v in offline.violations()}
    assert refused <= {
        ("img-src", "https://cdn.redoc.ly/redoc/logo-mini.svg"),
        ("style-src-elem", "inline"),
    }, refused
    assert offline.errors == []
