"""The post-processed OpenAPI document (web/openapi.py): errors as problem JSON, the rules the server applies
to text and optional parameters, unique operation ids. The document as /openapi.json serves it."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema_rs import Draft202012Validator

from bota_ota.web.openapi import NO_NUL_PATTERN, PROBLEM_REF, document_problems, operations
from bota_ota.web.problems import PROBLEM_MEDIA_TYPE
from tests.support.factories import ApiClient, assert_problem


@pytest.fixture
def doc(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _op(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    operation: dict[str, Any] = doc["paths"][path][method]
    return operation


def test_every_error_response_is_problem_json(doc: dict[str, Any]) -> None:
    checked = 0
    for path, method, operation in operations(doc):
        errors = {code: r for code, r in operation["responses"].items() if int(code) >= 400}
        assert "422" in errors, (method, path)
        for code, response in errors.items():
            assert response["content"] == {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}, (method, path, code)
            assert response["description"]
            checked += 1
    assert checked > 200
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "application/json" not in str(
        [r for _, _, o in operations(doc) for c, r in o["responses"].items() if int(c) >= 400]
    )


def test_the_problem_schema_describes_what_the_server_sends(doc: dict[str, Any], admin: ApiClient) -> None:
    schemas = doc["components"]["schemas"]
    problem = schemas["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail", "instance"]
    assert problem["additionalProperties"] is True
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/ProblemFieldError"}
    # Real problems (a 422 naming a field, a 404, a 401) validate against it.
    errors = {"type": "array", "items": schemas["ProblemFieldError"]}
    validator = Draft202012Validator({**problem, "properties": {**problem["properties"], "errors": errors}})
    responses = [
        admin.post("/api/v1/devices", json={"id": "", "model": "bota-pin"}),
        admin.get("/api/v1/devices/nope"),
        admin.client.get("/api/v1/devices"),
    ]
    for response in responses:
        validator.validate(assert_problem(response, response.status_code))
    assert [r.status_code for r in responses] == [422, 404, 401]


@pytest.mark.parametrize(
    ("method", "path", "present", "absent"),
    [
        # Role-checked management call with a path parameter and a JSON body.
        ("patch", "/api/v1/firmware/{release_id}", {"400", "401", "403", "404", "409", "422", "503"}, set()),
        # Any token may ask who it is: no role check, no 403.
        ("get", "/api/v1/me", {"401", "422", "503"}, {"403", "404", "409"}),
        # The app's log-in: no token needed, but a wrong password is 401 and too many are 429.
        ("post", "/api/app/v1/auth/login", {"401", "429"}, {"403"}),
        ("post", "/api/app/v1/devices/claim", {"401", "404", "429"}, {"403"}),
        # Uploads: too large, not multipart, disk full.
        ("post", "/api/v1/firmware", {"401", "403", "413", "415", "507"}, set()),
        ("post", "/api/device/v1/heartbeat", {"401", "413"}, {"403"}),
        # Downloads never touch the database; the URL's signature is the credential.
        ("get", "/dl/{key}", {"400", "403", "404", "416"}, {"401", "503"}),
        ("get", "/healthz", {"503"}, {"401", "403", "404"}),
    ],
)
def test_each_operation_documents_the_errors_it_can_send(
    doc: dict[str, Any], method: str, path: str, present: set[str], absent: set[str]
) -> None:
    codes = set(_op(doc, method, path)["responses"])
    assert present <= codes, (method, path, codes)
    assert not absent & codes, (method, path, codes)


def test_download_operations_have_ids_of_their_own(doc: dict[str, Any]) -> None:
    ids = Counter(op["operationId"] for _, _, op in operations(doc))
    assert not [i for i, n in ids.items() if n > 1]
    assert _op(doc, "get", "/dl/{key}")["operationId"] != _op(doc, "head", "/dl/{key}")["operationId"]
    assert "application/octet-stream" in _op(doc, "get", "/dl/{key}")["responses"]["200"]["content"]


def test_text_fields_refuse_nul(doc: dict[str, Any], admin: ApiClient) -> None:
    schemas = doc["components"]["schemas"]
    assert schemas["DeviceCreate"]["properties"]["id"]["pattern"] == NO_NUL_PATTERN
    name_branches = schemas["DeviceCreate"]["properties"]["name"]["anyOf"]
    assert {"type": "string", "maxLength": 200, "pattern": NO_NUL_PATTERN} in name_branches
    # An enum needs no pattern, nor does a date-time.
    assert "pattern" not in schemas["DeviceCreate"]["properties"]["model"]
    audit = {p["name"]: p["schema"] for p in _op(doc, "get", "/api/v1/audit")["parameters"]}
    assert audit["actor"]["pattern"] == NO_NUL_PATTERN
    assert "pattern" not in audit["since"]
    # The pattern says what the server does: NUL is refused, the same text without it is not.
    assert re.fullmatch(NO_NUL_PATTERN.replace("\\u0000", "\\x00"), "BP-1")
    assert not re.fullmatch(NO_NUL_PATTERN.replace("\\u0000", "\\x00"), "BP\x00-1")
    assert_problem(admin.post("/api/v1/devices", json={"id": "BP\x00-1", "model": "bota-pin"}), 422, "id")


def test_optional_query_parameters_are_their_type_not_null(doc: dict[str, Any]) -> None:
    for path, method, operation in operations(doc):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "query" and not parameter.get("required"):
                assert "null" not in str(parameter["schema"].get("anyOf", "")), (method, path, parameter)
                assert parameter["schema"].get("default", "") is not None
    audit = {p["name"]: p["schema"] for p in _op(doc, "get", "/api/v1/audit")["parameters"]}
    assert audit["actor"]["type"] == "string"
    assert audit["since"] == {**audit["since"], "type": "string", "format": "date-time"}


def test_hand_written_query_rules_are_in_the_schema(doc: dict[str, Any], admin: ApiClient) -> None:
    params = {p["name"]: p["schema"] for p in _op(doc, "get", "/api/v1/devices")["parameters"]}
    assert params["seen_within_s"]["minimum"] == 1
    assert params["network"]["enum"] == ["wifi", "cellular"]
    below = params["firmware_below"]["pattern"]
    assert re.match(below, "v1.2.3-rc.1") and not re.match(below, "1.2")
    assert re.match(params["tag"]["items"]["pattern"], " Beta ") and not re.match(params["tag"]["items"]["pattern"], "")
    assert re.match(params["sort"]["pattern"], "-last_seen") and not re.match(params["sort"]["pattern"], "colour")
    firmware = {p["name"]: p["schema"] for p in _op(doc, "get", "/api/v1/firmware")["parameters"]}
    assert firmware["model"]["enum"] == ["bota-pin", "bota-pin-pro", "bota-note"]
    # And the server refuses what the schema refuses, naming the parameter.
    assert_problem(admin.get("/api/v1/devices", params={"firmware_below": "1.2"}), 422, "query.firmware_below")
    assert_problem(admin.get("/api/v1/audit", params={"since": "0.5"}), 422, "query.since")


def test_the_post_processor_is_pure_and_idempotent() -> None:
    raw: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/things/{id}": {
                "get": {
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "q", "in": "query", "schema": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
            }
        },
    }
    once = document_problems(raw)
    assert raw["paths"]["/things/{id}"]["get"]["responses"] == {"200": {"description": "ok"}}
    op = once["paths"]["/things/{id}"]["get"]
    assert set(op["responses"]) == {"200", "404", "422", "503"}
    assert op["parameters"][1]["schema"] == {"type": "string", "pattern": NO_NUL_PATTERN}
    assert document_problems(once) == once
