"""Portal: rollouts — the list, the Deploy form with its live preview (and the rollout's delivery policy), the
rollout page (live: stages with applied, superseded, retrying and deferred devices, failures by error, the event
history) and the operator's actions (pause, resume, advance, retry, cancel)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from bota_ota.core.device_models import DEVICE_MODELS
from bota_ota.core.errors import Conflict, DomainError, NotFound
from bota_ota.devices import groups as group_service
from bota_ota.firmware import security
from bota_ota.firmware import service as firmware
from bota_ota.firmware.models import Release
from bota_ota.firmware.policy import DEFERRALS
from bota_ota.ota.words import deferral_label
from bota_ota.portal.auth import CsrfChecked, PortalUser, flash
from bota_ota.portal.common import PagingDep, listing, pages, render, require
from bota_ota.portal.forms import field_errors, filter_from_form, split_list
from bota_ota.rollouts import service as rollouts
from bota_ota.rollouts.models import OPEN_STATUSES
from bota_ota.rollouts.schemas import (
    DEFAULT_STAGE_WINDOW_S,
    PreviewRequest,
    RolloutCreate,
    RolloutOut,
    RolloutTarget,
)
from bota_ota.web.deps import SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)

ROLLOUT_STATUSES = ("scheduled", "running", "paused", "completed", "cancelled")
# The rollout filter's keys the form offers besides the model, which is always the release's.
TARGET_FILTER_FIELDS = ("tags", "firmware_below", "seen_within_s", "network")
DEFAULTS = {
    "target_kind": "filter",
    "stages": "1, 10, 100",
    "success_threshold_pct": "95",
    "failure_threshold_pct": "5",
    "failure_min_devices": "3",
    "stage_window_h": str(DEFAULT_STAGE_WINDOW_S // 3600),
    "advance": "auto",
    "include_new_devices": "on",
}
MAX_WINDOW_H = 90 * 24
# The delivery policy's form fields, by the policy's key; a field left empty (unchecked) does not override.
POLICY_FIELDS = {
    "min_battery": "policy_min_battery",
    "networks": "policy_wifi_only",
    "defer_while_unsynced": "policy_defer_while_unsynced",
}
BATTERY_MESSAGE = "the minimum battery is a whole percentage from 0 to 100"
# Why a pending update waits (firmware/policy.py DEFERRALS), in a few plain words for the stage table.
WINDOW_MESSAGE = f"the stage window is from 1 minute (0.02 hours) to 90 days ({MAX_WINDOW_H} hours)"

# What each action is called, which statuses allow it (as the service checks), and what the flash says.
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pause": ("Pause", ("scheduled", "running")),
    "resume": ("Resume", ("paused",)),
    "advance": ("Advance", ("running",)),
    "retry-failed": ("Retry failed", ("running", "paused")),
    "cancel": ("Cancel", OPEN_STATUSES),
}


async def _form(request: Request) -> dict[str, str]:
    """The posted form's text fields (CsrfChecked has read the body already; Starlette keeps it)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}


FormData = Annotated[dict[str, str], Depends(_form)]


# ---- the form -----------------------------------------------------------------------------------------------


def _target(form: Mapping[str, str], release: Release) -> tuple[RolloutTarget | None, dict[str, str]]:
    if form.get("target_kind") == "group":
        if not form.get("group_id"):
            return None, {"group_id": "Choose a group."}
        try:
            return RolloutTarget(group_id=form["group_id"]), {}
        except ValidationError as exc:
            return None, field_errors(exc, lambda loc: "group_id")
    try:
        f = {"model": release.model, **filter_from_form(form, TARGET_FILTER_FIELDS)}
        return RolloutTarget.model_validate({"filter": f}), {}
    except ValidationError as exc:
        return None, field_errors(exc, lambda loc: str(loc[1]) if len(loc) > 1 else "target")


def _stages(form: Mapping[str, str]) -> list[str]:
    return [s.rstrip("%") for s in split_list(form.get("stages", ""))]


