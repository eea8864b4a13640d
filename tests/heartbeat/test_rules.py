"""The heartbeat's pure rules, table by table: ``plan_heartbeat`` / ``material_change`` / ``Plan.writes`` in
bota_ota.heartbeat.rules, and the replies built from a plan (``build_reply``, ``routine_reply``).

Each table encodes one step of docs/device-protocol.md ("What the server does with a heartbeat"). No database,
no app, no network: snapshots and heartbeats in, a plan (or a reply) out.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bota_ota.core.errors import NotFound
from bota_ota.firmware.policy import Deferral, DeliveryPolicy
from bota_ota.heartbeat.presence import PendingTelemetry, TelemetryBuffer
from bota_ota.heartbeat.reply import HeartbeatCall, ManifestSigner, build_reply, routine_reply
from bota_ota.heartbeat.rules import (
    AssignmentView,
    BinRef,
    DeviceSnapshot,
    Outcome,
    Plan,
    material_change,
    plan_heartbeat,
)
from bota_ota.heartbeat.schemas import Heartbeat, OtaReport
from bota_ota.storage.local import DOWNLOAD_PREFIX, LocalBlobStore, verify

# A fixed "now": the rules have no clock of their own, so every expiry below is relative to this.
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=1)
LATER = NOW + timedelta(minutes=10)

ASG = "asg-1"
REC = "recording"
BIN = BinRef(
    storage_key="firmware/acme-v1.1.0.bin",
    size=123_456,
    crc32=0xDEADBEEF,
    sha256="ab" * 32,
    signature=None,
    key_id=None,
    security_version=0,
)


def device(**changes: object) -> DeviceSnapshot:
    """A device seen a minute ago, on v1.0.0, not recording, not in BLE mode, with no assignment."""
    base = DeviceSnapshot(
        id="dev-1",
        last_seen_at=EARLIER,
        firmware_version="v1.0.0",
        recording=False,
        ble_connected=False,
        assignment=None,
        bin=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def pending(**changes: object) -> AssignmentView:
    base = AssignmentView(
        id=ASG,
        version="v1.1.0",
        status="pending",
        ota_state=None,
        progress=None,
        delivery_expires_at=None,
        release_id="rel-1",
        held=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def delivered(**changes: object) -> AssignmentView:
    """Delivered, with a recorded URL that is still valid at NOW unless a case says otherwise."""
    return replace(pending(status="delivered", delivery_expires_at=LATER), **changes)  # type: ignore[arg-type]


def hb(version: str = "v1.0.0", *, recording: bool | None = False, ota: OtaReport | None = None) -> Heartbeat:
    return Heartbeat(firmware_version=version, recording=recording, battery=80, network="wifi", rssi=-60, ota=ota)


def report(state: str, progress: int | None = None, *, assignment_id: str = ASG) -> OtaReport:
    return OtaReport.model_validate({"assignment_id": assignment_id, "state": state, "progress": progress})


def check(dev: DeviceSnapshot, asg: AssignmentView | None, beat: Heartbeat, expected: Plan, writes: bool) -> None:
    plan = plan_heartbeat(dev, asg, beat, NOW)
    assert plan == expected
    assert plan.writes is writes


# --- Step 1: telemetry. What must be written at once rather than behind. -------------------------------------
# No assignment here, so the outcome is "none" (step 2) and only material telemetry can make the plan write.

MATERIAL = [
    pytest.param(device(), hb(), False, id="routine-same-version"),
    pytest.param(device(), hb(recording=None), False, id="routine-recording-omitted-means-false"),
    pytest.param(device(), hb(" v1.0.0 "), False, id="routine-version-with-whitespace"),
    pytest.param(device(recording=True), hb(recording=True), False, id="routine-still-recording"),
    pytest.param(device(last_seen_at=None), hb(), True, id="first-heartbeat"),
    pytest.param(device(firmware_version=None), hb(), True, id="first-version-reported"),
    pytest.param(device(), hb("v1.0.1"), True, id="other-firmware-version"),
    # The row stores the string as sent; another spelling changes what people see, so it is written at once.
    pytest.param(device(), hb("1.0.0"), True, id="same-version-other-spelling"),
    pytest.param(device(), hb(recording=True), True, id="recording-starts"),
    pytest.param(device(recording=True), hb(recording=False), True, id="recording-ends"),
    pytest.param(device(recording=True), hb(recording=None), True, id="recording-ends-omitted"),
    pytest.param(device(ble_connected=True), hb(), True, id="ble-mode-ends"),
]


@pytest.mark.parametrize(("dev", "beat", "material"), MATERIAL)
def test_material_change(dev: DeviceSnapshot, beat: Heartbeat, material: bool) -> None:
    assert material_change(dev, beat) is material
    check(dev, None, beat, Plan(material, None, "none"), writes=material)


# --- Plan.writes: material telemetry, recorded progress, or a recorded outcome. ------------------------------

WRITES_BY_OUTCOME = [
    pytest.param("none", False, id="none"),
    pytest.param("hold", False, id="hold"),
    pytest.param("withheld", False, id="withheld"),
    pytest.param("defer", False, id="defer"),
    pytest.param("resend", False, id="resend"),
    pytest.param("apply", True, id="apply"),
    pytest.param("supersede", True, id="supersede"),
    pytest.param("fail", True, id="fail"),
    pytest.param("deliver", True, id="deliver"),
    pytest.param("redeliver", True, id="redeliver"),
]


@pytest.mark.parametrize(("outcome", "writes"), WRITES_BY_OUTCOME)
def test_writes_by_outcome(outcome: Outcome, writes: bool) -> None:
    assert Plan(False, None, outcome).writes is writes
    assert Plan(True, None, outcome).writes is True


WRITES_BY_PROGRESS = [
    pytest.param(Plan(False, report("verifying"), "hold"), True, id="state-change-writes"),
    pytest.param(Plan(False, report("downloading", 50), "resend", True), False, id="percent-only-written-behind"),
    pytest.param(Plan(True, report("downloading", 50), "resend", True), True, id="percent-only-but-material"),
    pytest.param(Plan(False, report("downloading", 50), "redeliver", True), True, id="percent-only-but-recorded"),
]


@pytest.mark.parametrize(("plan", "writes"), WRITES_BY_PROGRESS)
def test_writes_by_progress(plan: Plan, writes: bool) -> None:
    assert plan.writes is writes


# --- Step 3: the reported version is the assigned one → applied, whatever else is going on. ------------------

APPLIED = [
    pytest.param(delivered(), hb("v1.1.0"), id="delivered-same-spelling"),
    pytest.param(delivered(), hb("1.1.0"), id="delivered-reported-without-v"),
    pytest.param(delivered(version="1.1.0"), hb("v1.1.0"), id="delivered-assigned-without-v"),
    pytest.param(delivered(), hb("V1.1.0"), id="capital-v"),
    pytest.param(delivered(), hb("v1.1.0+build.7"), id="build-metadata-ignored"),
    pytest.param(pending(), hb("v1.1.0"), id="pending-already-on-it"),
    pytest.param(delivered(), hb("v1.1.0", recording=True), id="while-recording"),
    pytest.param(delivered(), hb("v1.1.0", ota=report("failed")), id="failed-report-loses"),
    pytest.param(delivered(), hb("v1.1.0", ota=report("rebooting")), id="rebooting-report-loses"),
    pytest.param(delivered(delivery_expires_at=EARLIER), hb("v1.1.0"), id="url-expired"),
]


@pytest.mark.parametrize(("asg", "beat"), APPLIED)
def test_applied(asg: AssignmentView, beat: Heartbeat) -> None:
    # The version changed (v1.0.0 → v1.1.0 spelled some way), so the telemetry is material as well.
    check(device(), asg, beat, Plan(True, None, "apply"), writes=True)


NOT_APPLIED = [
    pytest.param(pending(), hb("v1.1.0-rc.1"), "deliver", id="prerelease-is-not-the-release"),
    pytest.param(delivered(), hb("v1.0.9"), "resend", id="older"),
    # A version that is not semver is neither equal nor newer: the assignment goes on.
    pytest.param(pending(), hb("garbage"), "deliver", id="unparsable-reported"),
    pytest.param(pending(), hb("v1.2"), "deliver", id="two-part-version-is-not-semver"),
    pytest.param(pending(version="nightly-42"), hb("v9.0.0"), "deliver", id="unparsable-assigned"),
]


@pytest.mark.parametrize(("asg", "beat", "outcome"), NOT_APPLIED)
def test_not_applied(asg: AssignmentView, beat: Heartbeat, outcome: Outcome) -> None:
    check(device(), asg, beat, Plan(True, None, outcome), writes=True)


# --- Step 3: a reported version newer than the assigned one → superseded, whatever else is going on. ----------
# The device moved past the assignment (installed a newer release some other way): delivering it now would send
# the device back to an older version.

SUPERSEDED = [
    pytest.param(pending(), hb("v1.1.1"), id="pending-newer-patch"),
    pytest.param(pending(), hb("1.2.0"), id="pending-newer-without-v"),
    pytest.param(pending(), hb("v2.0.0-rc.1"), id="prerelease-of-a-newer-version"),
    pytest.param(pending(version="v1.1.0-rc.1"), hb("v1.1.0"), id="release-after-its-prerelease"),
    pytest.param(pending(), hb("v1.1.10"), id="semver-not-string-order"),
    pytest.param(delivered(), hb("v1.2.0"), id="delivered"),
    pytest.param(delivered(delivery_expires_at=EARLIER), hb("v1.2.0"), id="delivered-url-expired"),
    pytest.param(pending(held=True), hb("v1.2.0"), id="held"),
    pytest.param(pending(), hb("v1.2.0", recording=True), id="while-recording"),
    pytest.param(
        delivered(ota_state="downloading", progress=40),
        hb("v1.2.0", ota=report("downloading", 55)),
        id="progress-report-loses",
    ),
    pytest.param(delivered(ota_state="downloading"), hb("v1.2.0", ota=report("failed")), id="failed-report-loses"),
    pytest.param(delivered(ota_state="writing"), hb("v1.2.0", ota=report("writing")), id="writing-report-loses"),
]


@pytest.mark.parametrize(("asg", "beat"), SUPERSEDED)
def test_superseded(asg: AssignmentView, beat: Heartbeat) -> None:
    check(device(), asg, beat, Plan(True, None, "supersede"), writes=True)


# A downgrade an admin allowed (v1.0.4 → v1.0.2): the device reporting the version it is being downgraded from
# (or anything between) is what the downgrade expects; only a version newer than that one supersedes it.
ON_104 = device(firmware_version="v1.0.4")
DOWNGRADE = pending(version="v1.0.2", downgrade_from="v1.0.4")

DOWNGRADES = [
    pytest.param(ON_104, DOWNGRADE, hb("v1.0.4"), Plan(False, None, "deliver"), id="still-on-the-version-it-left"),
    pytest.param(ON_104, DOWNGRADE, hb("1.0.4+b2"), Plan(True, None, "deliver"), id="same-version-other-spelling"),
    pytest.param(ON_104, DOWNGRADE, hb("v1.0.3"), Plan(True, None, "deliver"), id="between"),
    pytest.param(ON_104, DOWNGRADE, hb("v1.0.2"), Plan(True, None, "apply"), id="applied"),
    pytest.param(ON_104, DOWNGRADE, hb("v1.0.5"), Plan(True, None, "supersede"), id="past-the-version-it-left"),
    pytest.param(ON_104, replace(DOWNGRADE, status="delivered", delivery_expires_at=LATER), hb("v1.0.4"),
                 Plan(False, None, "resend"), id="delivered-still-on-the-version-it-left"),
    pytest.param(ON_104, replace(DOWNGRADE, held=True), hb("v1.0.5"), Plan(True, None, "supersede"),
                 id="held-past-the-version-it-left"),
]  # fmt: skip


@pytest.mark.parametrize(("dev", "asg", "beat", "expected"), DOWNGRADES)
def test_downgrade(dev: DeviceSnapshot, asg: AssignmentView, beat: Heartbeat, expected: Plan) -> None:
    check(dev, asg, beat, expected, writes=expected.writes)


# --- Step 4: a failed report for the active, delivered assignment → failed. ----------------------------------

FAILED = [
    pytest.param(device(), hb(ota=report("failed")), False, id="failed"),
    pytest.param(device(), hb(ota=report("failed", 37)), False, id="failed-with-percent"),
    pytest.param(
        device(),
        hb(ota=OtaReport(assignment_id=ASG, state="failed", error="crc_mismatch")),
        False,
        id="failed-with-error",
    ),
    pytest.param(device(recording=True), hb(recording=True, ota=report("failed")), False, id="failed-while-recording"),
    pytest.param(device(), hb("v1.0.1", ota=report("failed")), True, id="failed-and-version-moved"),
]


@pytest.mark.parametrize(("dev", "beat", "material"), FAILED)
def test_failed(dev: DeviceSnapshot, beat: Heartbeat, material: bool) -> None:
    check(dev, delivered(ota_state="downloading", progress=30), beat, Plan(material, None, "fail"), writes=True)


def test_failed_report_for_pending_assignment_is_not_a_failure() -> None:
    # Only a delivered assignment can fail: the device cannot have been working on one it never received.
    check(device(), pending(), hb(ota=report("failed")), Plan(False, None, "deliver"), writes=True)


# --- Step 4: progress of the active, delivered assignment. ---------------------------------------------------
# A change of state is recorded at once (an event); a percentage moving within one state is written behind.

DL_0 = report("downloading", 0)
DL_55 = report("downloading", 55)
DL_NONE = report("downloading")
VERIFYING = report("verifying")
WRITING_10 = report("writing", 10)
WRITING_90 = report("writing", 90)

PROGRESS = [
    pytest.param(delivered(), DL_0, Plan(False, DL_0, "resend"), True, id="first-report"),
    pytest.param(delivered(ota_state="downloading", progress=40), DL_55, Plan(False, DL_55, "resend", True), False,
                 id="percent-moves"),
    pytest.param(delivered(ota_state="downloading", progress=40), DL_NONE, Plan(False, DL_NONE, "resend", True),
                 False, id="percent-dropped"),
    pytest.param(delivered(ota_state="downloading", progress=55), DL_55, Plan(False, None, "resend"), False,
                 id="nothing-moved"),
    pytest.param(delivered(ota_state="downloading", progress=100), VERIFYING, Plan(False, VERIFYING, "hold"), True,
                 id="downloading-to-verifying"),
    pytest.param(delivered(ota_state="verifying"), WRITING_10, Plan(False, WRITING_10, "hold"), True,
                 id="verifying-to-writing"),
    pytest.param(delivered(ota_state="writing", progress=10), WRITING_90, Plan(False, WRITING_90, "hold", True),
                 False, id="writing-percent-moves"),
    # Back to downloading (e.g. the device restarted the transfer): a state change, and it wants a URL again.
    pytest.param(delivered(ota_state="writing", progress=90), DL_0, Plan(False, DL_0, "resend"), True,
                 id="writing-back-to-downloading"),
]  # fmt: skip


@pytest.mark.parametrize(("asg", "ota", "expected", "writes"), PROGRESS)
def test_progress(asg: AssignmentView, ota: OtaReport, expected: Plan, writes: bool) -> None:
    check(device(), asg, hb(ota=ota), expected, writes)


def test_progress_of_pending_assignment_is_not_recorded() -> None:
    check(device(), pending(), hb(ota=DL_55), Plan(False, None, "deliver"), writes=True)


# --- Step 4: verifying / writing / rebooting → no manifest, even when the URL is dead or the device records. ---

HOLD = [
    pytest.param(delivered(ota_state="verifying"), "verifying", False, id="verifying"),
    pytest.param(delivered(ota_state="writing"), "writing", False, id="writing"),
    pytest.param(delivered(ota_state="rebooting"), "rebooting", False, id="rebooting"),
    pytest.param(delivered(ota_state="writing", delivery_expires_at=EARLIER), "writing", False, id="url-expired"),
    pytest.param(delivered(ota_state="writing", delivery_expires_at=None), "writing", False, id="no-url-recorded"),
    pytest.param(delivered(ota_state="downloading"), "rebooting", True, id="state-changed"),
]


@pytest.mark.parametrize(("asg", "state", "writes"), HOLD)
def test_hold(asg: AssignmentView, state: str, writes: bool) -> None:
    ota = report(state)
    check(device(), asg, hb(ota=ota), Plan(False, ota if writes else None, "hold"), writes)


@pytest.mark.parametrize("state", ["verifying", "writing", "rebooting"])
def test_hold_wins_over_recording(state: str) -> None:
    # Step 4 comes before step 5: the device is past the download, so "deferred by recording" would be wrong.
    asg = delivered(ota_state=state)
    check(device(recording=True), asg, hb(recording=True, ota=report(state)), Plan(False, None, "hold"), writes=False)


# --- Step 5: recording → no manifest, the assignment stays where it is. -------------------------------------

DEFER = [
    # The reason is recorded once, when it changes (deferral_changed: a write); while it holds, nothing is.
    pytest.param(device(recording=True), pending(deferred=REC), hb(recording=True), Plan(False, None, "defer",
                 deferral=REC), False, id="pending-recording"),
    pytest.param(device(), pending(), hb(recording=True), Plan(True, None, "defer", deferral=REC,
                 deferral_changed=True), True, id="pending-recording-starts"),
    pytest.param(device(recording=True), delivered(deferred=REC), hb(recording=True), Plan(False, None, "defer",
                 deferral=REC), False, id="delivered-recording"),
    pytest.param(device(recording=True), delivered(delivery_expires_at=EARLIER, deferred=REC), hb(recording=True),
                 Plan(False, None, "defer", deferral=REC), False, id="delivered-recording-url-expired"),
    pytest.param(device(recording=True), delivered(deferred=REC), hb(recording=True, ota=DL_0),
                 Plan(False, DL_0, "defer", deferral=REC), True, id="delivered-recording-progress-recorded"),
    pytest.param(device(recording=True), delivered(ota_state="downloading", progress=40, deferred=REC),
                 hb(recording=True, ota=DL_55), Plan(False, DL_55, "defer", True, deferral=REC), False,
                 id="delivered-recording-percent-only"),
    pytest.param(device(), delivered(deferred=REC), hb(), Plan(False, None, "resend", deferral_changed=True), True,
                 id="recording-ends-reason-cleared"),
]  # fmt: skip


@pytest.mark.parametrize(("dev", "asg", "beat", "expected", "writes"), DEFER)
def test_defer(dev: DeviceSnapshot, asg: AssignmentView, beat: Heartbeat, expected: Plan, writes: bool) -> None:
    check(dev, asg, beat, expected, writes)


# --- Step 6: a pending assignment is delivered. -------------------------------------------------------------

DELIVER = [
    pytest.param(device(), hb(), False, id="not-recording"),
    pytest.param(device(), hb(recording=None), False, id="recording-omitted"),
    pytest.param(device(recording=True), hb(recording=False), True, id="recording-just-ended"),
    pytest.param(device(last_seen_at=None), hb(), True, id="first-heartbeat"),
    pytest.param(device(ble_connected=True), hb(), True, id="back-from-ble"),
]


@pytest.mark.parametrize(("dev", "beat", "material"), DELIVER)
def test_deliver(dev: DeviceSnapshot, beat: Heartbeat, material: bool) -> None:
    check(dev, pending(), beat, Plan(material, None, "deliver"), writes=True)


# --- Held (its rollout is paused): a pending assignment is not delivered; a delivered one goes on. -----------
# Held comes before recording: a held assignment is not "deferred" (it may never come). Only the reported
# version still applies it (the device runs it already: nothing is delivered).

HELD = [
    pytest.param(device(), pending(held=True), hb(), Plan(False, None, "withheld"), False, id="pending-held"),
    pytest.param(device(), pending(), hb(), Plan(False, None, "deliver"), True, id="pending-not-held-delivered"),
    pytest.param(device(last_seen_at=None), pending(held=True), hb(), Plan(True, None, "withheld"), True,
                 id="pending-held-first-heartbeat-writes-telemetry-only"),
    pytest.param(device(ble_connected=True), pending(held=True), hb(), Plan(True, None, "withheld"), True,
                 id="pending-held-back-from-ble"),
    pytest.param(device(recording=True), pending(held=True), hb(recording=True), Plan(False, None, "withheld"),
                 False, id="pending-held-recording-not-deferred"),
    pytest.param(device(), pending(held=True), hb(recording=True), Plan(True, None, "withheld"), True,
                 id="pending-held-recording-starts"),
    pytest.param(device(), pending(held=True), hb(ota=DL_55), Plan(False, None, "withheld"), False,
                 id="pending-held-progress-not-recorded"),
    pytest.param(device(), pending(held=True), hb(ota=report("failed")), Plan(False, None, "withheld"), False,
                 id="pending-held-failed-report-ignored"),
    pytest.param(device(), pending(held=True), hb("v1.1.0"), Plan(True, None, "apply"), True,
                 id="pending-held-already-on-it-applies"),
    # A delivered assignment is never held by a pause; if one were, it is treated as delivered.
    pytest.param(device(), delivered(held=True), hb(), Plan(False, None, "resend"), False,
                 id="delivered-held-resend"),
    pytest.param(device(), delivered(held=True, delivery_expires_at=EARLIER), hb(), Plan(False, None, "redeliver"),
                 True, id="delivered-held-redeliver"),
    pytest.param(device(), delivered(held=True), hb(ota=DL_0), Plan(False, DL_0, "resend"), True,
                 id="delivered-held-progress-recorded"),
    pytest.param(device(), delivered(held=True, ota_state="writing"), hb(ota=report("writing")),
                 Plan(False, None, "hold"), False, id="delivered-held-writing"),
    pytest.param(device(), delivered(held=True, ota_state="downloading"), hb(ota=report("failed")),
                 Plan(False, None, "fail"), True, id="delivered-held-fails"),
    pytest.param(device(recording=True), delivered(held=True, deferred=REC), hb(recording=True),
                 Plan(False, None, "defer", deferral=REC), False, id="delivered-held-recording-deferred"),
    pytest.param(device(), delivered(held=True), hb("v1.1.0"), Plan(True, None, "apply"), True,
                 id="delivered-held-applies"),
]  # fmt: skip


@pytest.mark.parametrize(("dev", "asg", "beat", "expected", "writes"), HELD)
def test_held(dev: DeviceSnapshot, asg: AssignmentView, beat: Heartbeat, expected: Plan, writes: bool) -> None:
    check(dev, asg, beat, expected, writes)


# --- Step 6: a delivered assignment gets the manifest again. ------------------------------------------------
# Recorded (redeliver) only when the device is not working on it and the last recorded URL is dead;
# otherwise a fresh URL with nothing recorded (resend).

AGAIN = [
    pytest.param(delivered(delivery_expires_at=None), None, "redeliver", id="no-report-no-url-recorded"),
    pytest.param(delivered(delivery_expires_at=EARLIER), None, "redeliver", id="no-report-url-expired"),
    pytest.param(delivered(delivery_expires_at=NOW), None, "redeliver", id="no-report-url-expires-now"),
    pytest.param(delivered(delivery_expires_at=LATER), None, "resend", id="no-report-url-valid"),
    pytest.param(
        delivered(ota_state="downloading", progress=20, delivery_expires_at=EARLIER),
        report("downloading", 20),
        "resend",
        id="downloading-url-expired",
    ),
    pytest.param(
        delivered(ota_state="downloading", progress=20, delivery_expires_at=None),
        report("downloading", 20),
        "resend",
        id="downloading-no-url-recorded",
    ),
]


@pytest.mark.parametrize(("asg", "ota", "outcome"), AGAIN)
def test_redeliver_or_resend(asg: AssignmentView, ota: OtaReport | None, outcome: Outcome) -> None:
    check(device(), asg, hb(ota=ota), Plan(False, None, outcome), writes=outcome == "redeliver")


# --- Reports naming another assignment (old, cancelled) are ignored; one still downloading or verifying
# it is told to stop (ota_abort), whatever happens to the active one. --------------------------------------

STALE = [
    pytest.param(delivered(), "failed", "resend", id="failed-url-valid"),
    pytest.param(delivered(delivery_expires_at=EARLIER), "failed", "redeliver", id="failed-url-expired"),
    pytest.param(delivered(ota_state="downloading", progress=10), "verifying", "resend", id="verifying"),
    pytest.param(delivered(), "rebooting", "resend", id="rebooting"),
    pytest.param(delivered(ota_state="downloading", progress=10), "downloading", "resend", id="downloading"),
    pytest.param(pending(), "failed", "deliver", id="pending-failed"),
]


@pytest.mark.parametrize(("asg", "state", "outcome"), STALE)
def test_report_for_other_assignment_is_ignored(asg: AssignmentView, state: str, outcome: Outcome) -> None:
    beat = hb(ota=report(state, 90, assignment_id="asg-old"))
    abort = "asg-old" if state in {"downloading", "verifying"} else None
    check(device(), asg, beat, Plan(False, None, outcome, abort=abort), writes=outcome in {"deliver", "redeliver"})


@pytest.mark.parametrize("state", ["downloading", "verifying"])
def test_a_device_working_on_an_ended_assignment_is_told_to_abort(state: str) -> None:
    # No active assignment at all (the only one was cancelled): the report still gets an abort.
    beat = hb(ota=report(state, 30, assignment_id="asg-old"))
    check(device(), None, beat, Plan(False, None, "none", abort="asg-old"), writes=False)


@pytest.mark.parametrize("state", ["writing", "rebooting", "failed"])
def test_too_late_or_already_stopped_gets_no_abort(state: str) -> None:
    check(device(), None, hb(ota=report(state, assignment_id="asg-old")), Plan(False, None, "none"), writes=False)


# --- build_reply: what a plan's outcome puts in the reply. --------------------------------------------------

SECRET = "test-secret"
TTL_S = 900


class CountingBaseUrl:
    """The signer's base URL, counting calls: it must be asked only when a manifest is signed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "http://ota.test/"


