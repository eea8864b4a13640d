"""Fixtures for the portal tests in a real headless Chromium (Debian's package, driven by Playwright).

Playwright's sync API marks its event loop as the running loop of the thread for as long as it lives, which
would break ``asyncio.run`` in other tests on the same pytest-xdist worker. So Playwright and the browser live
for one module at a time (pytest tears module fixtures down before a test of another module runs), and each
test gets a fresh browser context (its own cookies) against its own server process.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.browser.support import LAPTOP, Portal, chromium_executable, launch_chromium
from tests.support.server import ServerProcess, server_env

# HTMX polls the OTA badge every 2 s; give each auto-waiting assertion room on a loaded 2-core CI machine.
expect.set_options(timeout=15_000)

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def chromium() -> str:
    executable = chromium_executable()
    if executable is None:
        message = "Chromium not found (install Debian's `chromium` package, or set BOTA_OTA_CHROMIUM)"
        if os.environ.get("BOTA_OTA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}; BOTA_OTA_REQUIRE_BROWSER=1", pytrace=False)
        pytest.skip(message)
    return executable


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def portal(tmp_path: Path, database_url: str) -> Iterator[Portal]:
    """A fresh ``bota-ota serve`` on the test's database (a migrated SQLite copy or the worker's PostgreSQL)."""
    server = ServerProcess(data_dir=tmp_path / "srv", env=server_env(database_url))
    portal = Portal.start(server)
    try:
        yield portal
    finally:
        portal.close()
        server.stop()


@pytest.fixture
def context(browser: Browser, portal: Portal) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=portal.url, viewport=LAPTOP)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(request: pytest.FixtureRequest, context: BrowserContext, portal: Portal, tmp_path: Path) -> Iterator[Page]:
    page = context.new_page()
    yield page
    reports = request.node.stash.get(_REPORTS, {})
    if "call" in reports and reports["call"].failed:
        # Printed in the teardown section of the failure report: what the browser saw and what the server said.
        shot = tmp_path / "failure.png"
        try:
            page.screenshot(path=shot, full_page=True)
            print(f"browser at {page.url}; screenshot: {shot}")
            print(page.locator("main").inner_text(timeout=2_000)[:2_000])
        except Exception as exc:
            print(f"could not capture the page: {exc}")
        print("--- server log (tail) ---")
        print(portal.server.output()[-4_000:])
