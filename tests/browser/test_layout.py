"""No main portal page, with data in it, scrolls sideways on a phone (390 px) or a tablet (820 px): wide
tables scroll inside their own regions, never the whole page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ViewportSize

from tests.browser.portal_tour import PHONE, TABLET, Stop, seeded_portal, tour
from tests.browser.support import Portal

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# The page's width against the window's; if wider, the deepest visible elements that stick out past the right
# edge without a scrolling (or clipping) ancestor: the ones to fix.
OVERFLOW = """() => {
    const width = window.innerWidth;
    const scrollWidth = document.documentElement.scrollWidth;
    if (scrollWidth <= width) return null;
    const describe = (el) => {
        let text = el.tagName.toLowerCase();
        if (el.id) text += "#" + el.id;
        if (el.classList.length) text += "." + [...el.classList].join(".");
        return text;
    };
    const path = (el) => {
        const parts = [];
        for (let e = el; e && e !== document.body; e = e.parentElement) parts.unshift(describe(e));
        return parts.slice(-4).join(" > ");
    };
    // A scrolling ancestor clips an element, except an absolutely positioned one whose containing block
    // lies outside that ancestor (a visually hidden label in a wide table's heading, say): that one
    // widens the whole page.
    const clipped = (el) => {
        const position = getComputedStyle(el).position;
        const block = position === "absolute" ? el.offsetParent : el.parentElement;
        if (position === "fixed") return false;
        for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
            const clips = getComputedStyle(p).overflowX !== "visible";
            if (clips && block && (p === block || p.contains(block))) return true;
        }
        return false;
    };
    const sticking = [...document.body.querySelectorAll("*")].filter((el) => {
        const r = el.getBoundingClientRect();
        return r.width > 0 && r.height > 0 && r.right > width + 0.5 && !clipped(el);
    });
    const deepest = sticking.filter((el) => !sticking.some((other) => other !== el && el.contains(other)));
    return {
        scrollWidth, width,
        elements: deepest.slice(0, 5).map(
            (el) => path(el) + " (right edge " + Math.round(el.getBoundingClientRect().right) + " px)"),
    };
}"""


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Portal, list[Stop]]]:
    with seeded_portal(tmp_path_factory.mktemp("layout")) as seeded:
        yield seeded


@pytest.mark.parametrize("viewport", [PHONE, TABLET], ids=["phone-390", "tablet-820"])
def test_no_page_scrolls_sideways(browser: Browser, seeded: tuple[Portal, list[Stop]], viewport: ViewportSize) -> None:
    portal, stops = seeded
    overflowing: list[str] = []
    wrong_status: list[str] = []
    context = browser.new_context(base_url=portal.url, viewport=viewport)
    try:
        for name, page in tour(context, portal, stops, wrong_status):
            found = page.evaluate(OVERFLOW)
            if found:
                where = "\n      ".join(found["elements"]) or "(no single element found)"
                overflowing.append(f"{name}: {found['scrollWidth']} px wide in {found['width']} px\n      {where}")
    finally:
        context.close()
    report = [
        ("pages that did not load as expected", wrong_status),
        (f"wider than {viewport['width']} px", overflowing),
    ]
    assert not (wrong_status or overflowing), "\n".join(
        f"{title} ({len(items)}):\n  " + "\n  ".join(items) for title, items in report if items
    )