@pytest.fixture
def base_url() -> CountingBaseUrl:
    return CountingBaseUrl()


@pytest.fixture
def signer(tmp_path: Path, base_url: CountingBaseUrl) -> ManifestSigner:
    return ManifestSigner(store=LocalBlobStore(tmp_path, SECRET), base_url=base_url, ttl_s=TTL_S)


NO_MANIFEST = [
    pytest.param("none", None, id="none"),
    pytest.param("apply", None, id="apply"),
    pytest.param("supersede", None, id="supersede"),
    pytest.param("fail", None, id="fail"),
    pytest.param("hold", None, id="hold"),
    pytest.param("withheld", None, id="withheld"),
    pytest.param("defer", "recording", id="defer"),
    pytest.param("defer", "battery_low", id="defer-battery"),
]


@pytest.mark.parametrize(("outcome", "deferred"), NO_MANIFEST)
def test_reply_without_manifest(
    outcome: Outcome, deferred: Deferral | None, signer: ManifestSigner, base_url: CountingBaseUrl
) -> None:
    reply = build_reply(delivered(), BIN, Plan(False, None, outcome, deferral=deferred), signer, 60)
    assert reply.heartbeat_interval_s == 60
    assert reply.ota is None
    assert reply.ota_deferred == deferred
    assert base_url.calls == 0