def _policy(form: Mapping[str, str]) -> dict[str, Any] | None:
    """The delivery policy overrides the form gives (the schema checks them), or None when it gives none."""
    policy: dict[str, Any] = {}
    battery = form.get(POLICY_FIELDS["min_battery"], "").strip().rstrip("%").strip()
    if battery:
        policy["min_battery"] = battery
    if form.get(POLICY_FIELDS["networks"]) == "on":
        policy["networks"] = ["wifi"]
    if form.get(POLICY_FIELDS["defer_while_unsynced"]) == "on":
        policy["defer_while_unsynced"] = True
    return policy or None


def _field_for(loc: tuple[Any, ...]) -> str:
    """The form field of a pydantic location in RolloutCreate."""
    if loc[0] == "stage_window_s":
        return "stage_window_h"
    if loc[0] == "delivery_policy":
        return POLICY_FIELDS.get(str(loc[1]) if len(loc) > 1 else "", POLICY_FIELDS["min_battery"])
    return str(loc[0])


def _rollout_body(form: Mapping[str, str], release: Release) -> tuple[RolloutCreate | None, dict[str, str]]:
    """The form as the service's command, or the messages per form field."""
    target, errors = _target(form, release)
    raw: dict[str, Any] = {
        "name": form.get("name", ""),
        "release_id": release.id,
        "target": target or RolloutTarget(group_id="-"),  # a stand-in, so the other fields are checked too
        "stages": _stages(form),
        "advance": form.get("advance") or "auto",
        "include_new_devices": form.get("include_new_devices") == "on",
        "delivery_policy": _policy(form),
    }
    if not raw["stages"]:
        errors["stages"] = "Give the stages as cumulative percentages, e.g. 1, 10, 100."
    for key in ("success_threshold_pct", "failure_threshold_pct", "failure_min_devices"):
        value = form.get(key, "").strip().rstrip("%")
        if value:
            raw[key] = value
    window = form.get("stage_window_h", "").strip()
    if window:
        try:
            hours = float(window)
            if not 0 < hours <= MAX_WINDOW_H:
                raise ValueError
            raw["stage_window_s"] = round(hours * 3600)
        except (ValueError, OverflowError):
            errors["stage_window_h"] = WINDOW_MESSAGE
    try:
        body = RolloutCreate.model_validate(raw)
    except ValidationError as exc:
        plain = {"stage_window_h": WINDOW_MESSAGE, POLICY_FIELDS["min_battery"]: BATTERY_MESSAGE}
        for field, message in field_errors(exc, _field_for).items():
            errors.setdefault(field, plain.get(field, message))
        return None, errors
    return (body, {}) if not errors else (None, errors)


def _preview(session: Session, form: Mapping[str, str], release: Release) -> dict[str, Any]:
    """The preview fragment's context: the counts, or why there are none."""
    if release.artifact("bin") is None:
        return {"preview": None, "problem": "This release has no .bin file, so it cannot be rolled out."}
    target, errors = _target(form, release)
    if target is None:
        return {"preview": None, "problem": "; ".join(errors.values())}
    stages = _stages(form) or ["100"]
    try:
        request = PreviewRequest.model_validate({"release_id": release.id, "target": target, "stages": stages})
        stage_problem = None
    except ValidationError as exc:  # bad stages: still count the devices, against a single stage
        request = PreviewRequest(release_id=release.id, target=target, stages=[100.0])
        stage_problem = "; ".join(field_errors(exc, lambda loc: "stages").values())
    try:
        preview = rollouts.preview(session, request)
    except DomainError as exc:  # a group deleted meanwhile
        return {"preview": None, "problem": exc.detail}
    return {"preview": preview, "problem": None, "stage_problem": stage_problem}


def _form_context(session: Session, release: Release, form: Mapping[str, str]) -> dict[str, Any]:
    groups, _ = group_service.list_groups(session, limit=1000)
    return {"release": release, "form": form, "groups": groups, "deployable": release.artifact("bin") is not None}


