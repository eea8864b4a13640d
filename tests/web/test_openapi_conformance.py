"""The OpenAPI document says what the server does: schemathesis fuzzes a real ``bota-ota serve`` process with
every check on (status codes, content types, response schemas, headers, valid data accepted, invalid data
rejected, no server errors, authentication enforced) and no failure is allowed. The exceptions are listed
below, each with its reason: operations that would destroy the test's own credentials (DESTRUCTIVE), and
rules the document cannot state yet, each left out of the one check it fails (KNOWN_GAPS, ALWAYS_EXCLUDED).

Three callers, each with its own credential: the management API as the first admin, the device API as a
registered device, the app API as an app user who owns that device. Generation is derandomized (a fixed seed,
no example database), so a failure is reproduced by running the test again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.support.database import PG_URL
from tests.support.server import ServerProcess, server_env

pytestmark = [
    pytest.mark.e2e,
    # One pytest test holds every operation (as subtests): about a minute on a quiet 2-core machine, a bound
    # for one that runs the rest of the suite beside it.
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        bool(PG_URL),
        reason="the OpenAPI document does not depend on the database: checked once, on the SQLite run",
    ),
]

# Per operation, phase and generation mode (valid, invalid data): the bound that keeps the run within about
# two minutes on a loaded 2-core machine.
MAX_EXAMPLES = 5
SEED = 20261203

# Operations left out because they destroy the test's own credentials, with the reason.
DESTRUCTIVE = {
    # Given the id of the admin's own token (listed by GET /api/v1/tokens, and schemathesis reuses ids it
    # has seen), it revokes the credential every management call of this test uses.
    ("POST", "/api/v1/tokens/{token_id}/revoke"),
    # A new device token makes the device's old one stop working at once: no more heartbeats.
    ("POST", "/api/v1/devices/{device_id}/token"),
    # A decommissioned device's token stops working, and it leaves its owner's app.
    ("POST", "/api/v1/devices/{device_id}/decommission"),
    # Setting another owner (or none) takes the device away from the app user: the app calls then only
    # ever see 404 for it.
    ("PUT", "/api/v1/devices/{device_id}/owner"),
}


# Checks left out for every operation, each for a reason outside the document: none.
ALWAYS_EXCLUDED: list[Any] = []
# Operations whose rules the document cannot state yet: each left out of the one check it fails, with where
# the rule lives. Valid-by-the-document data refused (positive_data_acceptance):
_BODY_RULES = {
    # Multipart upload: a .bin/.ufw file name, at least one file, signatures that verify.
    ("POST", "/api/v1/firmware"),
    # public_key must be an Ed25519 key (firmware/schemas.py SigningKeyCreate has no pattern).
    ("POST", "/api/v1/signing-keys"),
    # The body is a CSV file whose lines are checked one by one.
    ("POST", "/api/v1/devices/import"),
    # Device id and tags are checked by validators without a pattern (devices/schemas.py DeviceCreate, Tags).
    ("POST", "/api/v1/devices"),
    ("PUT", "/api/v1/devices/{device_id}/tags"),
    # The device filter's firmware_below, ids and tags, and the exclusive firmware_version/firmware_below
    # (devices/schemas.py DeviceFilter), in every body that carries a filter.
    ("POST", "/api/v1/devices/tags"),
    ("POST", "/api/v1/groups"),
    ("PATCH", "/api/v1/groups/{group_id}"),
    # Stages must each be above 0 and at most 100, ascending (rollouts/schemas.py), plus the filter above.
    ("POST", "/api/v1/rollouts"),
    ("POST", "/api/v1/rollouts/preview"),
    # email must be an e-mail address (accounts/schemas.py UserCreate, mobile/schemas.py AppUserCreate).
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/app-users"),
    # Ranges are checked against the log's current size, which a document cannot know.
    ("GET", "/api/transparency/v1/entries"),
    ("GET", "/api/transparency/v1/proof/consistency"),
    # release_id or index, not both (a rule between parameters).
    ("GET", "/api/transparency/v1/proof/inclusion"),
}
# Invalid-by-the-document data accepted (negative_data_rejection): the heartbeat's integers take JSON
# booleans (pydantic's lax mode; heartbeat/schemas.py), in the heartbeat and in the app's relay of it.
_LAX_BODIES = {
    ("POST", "/api/device/v1/heartbeat"),
    ("POST", "/api/app/v1/devices/{device_id}/relay"),
}
KNOWN_GAPS: dict[tuple[str, str], tuple[Any, ...]] = {
    **{key: (positive_data_acceptance,) for key in _BODY_RULES},
    **{key: (negative_data_rejection,) for key in _LAX_BODIES},
}


@dataclass(frozen=True)
class Callers:
    admin_token: str
    device_token: str
    app_token: str


@dataclass(frozen=True)
class Target:
    url: str
    callers: Callers


def _callers(url: str, admin_token: str) -> Callers:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as api:
        created = api.post("/api/v1/devices", json={"id": "BP-CONFORM-1", "model": "bota-pin", "name": "fuzzed"})
        created.raise_for_status()
        device = created.json()
        user = {"email": "fuzz@example.com", "password": "conformance-pw-1"}
        api.post("/api/v1/app-users", json=user).raise_for_status()
        login = api.post("/api/app/v1/auth/login", json=user, headers={"Authorization": ""})
        login.raise_for_status()
        app_token = login.json()["token"]
        claim = api.post(
            "/api/app/v1/devices/claim",
            json={"id": device["id"], "claim_code": device["claim_code"]},
            headers={"Authorization": f"Bearer {app_token}"},
        )
        claim.raise_for_status()
    return Callers(admin_token=admin_token, device_token=device["token"], app_token=app_token)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base: Path = tmp_path_factory.mktemp("conformance")
    server = ServerProcess(data_dir=base / "data", env=server_env(None))
    server.start()
    try:
        token = server.admin_token_from_output()
        assert token, server.output()
        yield Target(url=server.url, callers=_callers(server.url, token))
    finally:
        server.stop()


def _config(callers: Callers) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},  # no .schemathesis/ folder in the working tree
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            # The examples and fuzzing phases. The coverage phase (every boundary of every parameter, about
            # 3,000 more requests) and the stateful one would take this test past its time budget; run them
            # by hand with `schemathesis run --phases coverage,stateful` against a server.
            "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
            # Each security scheme of the document with its caller's credential; schemathesis also sends
            # requests without it (and with a wrong one) and expects 401.
            "auth": {
                "openapi": {
                    "HTTPBearer": {"bearer": callers.admin_token},
                    "DeviceToken": {"bearer": callers.device_token},
                    "AppToken": {"bearer": callers.app_token},
                }
            },
        }
    )


@pytest.fixture(scope="module")
def api_schema(target: Target) -> Any:
    schema = schemathesis.openapi.from_url(target.url + "/openapi.json", config=_config(target.callers))
    for method, path in sorted(DESTRUCTIVE):
        schema = schema.exclude(method=method, path=path)
    schema.hooks.register_hook_with_name(filter_query, "filter_query")
    return schema


def filter_query(context: Any, query: dict[str, Any] | None) -> bool:
    """Leave out combinations the server refuses by a rule between parameters, which an OpenAPI document
    cannot state: a device filter takes firmware_version or firmware_below, not both; an inclusion proof is
    asked for by release_id or by index, not both."""
    if not query:
        return True
    return (
        not (
            {"firmware_version", "firmware_below"} <= query.keys()
            and query["firmware_version"]
            and query["firmware_below"]
        )
        and not {"release_id", "index"} <= query.keys()
    )


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32.5's from_fixture reads and rewrites ``node._nodeid``, which pytest 9.2 no longer has
    # (it keeps the id in ``_id``): give it the attribute it reads.
    request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_the_server_does_what_its_openapi_document_says(case: Any, target: Target) -> None:
    excluded = KNOWN_GAPS.get((case.method.upper(), case.operation.path), ())
    case.call_and_validate(base_url=target.url, excluded_checks=[*ALWAYS_EXCLUDED, *excluded])
