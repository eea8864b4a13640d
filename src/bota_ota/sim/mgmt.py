"""A small client for the management API, used by the simulator and the bulk ``assign`` command."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx


class MgmtError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        try:
            problem = response.json()
            detail = problem.get("detail") or response.text
        except ValueError:
            detail = response.text
        super().__init__(f"{response.request.method} {response.request.url.path} → {response.status_code}: {detail}")
        self.status_code = response.status_code


class MgmtClient:
    def __init__(self, server: str, api_token: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {api_token}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            raise MgmtError(r)
        return r

    def me(self) -> dict[str, Any]:
        return dict(self._check(self.http.get("/api/v1/me")).json())

    def iter_devices(
        self, *, model: str | None = None, q: str | None = None, page: int = 1000
    ) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            params: dict[str, Any] = {"limit": page, "offset": offset}
            if model:
                params["model"] = model
            if q:
                params["q"] = q
            rows = self._check(self.http.get("/api/v1/devices", params=params)).json()
            yield from rows
            if len(rows) < page:
                return
            offset += page

    def get_release(self, release_id: str) -> dict[str, Any]:
        return dict(self._check(self.http.get(f"/api/v1/firmware/{release_id}")).json())

    def assign(self, device_id: str, release_id: str, *, allow_downgrade: bool = False) -> httpx.Response:
        body: dict[str, Any] = {"release_id": release_id}
        if allow_downgrade:
            body["allow_downgrade"] = True
        return self.http.post(f"/api/v1/devices/{device_id}/assignments", json=body)

    def count_assignments(self, status: str, *, release_id: str | None = None) -> int:
        """Assignments with this status: on the whole server, or only those of one release."""
        params: dict[str, Any] = {"status": status, "limit": 1}
        if release_id:
            params["release_id"] = release_id
        r = self._check(self.http.get("/api/v1/assignments", params=params))
        return int(r.headers.get("X-Total-Count", "0"))

    def assignment_statuses(self, assignment_ids: list[str]) -> dict[str, str]:
        """The status of each of these assignments: one request for the newest 1,000, then one per id not
        among them."""
        wanted = set(assignment_ids)
        rows = self._check(self.http.get("/api/v1/assignments", params={"limit": 1000})).json()
        found = {a["id"]: a["status"] for a in rows if a["id"] in wanted}
        for assignment_id in wanted - found.keys():
            found[assignment_id] = self._check(self.http.get(f"/api/v1/assignments/{assignment_id}")).json()["status"]
        return found