@router.get("/rollouts/new", response_class=HTMLResponse)
def new_rollout_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    release_id: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    require(user, "operator")
    if not release_id:  # no release chosen yet: choose one first
        with_bin = [r for r in firmware.list_releases(session) if r.artifact("bin")]
        # A release signed by a revoked key or below its model's security floor cannot be deployed.
        releases = [r for r in with_bin if security.unfit_reason(session, r) is None]
        unfit = len(with_bin) - len(releases)
        return render(request, "rollout_choose.html", user=user, releases=releases, unfit=unfit)
    release = firmware.get_release(session, release_id)
    form = {**DEFAULTS, "name": f"{DEVICE_MODELS[release.model]} {release.version}"}
    ctx = _form_context(session, release, form)
    errors = {} if ctx["deployable"] else {"release_id": "This release has no .bin file, so it cannot be rolled out."}
    return render(
        request, "rollout_new.html", status_code=200 if ctx["deployable"] else 422, user=user, errors=errors,
        **ctx, **_preview(session, form, release),
    )  # fmt: skip


@router.post("/rollouts/new", response_class=HTMLResponse, dependencies=[CsrfChecked])
def create_rollout(
    request: Request, user: PortalUser, session: SessionDep, settings: SettingsDep, form: FormData
) -> Response:
    require(user, "operator")
    release = firmware.get_release(session, form.get("release_id", "")[:64] or "-")
    body, errors = _rollout_body(form, release)
    status = 422
    if body is not None:
        try:
            rollout = rollouts.create_rollout(session, body, settings, actor=f"user:{user.email}")
            session.commit()
        except DomainError as exc:
            session.rollback()
            field = {"target.group_id": "group_id"}.get(exc.field or "", exc.field or "form")
            errors, status = {field: exc.detail}, exc.status
        else:
            flash(request, f"Rollout “{rollout.name}” created: {DEVICE_MODELS[rollout.model]} {rollout.version}.")
            return RedirectResponse(f"/rollouts/{rollout.id}", status_code=303)
    ctx = _form_context(session, release, form)
    return render(
        request, "rollout_new.html", status_code=status, user=user, errors=errors, **ctx,
        **_preview(session, form, release),
    )  # fmt: skip


