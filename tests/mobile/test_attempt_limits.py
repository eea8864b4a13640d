"""Brute-force limits on the app API: log-in and claim attempts, shared through the database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bota_ota.accounts.models import LoginAttempt
from bota_ota.core.database import utcnow
from tests.support.app_api import make_app_user
from tests.support.factories import ApiClient, assert_problem

LOGIN = "/api/app/v1/auth/login"


def _age_all_attempts(sessions: Any, seconds: int) -> None:
    with sessions() as session:
        for row in session.query(LoginAttempt).all():
            row.at = utcnow() - timedelta(seconds=seconds)
        session.commit()


def test_app_log_in_is_locked_after_ten_wrong_passwords_then_opens_after_the_window(
    admin: ApiClient, sessions: Any
) -> None:
    make_app_user(admin, "ana@example.com", "correct horse")
    for _ in range(10):
        assert_problem(admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "wrong"}), 401)
    locked = admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "correct horse"})
    assert_problem(locked, 429)
    assert 1 <= int(locked.headers["Retry-After"]) <= 15 * 60
    assert "too many failed log-ins" in locked.json()["detail"]
    # Another account is not locked by ana's failures (the client address allows ten times as many).
    make_app_user(admin, "bob@example.com", "battery staple")
    _age_all_attempts(sessions, 15 * 60 + 1)  # the window has passed
    ok = admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "correct horse"})
    assert ok.status_code == 200, ok.text


def test_a_successful_log_in_clears_the_count_and_portal_failures_do_not_lock_the_app(admin: ApiClient) -> None:
    make_app_user(admin, "ana@example.com", "correct horse")
    for _ in range(9):
        assert_problem(admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "wrong"}), 401)
    assert admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "correct horse"}).status_code == 200
    for _ in range(9):  # nine more: the earlier nine no longer count
        assert_problem(admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "wrong"}), 401)
    assert admin.client.post(LOGIN, json={"email": "ana@example.com", "password": "correct horse"}).status_code == 200


def test_wrong_claim_codes_lock_claims_of_that_device(admin: ApiClient, sessions: Any) -> None:
    app = make_app_user(admin)
    device = admin.device()
    for _ in range(10):
        r = app.post("/devices/claim", json={"id": device["id"], "claim_code": "WRONG-CODE"})
        assert_problem(r, 404, field="claim_code")
    right = app.post("/devices/claim", json={"id": device["id"], "claim_code": device["claim_code"]})
    assert_problem(right, 429)
    assert int(right.headers["Retry-After"]) >= 1
    # Another user guessing the same device is refused too: the limit is per device, whoever guesses.
    other = make_app_user(admin, "bob@example.com")
    assert_problem(other.post("/devices/claim", json={"id": device["id"], "claim_code": device["claim_code"]}), 429)
    _age_all_attempts(sessions, 15 * 60 + 1)
    claimed = app.post("/devices/claim", json={"id": device["id"], "claim_code": device["claim_code"]})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["id"] == device["id"]


def test_one_user_guessing_many_devices_is_locked(admin: ApiClient) -> None:
    app = make_app_user(admin)
    devices = [admin.device() for _ in range(2)]
    for i in range(10):
        target = devices[i % 2]["id"]
        assert_problem(app.post("/devices/claim", json={"id": target, "claim_code": "WRONG-CODE"}), 404)
    # Neither device reached ten wrong codes, but the user did.
    right = app.post("/devices/claim", json={"id": devices[0]["id"], "claim_code": devices[0]["claim_code"]})
    assert_problem(right, 429)
