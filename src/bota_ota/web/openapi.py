"""The OpenAPI document as the server answers: FastAPI's generated document, post-processed.

FastAPI documents a 422 in its own JSON shape and nothing else that can go wrong. Every error leaves this
server as RFC 9457 problem JSON (``web/problems.py``), so each operation's error responses are documented
as ``application/problem+json`` with the ``Problem`` schema, by rules read off what the handlers raise:

- 422 always (body, query and path validation, NUL characters anywhere);
- 400 where the body is JSON (FastAPI's answer to a body it cannot decode, e.g. not UTF-8);
- 401 where the operation has a security requirement (no, an unknown or an expired token);
- 403 where a dependency checks the caller's role (``accounts/deps.py`` ``require_role``);
- 404 where the path names something (a path parameter);
- 409 on writes (a state or a uniqueness the change conflicts with);
- 503 wherever the database is used (busy, out of connections or unreachable);
- whatever else a route declares in its decorator's ``responses=`` (413, 415, 429, 507, 400, 416 …).

Two more corrections make a generated request mean what the server accepts: the server refuses NUL in every
text (a pattern without U+0000 on every free string schema of requests), and an optional query parameter
is either absent or a value (its non-null type: ``?x=null`` is the text "null", not an absent value).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from bota_ota.web.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE

JSON = dict[str, Any]

PROBLEM_REF = "#/components/schemas/Problem"
NO_NUL_PATTERN = r"^[^\u0000]*$"
"""Any text without U+0000 (ECMA 262 and Python ``re`` read the escape alike)."""

WRITE_METHODS = frozenset({"post", "put", "patch", "delete"})
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Served without the database (web/middleware.py DatabaseAdmissionMiddleware): no 503 from them.
NO_DATABASE_PREFIXES = ("/dl/",)

PROBLEM_SCHEMA: JSON = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details, sent as application/problem+json for every error. Members "
    "other than these may be present (e.g. retry_after on 429).",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "description": f"The problem type, a URI under {PROBLEM_BASE}"},
        "title": {"type": "string", "description": "Short summary of the problem type"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599, "description": "The HTTP status"},
        "detail": {"type": "string", "description": "What went wrong with this request, in words"},
        "instance": {"type": "string", "description": "The request's path"},
        "errors": {
            "type": "array",
            "description": "Every offending field: a dotted path in JSON bodies, the form field of uploads, "
            "query.x / path.x / header.x for parameters",
            "items": {"$ref": "#/components/schemas/ProblemFieldError"},
        },
    },
    "additionalProperties": True,
}
PROBLEM_FIELD_ERROR_SCHEMA: JSON = {
    "title": "ProblemFieldError",
    "type": "object",
    "required": ["field"],
    "properties": {
        "field": {"type": "string", "description": "The offending field"},
        "message": {"type": "string", "description": "What is wrong with it"},
    },
    "additionalProperties": True,
}

# What each generic status means on an operation, unless its decorator says more precisely.
DESCRIPTIONS = {
    400: "The body could not be read (not UTF-8 JSON)",
    401: "No token, or an unknown, revoked or expired one",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflicts with the current state",
    422: "Validation failed: every offending field is named in errors",
    503: "The database is busy, out of connections or unreachable; see Retry-After",
}


def install_openapi(app: FastAPI) -> None:
    """Serve the post-processed document at /openapi.json (and to /docs)."""
    generate = app.openapi  # FastAPI's own, bound: builds the document once and caches it

    documented: list[JSON] = []

    def openapi() -> JSON:
        # FastAPI returns the cached document (ours) until the routes change, then a fresh one to process.
        generated = generate()
        if not documented or generated is not documented[-1]:
            documented[:] = [document_problems(generated, app.routes)]
            app.openapi_schema = documented[-1]
        return documented[-1]

    app.openapi = openapi  # type: ignore[method-assign]


def document_problems(document: JSON, routes: Sequence[Any] = ()) -> JSON:
    """A copy of ``document`` with error responses, NUL patterns and non-null optional query parameters
    (see the module's docstring). ``routes`` are the app's routes, read for the role checks (403)."""
    doc = copy.deepcopy(document)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = copy.deepcopy(PROBLEM_SCHEMA)
    schemas["ProblemFieldError"] = copy.deepcopy(PROBLEM_FIELD_ERROR_SCHEMA)
    role_checked = {(path, method) for path, method, route in _api_routes(routes) if _checks_role(route)}

    request_refs: set[str] = set()
    for path, method, operation in operations(doc):
        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "query" and not parameter.get("required"):
                parameter["schema"] = _without_null(parameter.get("schema", {}))
            _forbid_nul(parameter.get("schema", {}), request_refs)
        for media in operation.get("requestBody", {}).get("content", {}).values():
            _forbid_nul(media.get("schema", {}), request_refs)
        _document_errors(path, method, operation, role_checked=(path, method) in role_checked)

    # Components that requests use, and the components they use in turn.
    done: set[str] = set()
    while request_refs - done:
        name = (request_refs - done).pop()
        done.add(name)
        if name in schemas:
            _forbid_nul(schemas[name], request_refs)
    for unused in ("HTTPValidationError", "ValidationError"):
        if not _refers_to(doc, f"#/components/schemas/{unused}"):
            schemas.pop(unused, None)
    return doc


def operations(doc: JSON) -> Iterator[tuple[str, str, JSON]]:
    """(path, method, operation) of every operation in the document."""
    for path, item in doc.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def problem_response(description: str) -> JSON:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}}


def _document_errors(path: str, method: str, operation: JSON, *, role_checked: bool) -> None:
    responses: JSON = operation.setdefault("responses", {})
    statuses = {422}
    if "application/json" in operation.get("requestBody", {}).get("content", {}):
        statuses.add(400)
    if operation.get("security"):
        statuses.add(401)
    if role_checked:
        statuses.add(403)
    if "{" in path:
        statuses.add(404)
    if method in WRITE_METHODS:
        statuses.add(409)
    if not path.startswith(NO_DATABASE_PREFIXES):
        statuses.add(503)
    statuses.update(int(code) for code in responses if code.isdigit() and int(code) >= 400)
    for status in sorted(statuses):
        declared = responses.get(str(status), {})
        description = declared.get("description")
        if not description or description == "Validation Error":  # FastAPI's own 422
            description = DESCRIPTIONS.get(status) or HTTPStatus(status).phrase
        entry = problem_response(description)
        if "headers" in declared:
            entry["headers"] = declared["headers"]
        responses[str(status)] = entry
    operation["responses"] = dict(sorted(responses.items()))


def _without_null(schema: JSON) -> JSON:
    """``anyOf [T, null]`` → T, keeping the outer schema's words (title, description, default unless null)."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return schema
    others = [b for b in branches if b != {"type": "null"}]
    if len(others) == len(branches):
        return schema
    outer = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    if len(others) == 1:
        return {**others[0], **outer}
    return {**outer, "anyOf": others}


def _forbid_nul(schema: Any, refs: set[str]) -> None:
    """Add the no-NUL pattern to every free string schema inside ``schema``; collect the components it uses."""
    if isinstance(schema, list):
        for item in schema:
            _forbid_nul(item, refs)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        refs.add(ref.rsplit("/", 1)[1])
    if _is_free_string(schema):
        schema["pattern"] = NO_NUL_PATTERN
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        for sub in schema.get(key, {}).values():
            _forbid_nul(sub, refs)
    for key in ("items", "additionalProperties", "not", "contains", "propertyNames"):
        _forbid_nul(schema.get(key), refs)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        _forbid_nul(schema.get(key), refs)


def _is_free_string(schema: JSON) -> bool:
    kind = schema.get("type")
    is_string = kind == "string" or (isinstance(kind, list) and "string" in kind)
    return is_string and not any(k in schema for k in ("pattern", "format", "enum", "const"))


def _refers_to(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_refers_to(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_refers_to(v, ref) for v in node)
    return False


def _api_routes(routes: Sequence[Any]) -> Iterator[tuple[str, str, RouteContext]]:
    # Routes of included routers come with the dependencies and prefix of their inclusion, as FastAPI
    # documents them.
    for route in iter_route_contexts(routes):
        path = route.path_format
        if isinstance(route.original_route, APIRoute) and route.include_in_schema and path is not None:
            for method in route.methods or ():
                yield path, method.lower(), route


# The role check is a dependency made by ``accounts.deps.require_role`` (a layer above this one, so it is
# recognised by its name rather than imported).
_ROLE_CHECK_QUALNAME = "require_role.<locals>."


def _checks_role(route: RouteContext) -> bool:
    return any(_ROLE_CHECK_QUALNAME in getattr(call, "__qualname__", "") for call in _calls(route.dependant))


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)