@pytest.mark.parametrize("outcome", ["deliver", "redeliver", "resend"])
def test_reply_with_manifest(outcome: Outcome, signer: ManifestSigner, base_url: CountingBaseUrl) -> None:
    before = int(time.time())
    reply = build_reply(delivered(), BIN, Plan(False, None, outcome), signer, 45)
    after = int(time.time())
    assert reply.heartbeat_interval_s == 45
    assert reply.ota_deferred is None
    manifest = reply.ota
    assert manifest is not None
    assert (manifest.assignment_id, manifest.version) == (ASG, "v1.1.0")
    assert (manifest.size, manifest.crc32, manifest.sha256) == (BIN.size, BIN.crc32, BIN.sha256)
    assert before + TTL_S <= manifest.expires_at.timestamp() <= after + TTL_S
    url = urlsplit(manifest.url)
    assert (url.scheme, url.netloc) == ("http", "ota.test")
    assert unquote(url.path) == DOWNLOAD_PREFIX + BIN.storage_key
    query = {name: values[0] for name, values in parse_qs(url.query).items()}
    assert int(query["expires"]) == int(manifest.expires_at.timestamp())
    # A fresh, genuinely signed URL: the download endpoint would accept it.
    assert verify(SECRET, BIN.storage_key, int(query["expires"]), query["sig"])
    assert base_url.calls == 1


