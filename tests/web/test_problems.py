"""Errors are RFC 9457 problem JSON, and nothing a client sends produces a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy.exc

from tests.support.factories import ApiClient, assert_problem, heartbeat

# ---- problem JSON for framework-level errors ---------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/nope", "/nope", "/api/v1/devices/BP-1/nope", "/api/device/v2/heartbeat"])
def test_unknown_route_is_404_problem(admin: ApiClient, url: str) -> None:
    body = assert_problem(admin.get(url), 404)
    assert body["type"].startswith("https://")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", "/api/v1/firmware"),
        ("DELETE", "/api/v1/devices"),
        ("GET", "/api/device/v1/heartbeat"),
        ("PATCH", "/api/v1/assignments"),
        ("DELETE", "/api/v1/assignments/x/cancel"),
    ],
)
def test_wrong_method_is_405_problem(admin: ApiClient, method: str, url: str) -> None:
    r = admin.client.request(method, url, headers=admin.headers)
    assert_problem(r, 405)


def test_malformed_json_is_a_4xx_problem(admin: ApiClient) -> None:
    admin.device(device_id="BP-1")
    for url in ("/api/v1/devices", "/api/v1/tokens", "/api/v1/users", "/api/v1/devices/BP-1/assignments"):
        for raw in (b"{bad json", b'{"id": "BP-1",}', b"\xff\xfe\x00", b"", b"{" * 10):
            r = admin.client.post(url, content=raw, headers={**admin.headers, "Content-Type": "application/json"})
            assert r.status_code in (400, 422), (url, raw, r.text)
            assert_problem(r, r.status_code)


def test_malformed_json_is_422_problem(admin: ApiClient) -> None:
    r = admin.client.post(
        "/api/v1/devices",
        content=b'{"id": "BP-1", "model": ',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert_problem(r, 422)


def test_malformed_heartbeat_json_is_422_problem(admin: ApiClient) -> None:
    dev = admin.device()
    r = admin.client.post(
        "/api/device/v1/heartbeat",
        content=b"firmware_version=v1",
        headers={"Authorization": f"Bearer {dev['token']}", "Content-Type": "application/json"},
    )
    assert_problem(r, 422)


def test_validation_problem_names_every_field(admin: ApiClient) -> None:
    body = assert_problem(admin.post("/api/v1/devices", json={"id": "bad id", "model": "nope"}), 422)
    assert body["type"].endswith("/validation")
    assert {e["field"] for e in body["errors"]} == {"id", "model"}
    assert all(e["message"] for e in body["errors"])
    assert "id" in body["detail"] and "model" in body["detail"]


def test_query_parameter_errors_are_named(admin: ApiClient) -> None:
    body = assert_problem(admin.get("/api/v1/devices", params={"limit": "lots"}), 422)
    assert body["errors"][0]["field"] == "query.limit"


def test_problem_types_differ_by_kind(admin: ApiClient) -> None:
    types = {
        assert_problem(admin.get("/api/v1/devices/BP-404"), 404)["type"],
        assert_problem(admin.post("/api/v1/devices", json={}), 422)["type"],
        assert_problem(admin.client.get("/api/v1/devices"), 401)["type"],
    }
    assert len(types) == 3


# ---- fuzz: odd values into every POST/PATCH endpoint -------------------------------------------

GARBAGE: list[Any] = [
    None,
    "",
    " ",
    "x" * 10_000,
    "💥" * 100,
    "\u202eevil\u200b",
    "'; DROP TABLE devices; --",
    "../../etc/passwd",
    "%s%n%x",
    "\\ud800",
    -1,
    0,
    -(2**63),
    2**64,
    10**100,
    1.5,
    -0.0,
    True,
    False,
    [],
    [1, 2],
    {},
    {"nested": {"deeper": [None]}},
]


def _variants(base: dict[str, Any]) -> Iterator[Any]:
    """The valid body with each field replaced by each garbage value or dropped, then whole-body garbage."""
    for key in base:
        for value in GARBAGE:
            yield {**base, key: value}
        yield {k: v for k, v in base.items() if k != key}
    yield {**base, "unexpected": "field"}
    yield from ([], [base], "string", 42, None, True)


@pytest.fixture
def fuzz_world(admin: ApiClient) -> dict[str, Any]:
    rel = admin.release("v1.0.1")
    dev = admin.device(device_id="BP-FUZZ-1")
    a = admin.assign(dev["id"], rel["id"]).json()
    tok = admin.post("/api/v1/tokens", json={"name": "fuzz", "role": "viewer"}).json()
    return {"release": rel, "device": dev, "assignment": a, "token": tok}


def _assert_no_server_error(r: httpx.Response, what: Any) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    if r.status_code >= 400 and r.request.method != "HEAD":
        assert r.headers["content-type"].startswith("application/problem+json"), (what, r.headers)


def _json_endpoints(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, url, valid body, which credential)"""
    return [
        ("POST", "/api/v1/devices", {"id": "BP-F-2", "model": "bota-pin", "name": "n"}, "admin"),
        ("POST", f"/api/v1/devices/{w['device']['id']}/assignments", {"release_id": w["release"]["id"]}, "admin"),
        ("PATCH", f"/api/v1/firmware/{w['release']['id']}", {"released": True, "notes": "n"}, "admin"),
        ("POST", "/api/v1/tokens", {"name": "n", "role": "viewer"}, "admin"),
        ("POST", "/api/v1/users", {"email": "a@example.com", "password": "long enough", "role": "viewer"}, "admin"),
        (
            "POST",
            "/api/device/v1/heartbeat",
            {
                "firmware_version": "v1.0.0",
                "recording": False,
                "battery": 50,
                "network": "wifi",
                "rssi": -60,
                "ota": {"assignment_id": w["assignment"]["id"], "state": "downloading", "progress": 5, "error": None},
            },
            "device",
        ),
    ]


