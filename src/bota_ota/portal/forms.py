"""Turning portal form fields into the services' typed commands, and their errors back into messages beside
the fields: the device filter (groups, rollouts), comma-separated lists, pydantic errors by form field."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from bota_ota.accounts.models import User
from bota_ota.core.device_models import DEVICE_MODELS

# The device filter's keys a portal form offers, as form fields of the same names ("tags" comma-separated).
FILTER_FIELDS = ("model", "tags", "firmware_version", "firmware_below", "seen_within_s", "network", "q")


def split_list(*values: str) -> list[str]:
    """Comma- (or space-) separated values, from one field or several, without empty items."""
    return [item for value in values for item in value.replace(",", " ").split() if item]


def filter_from_form(form: Mapping[str, str], keys: tuple[str, ...] = FILTER_FIELDS) -> dict[str, Any]:
    """The filter JSON the form describes: empty fields left out, tags split. Validation is the schema's."""
    out: dict[str, Any] = {}
    for key in keys:
        value = (form.get(key) or "").strip()
        if not value:
            continue
        out[key] = split_list(value) if key == "tags" else value
    return out


def field_errors(exc: ValidationError, name_for: Callable[[tuple[Any, ...]], str]) -> dict[str, str]:
    """The first message per form field (``name_for`` maps a pydantic location to the field's name)."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = name_for(tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "not a field of this form"
        errors.setdefault(field, message)
    return errors


def filter_summary(f: Mapping[str, Any] | None) -> str:
    """A device filter in words, for lists: ``model Bota Pin · tags beta, eu · below 1.2.0``."""
    if not f:
        return "every device"
    parts = []
    for key, value in f.items():
        if key == "model":
            parts.append(f"model {DEVICE_MODELS.get(value, value)}")
        elif key == "tags":
            parts.append("tags " + ", ".join(value))
        elif key == "ids":
            parts.append(f"{len(value)} listed devices")
        elif key == "firmware_version":
            parts.append(f"firmware {value}")
        elif key == "firmware_below":
            parts.append(f"firmware below {value}")
        elif key == "seen_within_s":
            parts.append(f"seen within {duration(int(value))}")
        elif key == "network":
            parts.append(f"on {value}")
        elif key == "q":
            parts.append(f"matching “{value}”")
        else:
            parts.append(f"{key} {value}")
    return " · ".join(parts)


def duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def detail_text(detail: Mapping[str, Any] | None) -> str:
    """An event's detail as ``key value · key value`` (nested values as compact JSON)."""
    if not detail:
        return ""
    parts = []
    for key, value in detail.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return " · ".join(parts)


def pct(value: float) -> str:
    return f"{value:g}"


def sentence(text: str) -> str:
    """A service's message as the portal shows it: capitalised, ending with a full stop."""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def actor(user: User) -> str:
    """How the audit log names a portal user's action."""
    return f"user:{user.email}"