def test_manifest_without_bin_is_not_found(signer: ManifestSigner) -> None:
    with pytest.raises(NotFound):
        build_reply(delivered(), None, Plan(False, None, "resend"), signer, 60)


# --- routine_reply: None exactly when the plan writes; otherwise a reply, and the telemetry is buffered. -----

ROUTINE = [
    # Nothing to write: a reply now, the telemetry (and a moved percentage) into the buffer.
    pytest.param(device(), hb(), "none", False, None, id="no-assignment"),
    pytest.param(device(assignment=delivered()), hb(), "resend", False, None, id="resend"),
    pytest.param(device(recording=True, assignment=pending(deferred=REC)), hb(recording=True), "defer", False, None,
                 id="defer"),
    pytest.param(device(recording=True, assignment=pending()), hb(recording=True), "defer", True, None,
                 id="defer-reason-recorded-once"),
    pytest.param(device(assignment=pending(held=True)), hb(), "withheld", False, None, id="withheld"),
    pytest.param(device(recording=True, assignment=pending(held=True)), hb(recording=True), "withheld", False, None,
                 id="withheld-recording"),
    pytest.param(device(assignment=delivered(held=True)), hb(), "resend", False, None, id="delivered-held-resend"),
    pytest.param(device(assignment=delivered(ota_state="writing", progress=50)), hb(ota=report("writing", 50)),
                 "hold", False, None, id="hold"),
    pytest.param(device(assignment=delivered(ota_state="downloading", progress=40)), hb(ota=DL_55),
                 "resend", False, (ASG, "downloading", 55), id="percent-only"),
    pytest.param(device(assignment=delivered()), hb(ota=report("failed", assignment_id="asg-old")),
                 "resend", False, None, id="stale-report"),
    # Something to write: no reply here (the write transaction builds it), nothing buffered.
    pytest.param(device(last_seen_at=None), hb(), "none", True, None, id="first-heartbeat"),
    pytest.param(device(), hb("v1.0.1"), "none", True, None, id="other-version"),
    pytest.param(device(), hb(recording=True), "none", True, None, id="recording-flipped"),
    pytest.param(device(ble_connected=True), hb(), "none", True, None, id="ble-ends"),
    pytest.param(device(assignment=pending()), hb(), "deliver", True, None, id="deliver"),
    pytest.param(device(last_seen_at=None, assignment=pending(held=True)), hb(), "withheld", True, None,
                 id="withheld-first-heartbeat"),
    pytest.param(device(assignment=delivered(delivery_expires_at=EARLIER)), hb(), "redeliver", True, None,
                 id="redeliver"),
    pytest.param(device(assignment=delivered()), hb("v1.1.0"), "apply", True, None, id="apply"),
    pytest.param(device(assignment=pending()), hb("v1.2.0"), "supersede", True, None, id="supersede"),
    pytest.param(device(firmware_version="v1.2.0", assignment=delivered()), hb("v1.2.0"), "supersede", True, None,
                 id="supersede-same-version-as-cached"),
    pytest.param(device(assignment=delivered()), hb(ota=report("failed")), "fail", True, None, id="fail"),
    pytest.param(device(assignment=delivered()), hb(ota=DL_0), "resend", True, None, id="progress-state-change"),
]  # fmt: skip


