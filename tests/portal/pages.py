"""Reading portal pages in tests: a small HTML tree (stdlib ``html.parser``), portal users, a second browser,
and a multipart body shaped exactly like the one a browser sends for a plain (no JavaScript) form post."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from bota_ota.accounts.service import create_user
from bota_ota.core.database import session_scope

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


@dataclass(eq=False)
class Element:
    tag: str
    attrs: dict[str, str | None]
    parts: list[str] = field(default_factory=list)
    descendants: list[Element] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text inside, whitespace collapsed (entities decoded)."""
        return " ".join("".join(self.parts).split())

    def attr(self, name: str) -> str | None:
        return self.attrs.get(name)

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Element]:
        """Descendants with this tag (any if None) whose attributes equal these (``class_`` for class)."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [
            e
            for e in self.descendants
            if (tag is None or e.tag == tag) and all(k in e.attrs and e.attrs[k] == v for k, v in wanted.items())
        ]

    def find(self, tag: str | None = None, **attrs: str | None) -> Element | None:
        found = self.find_all(tag, **attrs)
        return found[0] if found else None

    def by_id(self, element_id: str) -> Element:
        found = self.find_all(id=element_id)
        assert len(found) == 1, f"expected one element with id={element_id!r}, found {len(found)}"
        return found[0]

    def has_id(self, element_id: str) -> bool:
        return bool(self.find_all(id=element_id))

    def buttons(self) -> list[str]:
        return [b.text for b in self.find_all("button")]

    def links(self) -> list[str]:
        return [a.attrs.get("href") or "" for a in self.find_all("a")]

    def form_actions(self) -> list[str]:
        return [f.attrs.get("action") or "" for f in self.find_all("form")]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack: list[Element] = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        for open_element in self.stack:
            open_element.descendants.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        for open_element in self.stack:
            open_element.descendants.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for open_element in self.stack:
            open_element.parts.append(data)


def html(source: str | httpx.Response) -> Element:
    """The page as a tree of elements (the root is a pseudo element holding everything)."""
    builder = _TreeBuilder()
    builder.feed(source if isinstance(source, str) else source.text)
    builder.close()
    return builder.root


def field_error(page: Element, name: str) -> str:
    """The message shown beside a form field (``<p id="NAME-error">``), '' when it is hidden or empty."""
    element = page.by_id(f"{name}-error")
    return "" if "hidden" in element.attrs else element.text


def flash(page: Element) -> tuple[str, bool] | None:
    """The one-time message at the top of a page and whether it is an error."""
    main = page.by_id("main")
    first = main.descendants[0] if main.descendants else None
    classes = (first.attrs.get("class") or "").split() if first is not None else []
    if first is None or first.tag != "p" or "flash" not in classes:
        return None
    return first.text, "flash-error" in classes


def table_rows(page: Element, scope: Element | None = None) -> list[list[str]]:
    """Each body row of the tables (in ``scope``, else the whole page) as the texts of its cells."""
    rows = []
    for tbody in (scope or page).find_all("tbody"):
        for tr in tbody.find_all("tr"):
            rows.append([cell.text for cell in tr.descendants if cell.tag in ("td", "th")])
    return rows


# ---- people and browsers --------------------------------------------------------------------------------


def add_user(sessions: sessionmaker[Session], email: str, role: str, password: str = "correct-horse") -> str:
    with session_scope(sessions) as session:
        user = create_user(session, email=email, password=password, role=role, actor="test")
        return user.id


def browser(app: FastAPI) -> TestClient:
    """Another browser (its own cookies) on the same app, e.g. a second user signed in at the same time."""
    return TestClient(app, base_url="http://testserver")


# ---- a plain browser form post ------------------------------------------------------------------------------

FormPart = tuple[str, str | tuple[str, bytes]]


def browser_multipart(parts: Sequence[FormPart]) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser builds it from a form, in this order: text fields as
    ``name=value``; file inputs as ``(filename, content)`` — an empty file input is ``("", b"")``, which a
    browser still sends (``filename=""``, no content). Returns (body, content type)."""
    boundary = "----WebKitFormBoundary" + secrets.token_hex(8)
    chunks: list[bytes] = []
    for name, value in parts:
        chunks.append(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, content = value
            chunks.append(
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            chunks.append(content)
        else:
            chunks.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            chunks.append(value.encode())
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
