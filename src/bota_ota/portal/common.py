"""What every portal page shares: the template environment, ``render`` and role checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import humanize
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from bota_ota.accounts.models import User
from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Forbidden
from bota_ota.ota.words import deferral_label, explain_deferral, explain_error
from bota_ota.portal.auth import can, csrf_token
from bota_ota.portal.forms import detail_text, duration, filter_summary, pct

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals["models"] = DEVICE_MODELS
templates.env.filters["crc"] = lambda value: f"{value:08X}"
templates.env.filters["when"] = lambda dt: dt.strftime("%Y-%m-%d %H:%M") + " UTC" if dt else "never"
templates.env.filters["bytes"] = lambda n: f"{n:,} B"
templates.env.filters["size"] = lambda n: humanize.naturalsize(n) if n is not None else "—"
templates.env.filters["ago"] = lambda dt: relative_time(dt)
templates.env.filters["iso"] = lambda dt: _aware(dt).isoformat() if dt else ""
templates.env.filters["pct"] = pct
templates.env.filters["duration"] = duration
templates.env.filters["filter_summary"] = filter_summary
templates.env.filters["detail_text"] = detail_text
templates.env.filters["explain_error"] = explain_error
templates.env.filters["explain_deferral"] = explain_deferral
templates.env.filters["deferral_label"] = deferral_label

PAGE_SIZE = 50
PAGE_SIZES = (25, 50, 100, 200)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def relative_time(dt: datetime | None, now: datetime | None = None) -> str:
    """Words like "5 minutes ago" (the portal shows the absolute UTC time on hover; portal.js keeps the words fresh)."""
    if dt is None:
        return "never"
    return humanize.naturaltime(_aware(dt), when=now or datetime.now(UTC))


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("user", None)
    context["csrf_token"] = csrf_token(request)
    context["can"] = can
    context["flash"] = request.session.pop("flash", None)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def require(user: User, role: str) -> None:
    """Server-side role check behind every action the templates hide from lesser roles."""
    if not can(user, role):
        raise Forbidden(f"this needs the {role} role; you are {user.role}")


def pages(total: int, per_page: int = PAGE_SIZE) -> int:
    return max(1, -(-total // per_page))


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


@dataclass(frozen=True)
class Paging:
    """A list page's position, size and order, read leniently from the query string: a page number, size or
    sort a browser sends that makes no sense falls back to the default instead of ending on an error page."""

    page: int = 1
    per_page: int = PAGE_SIZE
    sort: str = ""

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def order(self, allowed: Sequence[str], default: str) -> tuple[str, bool]:
        """A valid sort key and whether it is descending: ``-last_seen`` → ("last_seen", True)."""
        raw = self.sort or default
        key, descending = raw.removeprefix("-"), raw.startswith("-")
        if key not in allowed:
            key, descending = default.removeprefix("-"), default.startswith("-")
        return key, descending


def paging(request: Request) -> Paging:
    params = request.query_params
    page = min(max(_int(params.get("page"), 1), 1), 100_000)
    per_page = _int(params.get("per_page"), PAGE_SIZE)
    sort = params.get("sort", "")[:32]
    return Paging(page=page, per_page=per_page if per_page in PAGE_SIZES else PAGE_SIZE, sort=sort)


PagingDep = Annotated[Paging, Depends(paging)]


def listing(total: int, paging: Paging | int, filters: dict[str, str], *, sort: str = "") -> dict[str, Any]:
    """What a filtered, paged list page needs: counts, the filters, and ``query(page=n)`` for its links
    (the filters, page size and order kept; empty and default ones left out). A page past the last one shows
    the last one."""
    if isinstance(paging, int):
        paging = Paging(page=paging)
    last = pages(total, paging.per_page)
    kept = {**filters, "sort": sort, "per_page": "" if paging.per_page == PAGE_SIZE else str(paging.per_page)}
    return {
        "total": total,
        "page": min(paging.page, last),
        "pages": last,
        "per_page": paging.per_page,
        "page_sizes": PAGE_SIZES,
        "sort": sort,
        "filters": filters,
        "query": lambda **kw: urlencode({k: v for k, v in {**kept, **kw}.items() if v}, doseq=True),
    }