@pytest.mark.parametrize(("dev", "beat", "outcome", "writes", "buffered_ota"), ROUTINE)
def test_routine_reply(
    dev: DeviceSnapshot,
    beat: Heartbeat,
    outcome: Outcome,
    writes: bool,
    buffered_ota: tuple[str, str, int | None] | None,
    signer: ManifestSigner,
) -> None:
    dev = replace(dev, bin=BIN if dev.assignment is not None else None)
    plan = plan_heartbeat(dev, dev.assignment, beat, NOW)
    assert (plan.outcome, plan.writes) == (outcome, writes)
    buffer = TelemetryBuffer()
    call = HeartbeatCall(token_hash="t", hb=beat, signer=signer, buffer=buffer, interval_s=60, received_at=NOW)

    reply = routine_reply(dev, call, NOW)

    if writes:
        assert reply is None
        assert len(buffer) == 0
        return
    assert reply is not None
    assert reply.heartbeat_interval_s == 60
    assert (reply.ota is not None) is (outcome in {"deliver", "redeliver", "resend"})
    assert reply.ota_deferred == plan.deferral
    assert buffer.take_all() == {
        dev.id: PendingTelemetry(seen_at=NOW, battery=80, network="wifi", rssi=-60, ota=buffered_ota)
    }


# --- Attempts: a device back on its old version after writing or rebooting rolled back. -------------------

