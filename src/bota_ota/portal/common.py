"""What every portal page shares: the template environment, ``render`` and role checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
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
templates.env.filters["pct"] = pct
templates.env.filters["duration"] = duration
templates.env.filters["filter_summary"] = filter_summary
templates.env.filters["detail_text"] = detail_text
templates.env.filters["explain_error"] = explain_error
templates.env.filters["explain_deferral"] = explain_deferral
templates.env.filters["deferral_label"] = deferral_label

PAGE_SIZE = 50


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


def pages(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


def listing(total: int, page: int, filters: dict[str, str]) -> dict[str, Any]:
    """What a filtered, paged list page needs: counts, the filters, and ``query(page=n)`` for its links
    (the filters kept, empty ones left out)."""
    return {
        "total": total,
        "page": page,
        "pages": pages(total),
        "filters": filters,
        "query": lambda **kw: urlencode({k: v for k, v in {**filters, **kw}.items() if v}),
    }