@pytest.mark.slow  # over 600 requests: seconds however fast each one is
def test_fuzz_json_endpoints_never_500(admin: ApiClient, fuzz_world: dict[str, Any]) -> None:
    sent = 0
    for method, url, base, cred in _json_endpoints(fuzz_world):
        token = fuzz_world["device"]["token"] if cred == "device" else admin.token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        bodies = list(_variants(base))
        if "ota" in base:
            bodies += [{**base, "ota": {**base["ota"], k: v}} for k in base["ota"] for v in GARBAGE]
        for body in bodies:
            r = admin.client.request(method, url, content=json.dumps(body).encode(), headers=headers)
            _assert_no_server_error(r, (method, url, body))
            sent += 1
    assert sent > 500
    # The server is still healthy and consistent afterwards.
    assert admin.get("/healthz").json() == {"status": "ok"}
    assert admin.get(f"/api/v1/devices/{fuzz_world['device']['id']}").status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"id": "BP-1", "model": "bota-pin", "name": NaN}',
        b'{"id": "BP-1", "model": "bota-pin", "name": Infinity}',
        b'{"id": "BP-1", "model": "bota-pin", "name": "\\udc00"}',
        b'{"id": "\\ud83d", "model": "bota-pin"}',
        b'{"id": "BP-1", "model": "bota-pin", "id": "BP-2"}',
        b'{"battery": 1e400, "firmware_version": "v1"}',
        '{"id": "BP-1", "model": "bota-pin", "name": "caf\u00e9"}'.encode("latin-1"),
    ],
)
def test_fuzz_raw_json_bodies_never_500(admin: ApiClient, fuzz_world: dict[str, Any], raw: bytes) -> None:
    for url, token in (
        ("/api/v1/devices", admin.token),
        ("/api/device/v1/heartbeat", fuzz_world["device"]["token"]),
        (f"/api/v1/devices/{fuzz_world['device']['id']}/assignments", admin.token),
        ("/api/v1/tokens", admin.token),
    ):
        r = admin.client.post(
            url, content=raw, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        _assert_no_server_error(r, (url, raw[:60]))


MULTIPART_GARBAGE = [
    "",
    " ",
    "x" * 10_000,
    "x" * 70_000,
    "💥" * 100,
    "\u202e",
    "v1.0.0\r\nX-Injected: 1",
    "-1",
    "1e400",
    "null",
    "true",
    "../../etc",
]


def test_fuzz_firmware_upload_never_500(admin: ApiClient, fuzz_world: dict[str, Any]) -> None:
    base = {"version": "v5.0.0", "model": "bota-pin", "notes": "n", "draft": "false"}
    n = 0
    for key in base:
        for value in MULTIPART_GARBAGE:
            n += 1
            data = {**base, key: value}
            if key != "version":
                data["version"] = f"v5.0.{n}"
            r = admin.post("/api/v1/firmware", data=data, files={"bin": ("fw.bin", b"\x00\x01", "a/b")})
            _assert_no_server_error(r, data)
    for filename in [
        "",
        "x",
        ".bin",
        "../../../etc/passwd.bin",
        "a/b/c.bin",
        "C:\\fw\\x.bin",
        "💥.bin",
        "a b.bin",
        "x" * 200 + ".bin",
    ]:
        n += 1
        r = admin.post(
            "/api/v1/firmware",
            data={"version": f"v6.0.{n}", "model": "bota-pin"},
            files={"bin": (filename, b"ab", "a/b")},
        )
        _assert_no_server_error(r, filename)
        if r.status_code == 201:
            assert "/" not in r.json()["bin"]["filename"]
    for headers in (
        {"Content-Type": "multipart/form-data; boundary="},
        {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "-5"},
        {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "abc"},
        {"Content-Type": "multipart/form-data; boundary=" + "x" * 200},
        {"Content-Type": "multipart/mixed; boundary=x"},
        {"Content-Type": "text/plain"},
    ):
        r = admin.client.post(
            "/api/v1/firmware", content=b"--x\r\ngarbage\r\n--x--\r\n", headers={**admin.headers, **headers}
        )
        _assert_no_server_error(r, headers)
    for raw in (
        b"--x\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--x--\r\n",
        b'--x\r\nContent-Disposition: form-data; name="version"\r\n\r\nv1.0.0',
        b'--x\r\nContent-Disposition: form-data; name="bin"; filename="a.bin"\r\n\r\nabc\r\n--x--\r\n',
        b'--x\r\nContent-Disposition: form-data; name="\xff\xfe"\r\n\r\n\xff\xfe\r\n--x--\r\n',
        b'--x\r\nContent-Disposition: form-data; name="notes"\r\n\r\n\xff\xfe\r\n--x--\r\n',
        b"--y\r\n\r\n--y--\r\n",
        b"garbage",
    ):
        r = admin.client.post(
            "/api/v1/firmware",
            content=raw,
            headers={**admin.headers, "Content-Type": "multipart/form-data; boundary=x"},
        )
        _assert_no_server_error(r, raw)


PATH_GARBAGE = ["x" * 3000, "💥", "%2e%2e", "' OR 1=1 --", "%ff%fe", "..%2f..%2fetc", "%20", "a.b_c-d"]


def test_fuzz_path_parameters_never_500(admin: ApiClient, fuzz_world: dict[str, Any]) -> None:
    for raw in PATH_GARBAGE:
        segment = raw if "%" in raw else quote(raw, safe="")
        for method, template in (
            ("GET", "/api/v1/devices/{}"),
            ("GET", "/api/v1/devices/{}/assignments"),
            ("POST", "/api/v1/devices/{}/token"),
            ("GET", "/api/v1/firmware/{}"),
            ("DELETE", "/api/v1/firmware/{}"),
            ("GET", "/api/v1/assignments/{}"),
            ("POST", "/api/v1/assignments/{}/cancel"),
            ("POST", "/api/v1/tokens/{}/revoke"),
        ):
            r = admin.client.request(method, template.format(segment), headers=admin.headers)
            _assert_no_server_error(r, (method, template, raw))
        r = admin.client.post(
            f"/api/v1/devices/{segment}/assignments",
            json={"release_id": fuzz_world["release"]["id"]},
            headers=admin.headers,
        )
        _assert_no_server_error(r, raw)


QUERY_GARBAGE: list[tuple[str, dict[str, Any]]] = [
    ("/api/v1/devices", {"limit": -1}),
    ("/api/v1/devices", {"limit": 10**30}),
    ("/api/v1/devices", {"offset": "x"}),
    ("/api/v1/devices", {"offset": 2**63 - 1}),
    ("/api/v1/devices", {"q": "💥"}),
    ("/api/v1/devices", {"q": "%"}),
    ("/api/v1/devices", {"q": "'"}),
    ("/api/v1/devices", {"model": "x" * 1000}),
    ("/api/v1/firmware", {"model": "💥"}),
    ("/api/v1/firmware", {"released": "perhaps"}),
    ("/api/v1/assignments", {"status": "x" * 1000}),
    ("/api/v1/assignments", {"limit": 0}),
    ("/api/v1/audit", {"since": "yesterday"}),
    ("/api/v1/audit", {"since": "2020-01-01T00:00:00+00:00"}),
    ("/api/v1/audit", {"since": "9999-12-31T23:59:59Z"}),
    ("/api/v1/audit", {"actor": "x" * 1000, "action": "💥", "target_id": "'"}),
    ("/api/v1/audit", {"limit": 1001}),
]


def test_fuzz_query_parameters_never_500(admin: ApiClient) -> None:
    admin.device()
    for url, params in QUERY_GARBAGE:
        _assert_no_server_error(admin.get(url, params=params), (url, params))


def test_fuzz_download_parameters_never_500(admin: ApiClient, fuzz_world: dict[str, Any]) -> None:
    for query in (
        "",
        "expires=1&sig=x",
        "expires=-1&sig=x",
        "expires=99999999999999999999999&sig=x",
        "expires=1e5&sig=x",
        "expires=4102444800&sig=" + "a" * 200,
        "expires=4102444800&sig=%00",
    ):
        for key in ("firmware/x.bin", "x" * 2000, "%2e%2e/%2e%2e/etc/passwd", "💥"):
            r = admin.client.get(f"/dl/{quote(key) if '%' not in key else key}?{query}")
            _assert_no_server_error(r, (key, query))


# ---- values the database would refuse: refused (or handled) before they get there --------------


@pytest.mark.parametrize(
    "url",
    ["/api/v1/devices", "/api/v1/assignments", "/api/v1/audit", "/api/v1/devices/BP-FUZZ-1/assignments"],
)
def test_huge_offset_is_not_a_server_error(admin: ApiClient, fuzz_world: dict[str, Any], url: str) -> None:
    r = admin.get(url, params={"offset": 2**63})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert r.json() == []


def _nul_cases() -> list[tuple[str, Callable[[ApiClient, dict[str, Any]], httpx.Response]]]:
    return [
        (
            "device name",
            lambda a, w: a.post("/api/v1/devices", json={"id": "BP-N", "model": "bota-pin", "name": "a\x00b"}),
        ),
        (
            "heartbeat firmware_version",
            lambda a, w: heartbeat(a.client, w["device"]["token"], firmware_version="v1\x00"),
        ),
        ("token name", lambda a, w: a.post("/api/v1/tokens", json={"name": "a\x00", "role": "viewer"})),
        (
            "user email",
            lambda a, w: a.post(
                "/api/v1/users", json={"email": "a\x00@b.c", "password": "long enough", "role": "viewer"}
            ),
        ),
        ("assignment release_id", lambda a, w: a.assign(w["device"]["id"], "r\x00")),
        ("patch notes", lambda a, w: a.patch(f"/api/v1/firmware/{w['release']['id']}", json={"notes": "x\x00"})),
        (
            "upload notes",
            lambda a, w: a.post(
                "/api/v1/firmware",
                data={"version": "v7.0.0", "model": "bota-pin", "notes": "x\x00"},
                files={"bin": ("a.bin", b"ab", "a/b")},
            ),
        ),
        ("device path", lambda a, w: a.get("/api/v1/devices/BP%00")),
        ("device search", lambda a, w: a.get("/api/v1/devices", params={"q": "\x00"})),
        ("audit filter", lambda a, w: a.get("/api/v1/audit", params={"actor": "\x00"})),
    ]


@pytest.mark.parametrize(("what", "send"), _nul_cases(), ids=[c[0] for c in _nul_cases()])
def test_nul_bytes_are_not_a_server_error(
    admin: ApiClient, fuzz_world: dict[str, Any], what: str, send: Callable[[ApiClient, dict[str, Any]], httpx.Response]
) -> None:
    r = send(admin, fuzz_world)
    _assert_no_server_error(r, what)


def test_nul_in_ota_error_is_not_a_server_error(admin: ApiClient, fuzz_world: dict[str, Any]) -> None:
    token = fuzz_world["device"]["token"]
    aid = fuzz_world["assignment"]["id"]
    assert heartbeat(admin.client, token).json()["ota"] is not None
    r = heartbeat(admin.client, token, ota={"assignment_id": aid, "state": "failed", "error": "crc\x00"})
    _assert_no_server_error(r, "ota.error")


@pytest.mark.parametrize(
    "error",
    [
        sqlalchemy.exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked")),
        sqlalchemy.exc.TimeoutError("QueuePool limit of size 20 overflow 20 reached"),
    ],
)
def test_an_overloaded_database_is_a_503_with_retry_after(
    admin: ApiClient, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    from bota_ota.ota import fleet

    def busy(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(fleet, "list_devices", busy)
    r = admin.get("/api/v1/devices")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["title"] == "Service unavailable"