ROLLBACK = [
    pytest.param(delivered(ota_state="rebooting"), None, "rollback", id="after-rebooting-no-report"),
    pytest.param(delivered(ota_state="writing"), None, "rollback", id="after-writing-no-report"),
    pytest.param(delivered(ota_state="verifying"), None, "rollback", id="after-verifying-no-report"),
    pytest.param(delivered(ota_state="rebooting"), report("downloading", 0, assignment_id="asg-new"), "rollback",
                 id="report-of-another-assignment-counts-as-no-report"),
    pytest.param(delivered(ota_state="writing"), report("writing", 50), "hold", id="still-writing"),
    pytest.param(delivered(ota_state="writing"), report("downloading", 0), "resend", id="device-downloads-again"),
    pytest.param(delivered(ota_state="downloading", progress=40), None, "resend", id="downloading-is-not-a-rollback"),
    pytest.param(delivered(), None, "resend", id="no-progress-yet"),
]  # fmt: skip


@pytest.mark.parametrize(("asg", "ota", "outcome"), ROLLBACK)
def test_rollback(asg: AssignmentView, ota: OtaReport | None, outcome: Outcome) -> None:
    plan = plan_heartbeat(device(), asg, hb(ota=ota), NOW)
    assert plan.outcome == outcome
    if outcome == "rollback":
        assert plan.writes and plan.progress is None


