"""A 405 names every method the path allows, across all the routes that serve it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.support.factories import assert_problem


def test_allow_lists_the_methods_of_every_route_of_the_path(client: TestClient) -> None:
    r = client.post("/dl/firmware/x.bin")  # served by a GET route and a HEAD route
    assert_problem(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "HEAD"}
    assert "GET or HEAD" in r.json()["detail"]
    devices = client.delete("/api/v1/devices")
    assert_problem(devices, 405)
    assert {m.strip() for m in devices.headers["allow"].split(",")} >= {"GET", "POST"}