@router.get("/rollouts/preview", response_class=HTMLResponse)
def preview_fragment(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    release_id: Annotated[str, Query(max_length=64)] = "",
    target_kind: Annotated[str, Query(max_length=16)] = "filter",
    group_id: Annotated[str, Query(max_length=64)] = "",
    tags: Annotated[str, Query(max_length=1000)] = "",
    firmware_below: Annotated[str, Query(max_length=100)] = "",
    seen_within_s: Annotated[str, Query(max_length=20)] = "",
    network: Annotated[str, Query(max_length=20)] = "",
    stages: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    """The live count beside the form: HTMX asks for it as the fields change (a read: any role may)."""
    release = firmware.get_release(session, release_id or "-")
    form = {
        "target_kind": target_kind, "group_id": group_id, "tags": tags, "firmware_below": firmware_below,
        "seen_within_s": seen_within_s, "network": network, "stages": stages,
    }  # fmt: skip
    return render(request, "_rollout_preview.html", user=user, release=release, **_preview(session, form, release))


# ---- the list -----------------------------------------------------------------------------------------------


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(
    request: Request,
    user: PortalUser,
    session: SessionDep,
    paging: PagingDep,
    status: Annotated[str, Query(max_length=16)] = "",
) -> HTMLResponse:
    status_filter = status if status in ROLLOUT_STATUSES else ""
    rows, total = rollouts.list_rollouts(
        session, status=status_filter or None, limit=paging.per_page, offset=paging.offset
    )
    if not rows and total:  # a page past the end shows the last one
        last = pages(total, paging.per_page)
        rows, total = rollouts.list_rollouts(
            session, status=status_filter or None, limit=paging.per_page, offset=(last - 1) * paging.per_page
        )
    return render(
        request, "rollouts.html", user=user, rollouts=[rollouts.rollout_out(session, r) for r in rows],
        statuses=ROLLOUT_STATUSES, **listing(total, paging, {"status": status_filter}),
    )  # fmt: skip


def open_rollouts(session: Session) -> list[RolloutOut]:
    """Running and paused rollouts, newest first: the dashboard's card."""
    out = []
    for status in ("running", "paused"):
        rows, _ = rollouts.list_rollouts(session, status=status, limit=20)
        out += [rollouts.rollout_out(session, r) for r in rows]
    return sorted(out, key=lambda r: r.created_at, reverse=True)


# ---- the rollout page ------------------------------------------------------------------------------------------


def deferral_list(by_reason: Mapping[str, int]) -> list[tuple[str, int]]:
    """Deferred devices by reason in plain words, in the order the server checks the reasons."""
    order = {reason: k for k, reason in enumerate(DEFERRALS)}
    reasons = sorted(by_reason.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    return [(deferral_label(reason), count) for reason, count in reasons if count]


def policy_words(policy: Mapping[str, Any] | None) -> str:
    """A rollout's delivery policy overrides in words: ``battery at least 50 % · Wi-Fi only``."""
    if not policy:
        return ""
    parts = []
    if "min_battery" in policy:
        parts.append(f"battery at least {policy['min_battery']} % unless charging")
    if "networks" in policy:
        networks = list(policy["networks"])
        parts.append("Wi-Fi only" if networks == ["wifi"] else "over " + " or ".join(networks))
    if "defer_while_unsynced" in policy:
        unsynced = "waits for" if policy["defer_while_unsynced"] else "ignores"
        parts.append(f"{unsynced} unsynced recordings")
    return " · ".join(parts)


def _page_context(session: Session, rollout_id: str) -> dict[str, Any]:
    rollout = rollouts.get_rollout(session, rollout_id)
    detail = rollouts.rollout_detail(session, rollout)
    group = detail.target.get("group_id")
    return {
        "r": detail,
        "live": detail.status in OPEN_STATUSES,  # a finished rollout's page stops polling
        "actions": {slug: label for slug, (label, allowed) in ACTIONS.items() if detail.status in allowed},
        "group_exists": bool(group) and _group_exists(session, str(group)),
        "deferral_list": deferral_list,
        "policy_words": policy_words,
    }


def _group_exists(session: Session, group_id: str) -> bool:
    try:
        group_service.get_group(session, group_id)
    except NotFound:
        return False
    return True


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(request: Request, rollout_id: str, user: PortalUser, session: SessionDep) -> HTMLResponse:
    """The rollout with its stages, totals, failures and history; its regions re-render themselves from this
    page while it is open (``live`` in the template)."""
    return render(request, "rollout.html", user=user, **_page_context(session, rollout_id))


@router.post("/rollouts/{rollout_id}/{action}", dependencies=[CsrfChecked])
def rollout_action(
    request: Request, rollout_id: str, action: str, user: PortalUser, session: SessionDep, settings: SettingsDep
) -> Response:
    require(user, "operator")
    if action not in ACTIONS:
        raise NotFound(f"no such action: {action}")
    actor = f"user:{user.email}"
    try:
        if action == "pause":
            rollout = rollouts.pause(session, rollout_id, actor=actor)
            message = f"Paused “{rollout.name}”: its pending updates are held."
        elif action == "resume":
            rollout = rollouts.resume(session, rollout_id, settings, actor=actor)
            message = f"Resumed “{rollout.name}”."
        elif action == "advance":
            rollout = rollouts.advance(session, rollout_id, settings, actor=actor)
            message = (
                f"Completed “{rollout.name}”."
                if rollout.status == "completed"
                else f"Started stage {rollout.current_stage + 1} of “{rollout.name}”."
            )
        elif action == "retry-failed":
            n = rollouts.retry_failed(session, rollout_id, actor=actor)
            message = f"Retrying {n} failed device{'' if n == 1 else 's'}."
        else:
            rollout = rollouts.cancel(session, rollout_id, actor=actor)
            message = f"Cancelled “{rollout.name}” and its pending updates."
        session.commit()
    except Conflict as exc:  # the page was stale: the status changed meanwhile
        session.rollback()
        flash(request, f"Not done: {exc.detail}.", error=True)
    else:
        flash(request, message)
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)