def test_a_rollback_on_the_new_version_is_an_apply() -> None:
    assert plan_heartbeat(device(), delivered(ota_state="rebooting"), hb("v1.1.0"), NOW).outcome == "apply"


# --- Between attempts: pending with retry_at in the future is deferred as retry_wait. -----------------------


@pytest.mark.parametrize(
    ("retry_at", "outcome", "deferral"),
    [(LATER, "defer", "retry_wait"), (NOW, "deliver", None), (EARLIER, "deliver", None), (None, "deliver", None)],
)
def test_retry_wait(retry_at: datetime | None, outcome: Outcome, deferral: str | None) -> None:
    plan = plan_heartbeat(device(), pending(attempts=1, retry_at=retry_at), hb(), NOW)
    assert (plan.outcome, plan.deferral) == (outcome, deferral)


def test_recording_is_named_before_the_retry_wait() -> None:
    plan = plan_heartbeat(device(), pending(attempts=1, retry_at=LATER), hb(recording=True), NOW)
    assert plan.deferral == "recording"


# --- The delivery policy: a pending assignment waits while the device's condition says so. ----------------

POLICY_DEFAULT = DeliveryPolicy()  # 30 %, wifi and cellular, unsynced recordings do not matter


def beat(**fields: object) -> Heartbeat:
    return Heartbeat.model_validate({"firmware_version": "v1.0.0", **fields})


