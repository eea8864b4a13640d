"""Every main portal page, with data in it, passes axe-core (the npm package, pinned in
tests/browser/package.json) with no serious or critical violation at laptop width, and no request any page
makes fails (a missing favicon, script or stylesheet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Response

from tests.browser.portal_tour import LAPTOP, Stop, seeded_portal, tour
from tests.browser.support import Portal

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
FAILING_IMPACTS = ("serious", "critical")
RUN_AXE = """async () => {
    const result = await axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map((n) => n.target.join(" ") + "  " + n.html.slice(0, 160)),
    }));
}"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Portal, list[Stop]]]:
    with seeded_portal(tmp_path_factory.mktemp("a11y")) as seeded:
        yield seeded


def axe_script() -> Path:
    if not AXE.is_file():
        pytest.fail(
            f"axe-core is not installed ({AXE} is missing): run `npm ci --prefix tests/browser` (`make test` does it)",
            pytrace=False,
        )
    return AXE


def test_every_page_passes_axe_at_laptop_width(browser: Browser, seeded: tuple[Portal, list[Stop]]) -> None:
    script = axe_script()
    portal, stops = seeded
    problems: list[str] = []
    failed_requests: list[str] = []
    current = {"page": "(start)"}
    wrong_status: list[str] = []

    def note_failure(response: Response) -> None:
        # The pages' own answers are checked by the tour; these are what they load (scripts, styles, icon).
        if response.status >= 400 and not response.request.is_navigation_request():
            failed_requests.append(f"{current['page']}: {response.status} {response.url.removeprefix(portal.url)}")

    # The portal's Content-Security-Policy allows no inline script, and add_script_tag inlines axe.
    context = browser.new_context(base_url=portal.url, viewport=LAPTOP, bypass_csp=True)
    try:
        context.on("response", note_failure)
        for name, page in tour(context, portal, stops, wrong_status, arriving=lambda name: current.update(page=name)):
            page.add_script_tag(path=str(script))
            for v in page.evaluate(RUN_AXE):
                if v["impact"] in FAILING_IMPACTS:
                    nodes = "\n      ".join(v["nodes"][:5])
                    problems.append(f"{name}: {v['id']} ({v['impact']}): {v['help']}\n      {nodes}")
    finally:
        context.close()
    report = [
        ("pages that did not load as expected", wrong_status),
        ("serious or critical axe violations", problems),
        ("requests that failed", failed_requests),
    ]
    assert not (wrong_status or problems or failed_requests), "\n".join(
        f"{title} ({len(items)}):\n  " + "\n  ".join(items) for title, items in report if items
    )
