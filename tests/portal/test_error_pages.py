"""Errors on portal pages are pages a person can leave: a browser gets ``error.html`` (status, plain title,
the detail, the navigation when signed in, links back); API clients keep problem JSON; an HTMX request gets a
one-line message retargeted to ``#live-error``."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.portal.pages import Element, add_user, html
from tests.portal.support import sign_in
from tests.support.factories import ApiClient

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def error_page(r: Any, status: int) -> Element:
    assert r.status_code == status, (r.request.url, r.text[:500])
    assert r.headers["content-type"].startswith("text/html"), r.headers["content-type"]
    return html(r)


def heading(page: Element) -> str:
    h1 = page.find("h1")
    assert h1 is not None
    return h1.text


def has_main_nav(page: Element) -> bool:
    return page.find("nav", aria_label="Main") is not None


def back_links(page: Element) -> dict[str, str]:
    nav = page.find("nav", aria_label="Where to go from here")
    assert nav is not None
    return {a.text: a.attr("href") or "" for a in nav.find_all("a")}


@pytest.mark.parametrize("path", ["/firmware/upload", "/devices/new", "/users", "/tokens", "/rollouts/new"])
def test_a_viewer_gets_an_html_403_page_with_the_navigation(client: TestClient, sessions: Any, path: str) -> None:
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    page = error_page(client.get(path, headers=BROWSER), 403)
    assert heading(page) == "You do not have permission"
    assert "This needs the operator role; you are viewer." in page.by_id("error-detail").text or (
        "This needs the admin role; you are viewer." in page.by_id("error-detail").text
    )
    assert has_main_nav(page)
    links = back_links(page)
    assert links["Dashboard"] == "/"
    assert page.find("link", rel="icon") is not None
    # The same request from an API client (no text/html in Accept) keeps problem JSON.
    r = client.get(path)
    assert (r.status_code, r.headers["content-type"]) == (403, "application/problem+json")


def test_a_viewer_posting_an_action_gets_the_403_page(client: TestClient, sessions: Any, admin: ApiClient) -> None:
    admin.device(device_id="BP-E-1")
    add_user(sessions, "view@example.com", "viewer")
    sign_in(client, "view@example.com", "correct-horse")
    token = html(client.get("/devices/BP-E-1")).find("input", name="csrf_token")
    assert token is not None
    r = client.post("/devices/BP-E-1/tags", data={"csrf_token": token.attr("value"), "tags": "x"}, headers=BROWSER)
    page = error_page(r, 403)
    assert heading(page) == "You do not have permission"
    assert back_links(page) == {"Dashboard": "/", "Devices": "/devices"}


@pytest.mark.parametrize(
    ("path", "title", "section"),
    [
        ("/devices/BP-NOPE", "No such device", ("Devices", "/devices")),
        ("/rollouts/no-such-rollout", "No such rollout", ("Rollouts", "/rollouts")),
        ("/groups/no-such-group", "No such group", ("Groups", "/groups")),
        ("/no/such/page", "No such page", None),
    ],
)
def test_unknown_things_get_a_404_page_that_names_them(
    client: TestClient, portal_user: tuple[str, str], path: str, title: str, section: tuple[str, str] | None
) -> None:
    sign_in(client, *portal_user)
    page = error_page(client.get(path, headers=BROWSER), 404)
    assert heading(page) == title
    assert page.by_id("error-detail").text
    assert has_main_nav(page)
    expected = {"Dashboard": "/"}
    if section:
        expected[section[0]] = section[1]
    assert back_links(page) == expected


def test_a_bad_query_and_a_wrong_method_get_pages(client: TestClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    page = error_page(client.get("/audit", params={"actor": "x" * 300}, headers=BROWSER), 422)
    assert heading(page) == "That request is not valid"
    assert "actor" in page.by_id("error-detail").text
    assert back_links(page) == {"Dashboard": "/", "Audit log": "/audit"}

    r = client.get("/logout", headers=BROWSER)
    page = error_page(r, 405)
    assert heading(page) == "That cannot be done here"
    assert "POST" in r.headers["allow"]


def test_a_server_error_gets_a_page(app: FastAPI, sessions: Any) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken-page", broken)
    add_user(sessions, "view@example.com", "viewer")
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as client:
        sign_in(client, "view@example.com", "correct-horse")
        page = error_page(client.get("/broken-page", headers=BROWSER), 500)
        assert heading(page) == "Something went wrong on the server"
        assert "the error was logged" in page.by_id("error-detail").text
        assert has_main_nav(page)
        r = client.get("/broken-page")
        assert (r.status_code, r.headers["content-type"]) == (500, "application/problem+json")


def test_a_form_sent_after_the_session_ended_says_so_and_leads_back(client: TestClient) -> None:
    r = client.post(
        "/devices/BP-1/tags",
        data={"tags": "x", "csrf_token": "from-an-old-session"},
        headers={**BROWSER, "Referer": "http://testserver/devices/BP-1?tab=overview"},
    )
    page = error_page(r, 403)
    assert heading(page) == "The form has expired"
    assert "reload the page" in page.by_id("error-detail").text
    assert back_links(page) == {"Sign in": "/login?next=%2Fdevices%2FBP-1%3Ftab%3Doverview"}


def test_anonymous_visitors_get_a_page_without_the_navigation(client: TestClient) -> None:
    page = error_page(client.get("/no/such/page", headers=BROWSER), 404)
    assert not has_main_nav(page)
    assert back_links(page) == {"Sign in": "/login"}


@pytest.mark.parametrize(
    "path", ["/api/v1/devices/BP-NOPE", "/api/device/v1/heartbeat", "/dl/nothing", "/static/nothing.css"]
)
def test_apis_downloads_and_static_files_keep_problem_json(client: TestClient, admin: ApiClient, path: str) -> None:
    r = client.get(path, headers={**BROWSER, **admin.headers})
    assert r.status_code >= 400
    assert not r.headers["content-type"].startswith("text/html"), (path, r.headers["content-type"])


def test_an_htmx_request_gets_its_message_retargeted(client: TestClient, portal_user: tuple[str, str]) -> None:
    sign_in(client, *portal_user)
    r = client.get("/devices/BP-NOPE/ota-status", headers={"HX-Request": "true"})
    assert r.status_code == 404
    assert r.headers["hx-retarget"] == "#live-error"
    assert r.headers["hx-reswap"] == "innerHTML"
    assert r.headers["hx-reselect"] == "unset"
    fragment = html(r)
    alert = fragment.find("p", role="alert")
    assert alert is not None and alert.text.startswith("No such device:")
    assert fragment.find("nav") is None  # a message, not a page


def test_the_favicon_is_served(client: TestClient) -> None:
    r = client.get("/favicon.ico", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (301, "/static/favicon.svg")
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.startswith("<svg")