POLICY = [
    pytest.param(POLICY_DEFAULT, None, beat(battery=29), "battery_low", id="battery-below"),
    pytest.param(POLICY_DEFAULT, None, beat(battery=30), None, id="battery-at-minimum"),
    pytest.param(POLICY_DEFAULT, None, beat(battery=5, charging=True), None, id="charging-ignores-battery"),
    pytest.param(POLICY_DEFAULT, None, beat(), None, id="nothing-sent-nothing-blocks"),
    pytest.param(POLICY_DEFAULT, {"networks": ["wifi"]}, beat(network="cellular"), "network", id="release-wifi-only"),
    pytest.param(POLICY_DEFAULT, {"networks": ["wifi"]}, beat(network="wifi"), None, id="wifi-only-on-wifi"),
    pytest.param(DeliveryPolicy(networks=("wifi",)), None, beat(network="cellular"), "network", id="server-wifi-only"),
    pytest.param(POLICY_DEFAULT, None, beat(storage_free_kb=100), "storage", id="image-does-not-fit"),
    pytest.param(POLICY_DEFAULT, None, beat(storage_free_kb=121), None, id="image-fits"),  # 123,456 B ≤ 121 KiB
    pytest.param(POLICY_DEFAULT, None, beat(unsynced_recordings=3), None, id="unsynced-allowed-by-default"),
    pytest.param(POLICY_DEFAULT, {"defer_while_unsynced": True}, beat(unsynced_recordings=3), "unsynced_recordings",
                 id="unsynced-deferred"),
    pytest.param(POLICY_DEFAULT, {"defer_while_unsynced": True}, beat(unsynced_recordings=0), None, id="all-synced"),
    pytest.param(POLICY_DEFAULT, {"min_battery": 80}, beat(battery=70), "battery_low", id="release-min-battery"),
    pytest.param(POLICY_DEFAULT, None, beat(battery=10, network="cellular", storage_free_kb=1), "battery_low",
                 id="first-reason-named"),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "overrides", "heartbeat", "deferral"), POLICY)
def test_delivery_policy(
    policy: DeliveryPolicy, overrides: dict[str, object] | None, heartbeat: Heartbeat, deferral: str | None
) -> None:
    plan = plan_heartbeat(device(), pending(policy=overrides), heartbeat, NOW, policy, BIN.size)
    assert (plan.outcome, plan.deferral) == (("defer", deferral) if deferral else ("deliver", None))


def test_the_policy_does_not_stop_a_download_under_way() -> None:
    plan = plan_heartbeat(device(), delivered(ota_state="downloading"), beat(battery=5, ota=DL_0), NOW)
    assert plan.outcome == "resend"
